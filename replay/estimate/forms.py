"""The [SS26] analytical energy-per-token forms: Eq. 5 (SweetSpot), Eq. 4 (FLOPs-based) and baselines B1-B4.

Every form is linear in its coefficients: ``E_tok = features(form, n_in, n_out) @ theta`` (J per output token),
so one design matrix serves prediction and least-squares fitting. The published Eq. 5 coefficients of [SS26]
Table 5 (13 models, one H100, TensorRT-LLM) are shipped as ``PRESETS``; ``sweet_spot_n_out`` is [SS26] Eq. 6.

Forms (E_tok as a function of the input length n_in and output length n_out, tokens):

- ``eq5`` [SS26] Eq. 5: th0 + th1 n_in^2/n_out + th2 n_in + th3 n_in/n_out + th4 n_out + th5/n_out
- ``eq4`` [SS26] Eq. 4: th0 + th1 n_in^2/n_out + th2 n_in + th3 n_in/n_out + th4 n_out
- ``b1``: th0;  ``b2``: th0 + th1/n_out;  ``b3``: th0 + th1/(n_in + n_out);
  ``b4``: th0 + th1 n_in/n_out + th2 n_in  ([SS26] baselines B1-B4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from replay.files import plain, read_yaml, write_atomic

__all__ = [
    "FORMS", "FORM_TERMS", "FORM_TITLES", "PRESETS", "HeldOut", "Theta", "features", "fit", "kfold",
    "load_theta", "mape", "predict_e_tok", "preset", "save_theta", "sweet_spot_n_out",
]

FORMS = ("eq5", "eq4", "b1", "b2", "b3", "b4")

# form -> the term each coefficient multiplies (th0, th1, ...), as the paper writes them
FORM_TERMS: dict[str, tuple[str, ...]] = {
    "eq5": ("1", "n_in^2/n_out", "n_in", "n_in/n_out", "n_out", "1/n_out"),
    "eq4": ("1", "n_in^2/n_out", "n_in", "n_in/n_out", "n_out"),
    "b1": ("1",),
    "b2": ("1", "1/n_out"),
    "b3": ("1", "1/(n_in+n_out)"),
    "b4": ("1", "n_in/n_out", "n_in"),
}

FORM_TITLES = {
    "eq5": "[SS26] Eq. 5 (SweetSpot)", "eq4": "[SS26] Eq. 4 (FLOPs-based)", "b1": "[SS26] baseline B1",
    "b2": "[SS26] baseline B2", "b3": "[SS26] baseline B3", "b4": "[SS26] baseline B4",
}


def _check_form(form: str) -> str:
    if form not in FORM_TERMS:
        raise ValueError(f"unknown energy form {form!r}; the forms are: {', '.join(FORMS)}")
    return form


def _lengths(n_in, n_out) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast token lengths to float arrays; every length must be a finite number > 0."""
    a, b = np.broadcast_arrays(np.asarray(n_in, dtype=float), np.asarray(n_out, dtype=float))
    for name, arr in (("n_in", a), ("n_out", b)):
        bad = ~np.isfinite(arr) | (arr <= 0)
        if bad.any():
            raise ValueError(f"{name} must be finite and > 0 tokens; got {arr[bad].ravel()[0]!r}")
    return np.atleast_1d(a).ravel(), np.atleast_1d(b).ravel()


def features(form: str, n_in, n_out) -> np.ndarray:
    """The (n, k) design matrix of ``form`` at the length pairs (n_in, n_out), so ``E_tok = features @ theta``.

    ``n_in`` and ``n_out`` broadcast against each other and are flattened to n points.
    """
    _check_form(form)
    i, o = _lengths(n_in, n_out)
    one = np.ones_like(i)
    columns = {
        "1": one, "n_in^2/n_out": i * i / o, "n_in": i, "n_in/n_out": i / o, "n_out": o, "1/n_out": 1.0 / o,
        "1/(n_in+n_out)": 1.0 / (i + o),
    }
    return np.column_stack([columns[t] for t in FORM_TERMS[form]])


def _coefficients(form: str, theta) -> np.ndarray:
    k = len(FORM_TERMS[_check_form(form)])
    th = np.asarray(theta, dtype=float).ravel()
    if th.size != k:
        raise ValueError(f"form {form} has {k} coefficients (th0..th{k - 1}); got {th.size}")
    if not np.isfinite(th).all():
        raise ValueError(f"form {form}: coefficients must be finite numbers; got {th.tolist()}")
    return th


def predict_e_tok(form: str, theta, n_in, n_out) -> np.ndarray:
    """Energy per output token (J/token) of ``form`` with coefficients ``theta`` at (n_in, n_out)."""
    return features(form, n_in, n_out) @ _coefficients(form, theta)


