"""Joules per request for a workload, given the model and the hardware: the estimators set beside the measurement.

Why: the report shows measured energy beside the estimates people use (DESIGN.md); each estimator here turns a
requests frame into joules per request with a label that says what it assumes. Estimators never read a meter.

``estimate(name, requests, ctx) -> Estimate``; ``ESTIMATORS`` maps each name to its function:

- ``flops``: [Na25] theoretical estimate ``TDP / FLOPS_hw * FLOPs``, per request its FLOPs from
  ``replay.estimate.counting``. FLOPS_hw is the hardware's dense peak for the dtype by default
  (``ctx.peak="sparse"``: the 2:4-sparse figure, twice it). [Na25] used 309.7 TFLOP/s, the A6000's SPARSE
  fp16 figure. Tensor parallelism does not change it: FLOPs are the model's, TDP and peak per GPU, and tp GPUs
  give tp TDP / (tp peak), the same ratio.
- ``roofline``: the ideal roofline. With the run's steps (``ctx.steps``, steps.jsonl), each step's time is
  ``max(FLOPs / peak, bytes / bandwidth)`` from its counts at the batch the run had, its energy that time
  times TDP, shared over the step's requests by tokens processed (``replay.energy.attribution`` with the run's
  request records). Without steps, each request alone at batch 1: ``max(FLOPs / peak, bytes / bandwidth)`` per
  phase (prefill, decode), times TDP. Power is TDP rather than idle + (TDP - idle) x utilisation because at
  the ideal roofline the binding resource runs at 100% of its peak by construction, where the utilisation
  model gives TDP too. With tp GPUs each does 1/tp of the work in 1/tp of the time at TDP: the same energy
  (communication and KV-head replication not counted).
- ``sweetspot`` ([SS26] Eq. 5), ``sweetspot-flops`` (Eq. 4), ``b1`` .. ``b4`` (the baselines): ``E_request =
  E_tok(n_in, n_out) * n_out`` with ``ctx.theta`` of the matching form, or for ``sweetspot`` without theta the
  [SS26] Table 5 preset of the model (H100 + TensorRT-LLM; the label says when the run's hardware differs).
- ``binned``: [Na25] section 4.1, ``sum over bins N / B * E_batch`` from measured full-batch energies
  (``ctx.batch_energies``; ``replay.estimate.binned``).

Requests: a frame with ``input_tokens`` and ``output_tokens`` (a trace), or a run's requests.jsonl: then
``generated_tokens`` is the output length of a finished request and rejected or unfinished requests are not
estimated (NaN, counted in ``assumptions["left_out"]`` and ``reason``). ``total_j`` sums the requests that were
estimated; it is None (with ``reason``) only when none could be. Never a silent 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from replay.energy.attribution import Split, split_step_energy
from replay.engines.base import STATUSES
from replay.estimate.binned import binned_energy
from replay.estimate.counting import coefficients, request_counts, step_counts
from replay.estimate.forms import FORM_TITLES, Theta, preset
from replay.files import plain
from replay.specs import Hardware, ModelSpec
from replay.trace.bins import DEFAULT_INPUT_BINS, DEFAULT_OUTPUT_BINS

__all__ = ["ESTIMATORS", "FORM_ESTIMATOR", "NA25_PEAK_FLOPS", "PEAKS", "Estimate", "EstimateContext",
           "estimate"]

PEAKS = ("dense", "sparse")
NA25_PEAK_FLOPS = 309.7e12      # [Na25]'s FLOPS_hw: the A6000's sparse fp16 tensor peak
# [SS26] form -> the estimator that uses it, and back
FORM_ESTIMATOR = {"eq5": "sweetspot", "eq4": "sweetspot-flops", "b1": "b1", "b2": "b2", "b3": "b3", "b4": "b4"}
_FORM_OF = {name: form for form, name in FORM_ESTIMATOR.items()}


@dataclass(frozen=True, eq=False)
class EstimateContext:
    """What an estimator may use besides the requests (see the module docstring for who uses what).

    ``steps``: the run's steps.jsonl frame (roofline at the batch the run had); ``theta``: coefficients of an
    [SS26] form; ``batch_energies``: measured full-batch energies per [Na25] bin; ``peak``: "dense" or "sparse"
    hardware peak for ``flops`` and ``roofline``; ``input_bins`` / ``output_bins``: the binned estimator's edges.
    """

    model: ModelSpec
    hardware: Hardware
    dtype: str | None = None
    tp: int = 1
    steps: pd.DataFrame | None = None
    theta: Theta | None = None
    batch_energies: pd.DataFrame | None = None
    peak: str = "dense"
    input_bins: tuple[int, ...] = DEFAULT_INPUT_BINS
    output_bins: tuple[int, ...] = DEFAULT_OUTPUT_BINS

    def __post_init__(self) -> None:
        if self.peak not in PEAKS:
            raise ValueError(f"estimate context: peak {self.peak!r}: expected one of {', '.join(PEAKS)}")
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise ValueError(f"estimate context: tp: expected a positive integer, got {self.tp!r}")
        if self.theta is not None and not isinstance(self.theta, Theta):
            raise ValueError(f"estimate context: theta: expected a replay.estimate.forms.Theta, got "
                             f"{type(self.theta).__name__}")

    @property
    def dtype_name(self) -> str:
        return self.dtype or self.model.dtype


@dataclass(frozen=True, eq=False)
class Estimate:
    """One estimator's joules per request (aligned with the requests frame's rows; NaN where not estimable),
    their total over the estimated requests (None, with ``reason``, when none could be), ``reason`` also naming
    what was left out when some were, and ``assumptions`` (plain values: what numbers it rests on)."""

    estimator: str
    label: str
    per_request_j: np.ndarray
    total_j: float | None
    reason: str | None
    assumptions: dict = field(default_factory=dict)

    @property
    def n_requests(self) -> int:
        return int(len(self.per_request_j))

    @property
    def n_estimated(self) -> int:
        return int(np.count_nonzero(np.isfinite(self.per_request_j)))

    def to_dict(self) -> dict[str, Any]:
        """Plain values, ready for JSON (NaN per-request values as None)."""
        return {"estimator": self.estimator, "label": self.label, "total_j": self.total_j, "reason": self.reason,
                "n_requests": self.n_requests, "n_estimated": self.n_estimated,
                "assumptions": plain(self.assumptions),
                "per_request_j": [float(v) if np.isfinite(v) else None for v in self.per_request_j]}


# --- the requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Rows:
    """Lengths of the estimable requests (NaN elsewhere) and how many were left out, by reason."""

    n_in: np.ndarray
    n_out: np.ndarray
    ok: np.ndarray
    left_out: dict[str, int]


def _rid(requests: pd.DataFrame, i: int) -> Any:
    return requests["id"].iloc[i] if "id" in requests.columns else requests.index[i]


def _rows(requests: pd.DataFrame) -> _Rows:
    """Input and output lengths: output is ``generated_tokens`` where the frame has it (a run's records), else
    ``output_tokens``; rejected and unfinished requests are left out. Errors name the request and the field."""
    if not isinstance(requests, pd.DataFrame):
        raise ValueError(f"requests: expected a DataFrame (a trace's or a run's requests.jsonl), got "
                         f"{type(requests).__name__}")
    if "input_tokens" not in requests.columns:
        raise ValueError("requests: missing column 'input_tokens'")
    if "generated_tokens" not in requests.columns and "output_tokens" not in requests.columns:
        raise ValueError("requests: missing column 'output_tokens' (or a run's 'generated_tokens')")
    n = len(requests)
    ok = np.ones(n, dtype=bool)
    left: dict[str, int] = {}
    if "status" in requests.columns:
        status = requests["status"].to_numpy()
        unknown = ~np.isin(status, STATUSES)
        if unknown.any():
            i = int(np.argmax(unknown))
            raise ValueError(f"requests: request {_rid(requests, i)!r}: field 'status': expected one of "
                             f"{', '.join(STATUSES)}, got {status[i]!r}")
        ok = status == "finished"
        left = {s: int(np.count_nonzero(status == s)) for s in STATUSES[1:]}

    def column(name: str) -> np.ndarray:
        if name not in requests.columns:
            return np.full(n, np.nan)
        return pd.to_numeric(requests[name], errors="coerce").to_numpy(np.float64)

    n_in, gen, out = column("input_tokens"), column("generated_tokens"), column("output_tokens")
    has_gen = np.isfinite(gen)
    n_out = np.where(has_gen, gen, out)
    for name, v, where in (("input_tokens", n_in, ok), ("generated_tokens", n_out, ok & has_gen),
                           ("output_tokens", n_out, ok & ~has_gen)):
        bad = where & ~(np.isfinite(v) & (v >= 1) & (v == np.round(v)))
        if bad.any():
            i = int(np.argmax(bad))
            got = requests[name].iloc[i] if name in requests.columns else "nothing"
            raise ValueError(f"requests: request {_rid(requests, i)!r}: field {name!r}: expected a whole number of "
                             f"tokens >= 1, got {got!r}")
    return _Rows(np.where(ok, n_in, np.nan), np.where(ok, n_out, np.nan), ok, left)


_WHY = {"rejected": "rejected", "unfinished": "unfinished", "above_input": "input above the largest bin",
        "above_output": "output above the largest bin", "above_both": "input and output above the largest bins",
        "bin_not_measured": "in a bin without a measured batch"}


def _result(name: str, label: str, per: np.ndarray, left: dict[str, int], assumptions: dict) -> Estimate:
    """An Estimate whose total sums the estimated requests; ``reason`` names what was left out, if anything."""
    left = {k: int(v) for k, v in left.items() if v}
    ok = np.isfinite(per)
    n, n_ok = len(per), int(np.count_nonzero(ok))
    total = float(per[ok].sum()) if n_ok else None
    reason = None
    parts = ", ".join(f"{v} {_WHY.get(k, k)}" for k, v in left.items())
    if n == 0:
        reason = "no requests to estimate"
    elif not n_ok:
        reason = f"none of the {n} requests could be estimated: {parts}"
    elif left:
        reason = f"{n - n_ok} of {n} requests not estimated: {parts}; total_j is over the other {n_ok}"
    return Estimate(name, label, per, total, reason, {**assumptions, "left_out": left})


def _cannot(name: str, label: str, n: int, reason: str, assumptions: dict) -> Estimate:
    """An estimator that cannot estimate this workload at all: every request NaN, total None, and why."""
    return Estimate(name, label, np.full(n, np.nan), None, reason, assumptions)


def _peak(ctx: EstimateContext) -> tuple[float | None, str | None]:
    """(FLOP/s, None) or (None, why not): the hardware peak ctx asks for."""
    try:
        return ctx.hardware.peak_flops(ctx.dtype_name, sparse=ctx.peak == "sparse"), None
    except ValueError as exc:
        return None, str(exc)


def _hw_assumptions(ctx: EstimateContext, peak: float | None) -> dict:
    hw = ctx.hardware
    return {"hardware": hw.key, "tdp_w": hw.tdp_w, "flops_hw": peak, "peak": ctx.peak, "dtype": ctx.dtype_name,
            "tp": ctx.tp, "model": ctx.model.key}


# --- flops ---------------------------------------------------------------------------------------------------


def flops(requests: pd.DataFrame, ctx: EstimateContext) -> Estimate:
    """[Na25] theoretical estimate: TDP / FLOPS_hw x FLOPs of each request (see the module docstring)."""
    rows = _rows(requests)
    peak, why = _peak(ctx)
    hw = ctx.hardware
    base = {**_hw_assumptions(ctx, peak), "na25_flops_hw": NA25_PEAK_FLOPS,
            "source": "[Na25] section 4.1 theoretical estimate, FLOPs from replay.estimate.counting"}
    if peak is None:
        return _cannot("flops", f"[Na25] TDP / FLOPS_hw x FLOPs: no {ctx.peak} peak", len(rows.ok), why, base)
    label = (f"[Na25] theoretical: TDP / FLOPS_hw x FLOPs with {hw.tdp_w:g} W / {peak / 1e12:g} TFLOP/s, the "
             f"{ctx.peak} {ctx.dtype_name} peak of the {hw.name}; FLOPs counted per request (GQA projections, "
             f"MLP, LM head, causal attention). [Na25] used 309.7 TFLOP/s, the A6000's sparse fp16 figure")
    per = np.full(len(rows.ok), np.nan)
    if rows.ok.any():
        c = coefficients(ctx.model, ctx.dtype)
        per[rows.ok] = hw.tdp_w / peak * request_counts(c, rows.n_in[rows.ok], rows.n_out[rows.ok]).flops
    return _result("flops", label, per, rows.left_out, base)


# --- roofline ------------------------------------------------------------------------------------------------


def _split_by_tokens(step_j: np.ndarray, steps: pd.DataFrame, requests: pd.DataFrame) -> tuple[np.ndarray, Split]:
    """Each request's share of the step energies by tokens processed (``replay.energy.attribution``'s
    ``split_step_energy`` over the run's request records)."""
    for col in ("replica", "step"):
        if col not in steps.columns:
            raise ValueError(f"steps: missing column {col!r}; the roofline split needs the run's steps.jsonl")
    missing = [c for c in ("token_steps", "prefill_steps", "replica") if c not in requests.columns]
    if missing:
        raise ValueError(f"requests: missing column {missing[0]!r}; the roofline with steps splits step energy "
                         "over a run's request records (requests.jsonl)")
    split = split_step_energy(step_j, steps, requests, "tokens")
    return split.requests["energy_j"].to_numpy(np.float64), split


def roofline(requests: pd.DataFrame, ctx: EstimateContext) -> Estimate:
    """Ideal roofline time x TDP: per step of the run (ctx.steps), else per request alone at batch 1."""
    rows = _rows(requests)
    peak, why = _peak(ctx)
    hw = ctx.hardware
    bw = hw.memory_bandwidth_bps
    base = {**_hw_assumptions(ctx, peak), "bandwidth_bps": bw,
            "power": "TDP: at the ideal roofline the binding resource runs at its peak, where idle + (TDP - idle) "
                     "x utilisation gives TDP too",
            "bytes": "weights, KV-cache reads and writes, activations (replay.estimate.counting)"}
    if peak is None:
        return _cannot("roofline", f"ideal roofline: no {ctx.peak} peak", len(rows.ok), why, base)
    c = coefficients(ctx.model, ctx.dtype)
    per = np.full(len(rows.ok), np.nan)
    rates = f"{peak / 1e12:g} TFLOP/s ({ctx.peak} {ctx.dtype_name}), {bw / 1e9:g} GB/s, {hw.tdp_w:g} W ({hw.name})"
    if ctx.steps is None:
        label = ("ideal roofline at batch 1 (no run's steps given: each request alone): per phase max(FLOPs / "
                 f"peak, bytes / bandwidth) x TDP at {rates}")
        if rows.ok.any():
            k = request_counts(c, rows.n_in[rows.ok], rows.n_out[rows.ok], batch=1)
            t = (np.maximum(k.prefill_flops / peak, k.prefill_bytes / bw)
                 + np.maximum(k.decode_flops / peak, k.decode_bytes / bw))
            per[rows.ok] = hw.tdp_w * t
        return _result("roofline", label, per, rows.left_out, {**base, "batch": 1, "source": "workload only"})
    sc = step_counts(c, ctx.steps)
    step_s = np.maximum(sc.flops / peak, sc.bytes / bw)
    step_j = hw.tdp_w * step_s
    shares, att = _split_by_tokens(step_j, ctx.steps, requests)
    per[rows.ok] = shares[rows.ok]
    label = ("ideal roofline at the run's batches: each step max(FLOPs / peak, bytes / bandwidth) x TDP, shared "
             f"over its requests by tokens processed, at {rates}")
    not_finished = float(shares[~rows.ok].sum())
    return _result("roofline", label, per, rows.left_out,
                   {**base, "batch": "the run's steps", "steps": int(len(step_j)), "steps_j": float(step_j.sum()),
                    "steps_s": float(step_s.sum()), "unfinished_share_j": not_finished,
                    "unattributed_j": float(att.unattributed_j), "source": "the run's steps.jsonl"})


# --- [SS26] forms --------------------------------------------------------------------------------------------


def _form_estimator(name: str) -> Callable[[pd.DataFrame, EstimateContext], Estimate]:
    form = _FORM_OF[name]

    def run(requests: pd.DataFrame, ctx: EstimateContext) -> Estimate:
        rows = _rows(requests)
        title = FORM_TITLES[form]
        theta = ctx.theta
        if theta is None and form == "eq5":
            try:
                theta = preset(ctx.model.key)
            except ValueError:
                return _cannot(name, f"{title}: E_tok(n_in, n_out) x n_out", len(rows.ok),
                               f"no [SS26] Table 5 preset for model {ctx.model.key!r}; fit coefficients with "
                               "`replay calibrate --form eq5` and pass them", {"form": form, "model": ctx.model.key})
        if theta is None:
            return _cannot(name, f"{title}: E_tok(n_in, n_out) x n_out", len(rows.ok),
                           f"no {form} coefficients given; fit them with `replay calibrate --form {form}` and pass "
                           "them", {"form": form, "model": ctx.model.key})
        if theta.form != form:
            return _cannot(name, f"{title}: E_tok(n_in, n_out) x n_out", len(rows.ok),
                           f"the coefficients given are for form {theta.form!r} ({theta.source}); {name} needs "
                           f"{form}", {"form": form, "given_form": theta.form})
        notes = []
        if theta.hardware != ctx.hardware.key:
            notes.append(f"coefficients for {theta.hardware or 'unstated hardware'}, this run is on "
                         f"{ctx.hardware.key}")
        if theta.model != ctx.model.key:
            notes.append(f"coefficients for model {theta.model or 'unstated'}, this run is {ctx.model.key}")
        label = (f"{title}: E_tok(n_in, n_out) x n_out with {theta.source} coefficients"
                 + (f" ({'; '.join(notes)})" if notes else ""))
        per = np.full(len(rows.ok), np.nan)
        if rows.ok.any():
            per[rows.ok] = theta.e_request_j(rows.n_in[rows.ok], rows.n_out[rows.ok])
        negative = int(np.count_nonzero(per[rows.ok] < 0))
        return _result(name, label, per, rows.left_out,
                       {"form": form, "theta": list(theta.theta), "theta_model": theta.model,
                        "theta_hardware": theta.hardware, "source": theta.source, "hardware": ctx.hardware.key,
                        "model": ctx.model.key, "same_hardware": theta.hardware == ctx.hardware.key,
                        "negative_predictions": negative})

    run.__name__ = name.replace("-", "_")
    run.__doc__ = f"[SS26] {form}: E_request = E_tok(n_in, n_out) x n_out with ctx.theta (or the Table 5 preset)."
    return run


# --- binned --------------------------------------------------------------------------------------------------


def binned(requests: pd.DataFrame, ctx: EstimateContext) -> Estimate:
    """[Na25] section 4.1: E_batch / B of each request's bin, from ctx.batch_energies (replay.estimate.binned)."""
    rows = _rows(requests)
    label = "[Na25] binned: sum over bins N / B x E_batch, measured full batches"
    base = {"input_bins": list(ctx.input_bins), "output_bins": list(ctx.output_bins),
            "source": "[Na25] section 4.1"}
    if ctx.batch_energies is None:
        return _cannot("binned", label, len(rows.ok),
                       "no measured batch energies (ctx.batch_energies: input_bin, output_bin, batch_size, energy_j "
                       "per full batch; a static-batch `replay sweep` gives them)", base)
    be = ctx.batch_energies
    modelled = "modelled" in be.columns and bool(be["modelled"].fillna(False).astype(bool).any())
    if modelled:
        label += " (some batch energies are modelled by the simulated engine, not measured)"
    sources = sorted(map(str, be["source"].dropna().unique())) if "source" in be.columns else None
    per = np.full(len(rows.ok), np.nan)
    b = binned_energy(rows.n_in[rows.ok].astype(np.int64), rows.n_out[rows.ok].astype(np.int64),
                      ctx.batch_energies, ctx.input_bins, ctx.output_bins)
    per[rows.ok] = b.per_request_j
    left = {**rows.left_out, "above_input": b.above_input, "above_output": b.above_output,
            "above_both": b.above_both, "bin_not_measured": b.unmeasured}
    return _result("binned", label, per, left,
                   {**base, "bins": b.bins, "unmeasured_bins": b.unmeasured_bins, "modelled": modelled,
                    "batch_energy_sources": sources})


# --- registry ------------------------------------------------------------------------------------------------

ESTIMATORS: dict[str, Callable[[pd.DataFrame, EstimateContext], Estimate]] = {
    "flops": flops, "roofline": roofline, **{name: _form_estimator(name) for name in _FORM_OF}, "binned": binned,
}


def estimate(name: str, requests: pd.DataFrame, ctx: EstimateContext) -> Estimate:
    """Joules per request of ``requests`` by the estimator ``name`` (a key of ESTIMATORS)."""
    try:
        fn = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; the estimators are: {', '.join(ESTIMATORS)}") from None
    return fn(requests, ctx)