@dataclass(frozen=True)
class Theta:
    """One fitted or published coefficient set of a form.

    ``model`` and ``hardware`` are replay's spec keys where known; ``source`` says where the numbers come from
    (a paper table, or the runs a fit used and whether their energy was measured or modelled); ``fit`` holds
    the fit's statistics (points, in-sample and held-out MAPE) when it was fitted here.
    """

    form: str
    theta: tuple[float, ...]
    model: str | None
    hardware: str | None
    source: str
    fit: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "theta", tuple(float(x) for x in _coefficients(self.form, self.theta)))

    def e_tok(self, n_in, n_out) -> np.ndarray:
        """Energy per output token, J/token."""
        return predict_e_tok(self.form, self.theta, n_in, n_out)

    def e_request_j(self, n_in, n_out) -> np.ndarray:
        """Energy of a whole request, J: E_tok * n_out ([SS26] E_tok = E / n_out)."""
        _, o = _lengths(n_in, n_out)
        return self.e_tok(n_in, n_out) * o


# --- fitting -------------------------------------------------------------------------------------------------

FIT_METHOD = "ordinary least squares on E_tok, one equal weight per (n_in, n_out) point, as [SS26] fits its grid"


def mape(pred, actual) -> float:
    """Mean absolute percentage error, in percent: 100 * mean(|pred - actual| / |actual|). Needs actual != 0."""
    p, a = np.asarray(pred, dtype=float).ravel(), np.asarray(actual, dtype=float).ravel()
    if p.shape != a.shape:
        raise ValueError(f"mape: {p.size} predictions for {a.size} actual values")
    if a.size == 0:
        raise ValueError("mape: no values")
    if (a == 0).any() or not np.isfinite(a).all():
        raise ValueError("mape: actual values must be finite and non-zero (a percentage of 0 is undefined)")
    return float(100.0 * np.mean(np.abs(p - a) / np.abs(a)))


def _points(form: str, n_in, n_out, e_tok) -> tuple[np.ndarray, np.ndarray]:
    """(design matrix, E_tok) of the data, checked: matching sizes, finite E_tok, enough points."""
    x = features(form, n_in, n_out)
    y = np.asarray(e_tok, dtype=float).ravel()
    if y.size != x.shape[0]:
        raise ValueError(f"{x.shape[0]} (n_in, n_out) points but {y.size} E_tok values")
    if not np.isfinite(y).all():
        raise ValueError("E_tok values must be finite (a point without measured energy must be left out, "
                         "not passed as NaN)")
    k = x.shape[1]
    if y.size < k:
        raise ValueError(f"form {form} has {k} coefficients but there are only {y.size} points: "
                         f"need at least {k} distinct (n_in, n_out) points")
    return x, y


def _least_squares(form: str, x: np.ndarray, y: np.ndarray, where: str = "") -> np.ndarray:
    """OLS coefficients of ``y ~ x``; the columns are scaled to unit norm first (the terms span ten orders of
    magnitude), which changes the conditioning, not the solution. Rank-deficient data is an error."""
    scale = np.linalg.norm(x, axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale
    coef, _, rank, _ = np.linalg.lstsq(xs, y, rcond=None)
    k = x.shape[1]
    if rank < k:
        raise ValueError(f"{where}the points do not determine the {k} coefficients of form {form} "
                         f"(terms {', '.join(FORM_TERMS[form])}; rank {rank}): vary both n_in and n_out")
    return coef / scale


@dataclass(frozen=True)
class HeldOut:
    """K-fold held-out error: each fold's points predicted by a fit to the other folds only."""

    form: str
    folds: int
    seed: int
    n_points: int
    mape_pct: float                      # mean over folds of the fold's MAPE
    per_fold_mape_pct: tuple[float, ...]
    fold_sizes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"folds": self.folds, "seed": self.seed, "heldout_mape_pct": self.mape_pct,
                "per_fold_mape_pct": list(self.per_fold_mape_pct), "fold_sizes": list(self.fold_sizes)}


def kfold(form: str, n_in, n_out, e_tok, k: int = 5, seed: int = 0) -> HeldOut:
    """Held-out MAPE by K-fold cross-validation over the points (on a sweep grid each point is one (n_in, n_out)
    pair, the unit the model predicts): the points are shuffled with ``seed``, split into ``k`` folds of
    near-equal size, and each fold is predicted by the least-squares fit to the other k - 1 folds, never
    seeing its own points. Neither paper reports this ([SS26] fits and scores in-sample)."""
    x, y = _points(form, n_in, n_out, e_tok)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"folds must be an integer >= 2, got {k!r}")
    n, ncoef = y.size, x.shape[1]
    if n < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} points; there are {n}")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    smallest_train = n - max(len(f) for f in folds)
    if smallest_train < ncoef:
        raise ValueError(f"{k}-fold cross-validation of form {form} ({ncoef} coefficients) on {n} points "
                         f"leaves {smallest_train} points to fit a fold: need at least {ncoef}; use fewer folds "
                         f"or more points")
    per_fold = []
    for j, test in enumerate(folds):
        train = np.setdiff1d(order, test, assume_unique=True)
        coef = _least_squares(form, x[train], y[train], where=f"fold {j + 1} of {k}: ")
        per_fold.append(mape(x[test] @ coef, y[test]))
    return HeldOut(form, int(k), int(seed), n, float(np.mean(per_fold)), tuple(per_fold),
                   tuple(len(f) for f in folds))


def fit(form: str, n_in, n_out, e_tok, *, model: str | None = None, hardware: str | None = None,
        source: str = "fitted by replay.estimate.forms.fit", folds: int | None = None, seed: int = 0) -> Theta:
    """Fit ``form`` to E_tok (J/output token) at the points (n_in, n_out) by ordinary least squares on E_tok,
    every point weighted equally, as [SS26] fits its grid (all forms are linear in theta). ``fit`` records the
    method, the number of points and the in-sample MAPE (what [SS26] reports); with ``folds`` also the K-fold
    held-out MAPE of ``kfold``."""
    x, y = _points(form, n_in, n_out, e_tok)
    coef = _least_squares(form, x, y)
    stats: dict[str, Any] = {"method": FIT_METHOD, "n_points": int(y.size), "in_sample_mape_pct": mape(x @ coef, y)}
    if folds is not None:
        stats.update(kfold(form, n_in, n_out, e_tok, folds, seed).to_dict())
    return Theta(form, tuple(coef), model, hardware, source, stats)


# --- [SS26] Table 5 ------------------------------------------------------------------------------------------

_TABLE5_SOURCE = "[SS26] Table 5 (H100, TensorRT-LLM)"
# model key -> (th0, th1, th2, th3, th4, th5) of Eq. 5, J/token, copied from [SS26] Table 5
_TABLE5 = {
    "llama-3.2-1b": (5.005153e-3, 1.079941e-7, 6.825240e-6, 2.611042e-3, 3.852659e-6, 0.5406443),
    "opt-1.3b": (5.969229e-3, 1.666292e-7, 4.388860e-5, 2.915735e-3, 2.342971e-5, 0.3187084),
    "qwen2-1.5b": (6.528509e-3, 9.147483e-8, 6.199954e-6, 3.700520e-3, 3.288754e-6, 0.3805096),
    "gemma2-2b": (9.468873e-3, 1.223718e-7, 2.486662e-5, 5.371303e-3, 1.372551e-5, 0.5856132),
    "opt-2.7b": (6.541956e-3, 2.855932e-7, 9.197051e-5, 5.909706e-3, 5.038964e-5, 0.8566784),
    "llama-3.2-3b": (9.259155e-3, 1.842970e-7, 2.709305e-5, 6.842019e-3, 1.461407e-5, 0.8942031),
    "granite-3b": (9.300161e-3, 4.210179e-7, 9.340093e-5, 7.914036e-3, 5.199433e-5, 1.170166),
    "opt-6.7b": (1.300082e-2, 4.308046e-7, 1.440099e-4, 1.379572e-2, 8.632801e-5, 1.016691),
    "qwen2-7b": (1.857219e-2, 2.598309e-7, 1.531846e-5, 1.465957e-2, 9.735924e-6, 0.8719728),
    "falcon-rw-7.5b": (1.871769e-2, 9.200243e-7, 1.652377e-4, 1.673305e-2, 1.052294e-4, 0.7410144),
    "granite-8b": (2.073270e-2, 3.926489e-7, 4.029094e-5, 1.744363e-2, 2.512785e-5, 0.8540071),
    "llama-3.1-8b": (1.970934e-2, 3.329326e-7, 3.583505e-5, 1.551942e-2, 2.249613e-5, 0.8939092),
    "gemma2-9b": (1.749322e-2, 5.981696e-7, 1.110917e-4, 1.901597e-2, 7.408055e-5, 2.558409),
}

# The paper's GPU is "H100"; replay's key for the SXM part (the variant is our reading, not stated in Table 5).
PRESETS: dict[str, Theta] = {
    name: Theta("eq5", th, name, "h100-sxm", _TABLE5_SOURCE) for name, th in _TABLE5.items()
}


def preset(model: str) -> Theta:
    """The [SS26] Table 5 Eq. 5 coefficients of ``model`` (replay's model key); unknown -> ValueError listing them."""
    try:
        return PRESETS[model]
    except KeyError:
        raise ValueError(f"no [SS26] Table 5 preset for model {model!r}; the presets are: "
                         f"{', '.join(PRESETS)}") from None


# --- [SS26] Eq. 6 --------------------------------------------------------------------------------------------


def sweet_spot_n_out(theta: Theta, n_in) -> np.ndarray:
    """[SS26] Eq. 6: the output length minimising E_tok at each input length,
    ``n_out* = sqrt((th1 n_in^2 + th3 n_in + th5) / th4)`` (Eq. 4: th5 = 0).

    Defined for ``eq5`` and ``eq4`` only (the baselines have no interior minimum in n_out). Raises ValueError
    where the formula has no finite positive minimiser: th4 <= 0 (E_tok does not rise with n_out) or a
    numerator <= 0 (E_tok rises for every n_out).
    """
    if theta.form not in ("eq5", "eq4"):
        raise ValueError(f"[SS26] Eq. 6 needs form eq5 or eq4; this theta is {theta.form}")
    th = theta.theta
    th5 = th[5] if theta.form == "eq5" else 0.0
    i, _ = _lengths(n_in, 1)
    if not th[4] > 0:
        raise ValueError(f"no sweet spot: th4 = {th[4]:.6g} <= 0, so E_tok never rises with n_out "
                         f"({theta.source})")
    num = th[1] * i * i + th[3] * i + th5
    if (num <= 0).any():
        raise ValueError(f"no sweet spot at n_in = {i[num <= 0][0]:g}: th1 n_in^2 + th3 n_in + th5 <= 0, so "
                         f"E_tok rises with every output token ({theta.source})")
    return np.sqrt(num / th[4])


# --- YAML ----------------------------------------------------------------------------------------------------


def _theta_dict(theta: Theta) -> dict[str, Any]:
    data: dict[str, Any] = {
        "form": theta.form,
        "theta": {f"th{j}": float(x) for j, x in enumerate(theta.theta)},
        "terms": list(FORM_TERMS[theta.form]),
        "model": theta.model,
        "hardware": theta.hardware,
        "source": theta.source,
    }
    if theta.fit is not None:
        data["fit"] = plain(theta.fit)
    return data


def save_theta(theta: Theta, path) -> None:
    """Write ``theta`` as YAML (coefficients by name th0.., the terms they multiply, provenance, fit statistics)."""
    text = f"# E_tok (J/output token) = sum of th_j * term_j; {FORM_TITLES[theta.form]}\n"
    text += yaml.safe_dump(_theta_dict(theta), sort_keys=False, default_flow_style=False)
    write_atomic(path, text)


def load_theta(path) -> Theta:
    """Read a theta YAML written by ``save_theta`` (or by hand); a bad file raises ValueError naming file and key."""
    p = Path(path)
    data = read_yaml(p)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping with keys form, theta, source")
    known = {"form", "theta", "terms", "model", "hardware", "source", "fit"}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise ValueError(f"{p}: unknown key {unknown[0]!r}; the keys are: {', '.join(sorted(known))}")
    for key in ("form", "theta", "source"):
        if key not in data:
            raise ValueError(f"{p}: missing key {key!r}")
    form = data["form"]
    if form not in FORM_TERMS:
        raise ValueError(f"{p}: key 'form': unknown form {form!r}; the forms are: {', '.join(FORMS)}")
    k = len(FORM_TERMS[form])
    raw = data["theta"]
    if isinstance(raw, dict):
        names = [f"th{j}" for j in range(k)]
        extra = sorted(set(map(str, raw)) - set(names))
        if extra:
            raise ValueError(f"{p}: key 'theta.{extra[0]}': form {form} has coefficients {', '.join(names)}")
        missing = [n for n in names if n not in raw]
        if missing:
            raise ValueError(f"{p}: missing key 'theta.{missing[0]}' (form {form} has {k} coefficients)")
        values = [(f"theta.{n}", raw[n]) for n in names]
    elif isinstance(raw, list):
        if len(raw) != k:
            raise ValueError(f"{p}: key 'theta': form {form} has {k} coefficients; got {len(raw)}")
        values = [(f"theta[{j}]", v) for j, v in enumerate(raw)]
    else:
        raise ValueError(f"{p}: key 'theta': expected a mapping th0.. -> number (or a list of {k} numbers)")
    th = []
    for key, v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{p}: key {key!r}: expected a finite number, got {v!r}")
        th.append(float(v))
    if "terms" in data and list(data["terms"] or []) != list(FORM_TERMS[form]):
        raise ValueError(f"{p}: key 'terms': {data['terms']!r} do not match form {form} "
                         f"({', '.join(FORM_TERMS[form])})")
    for key in ("model", "hardware", "source"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"{p}: key {key!r}: expected a string, got {data[key]!r}")
    if not data["source"]:
        raise ValueError(f"{p}: key 'source' is empty: say where the coefficients come from")
    fit = data.get("fit")
    if fit is not None and not isinstance(fit, dict):
        raise ValueError(f"{p}: key 'fit': expected a mapping, got {fit!r}")
    return Theta(form, tuple(th), data.get("model"), data.get("hardware"), data["source"], fit)
