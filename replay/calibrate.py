"""Calibration from recorded runs.

- ``replay calibrate --perf`` fits the simulated engine's step-time model to the step records of runs (a real
  engine's, so the simulator learns its speed), with in-sample and held-out error, and writes the parameters
  ``replay run --perf`` reads.
- ``replay calibrate --power`` fits the simulated engine's power model to measured runs (their steps and
  power.csv), with in-sample and held-out error on window and run energy, and writes the parameters
  ``replay run --power`` reads.
- ``replay calibrate --form`` fits the [SS26] energy-per-token forms (Eq. 5, Eq. 4, baselines B1-B4) to the
  runs' per-request energy, grouped by (input, output) length, with in-sample and K-fold held-out MAPE, and
  writes the theta YAML ``replay sweetspot --theta`` and the estimators read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from replay import specs
from replay.engines.sim.perf import SHAPE_COLUMNS, PerfModel, fit_perf, save_perf
from replay.engines.sim.power_fit import MeasuredRun, PowerFit, fit_power, save_power
from replay.estimate.forms import FORM_TERMS, FORM_TITLES, FORMS, Theta, fit, kfold, save_theta
from replay.files import read_jsonl, read_yaml
from replay.report.rundir import energy_kind, load_run, not_measured_reason, read_summary

__all__ = [
    "EnergyPoints", "FormCalibration", "FormFit", "calibrate_forms", "calibrate_perf", "calibrate_power",
    "energy_points", "format_form_calibration", "format_power_fit", "parse_forms", "read_steps",
]


def _run_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    data = read_yaml(path) or {}
    return data if isinstance(data, dict) else {}


def read_steps(run_dir: str | Path) -> pd.DataFrame:
    """A run directory's ``steps.jsonl`` as a frame (errors name the file and the missing column)."""
    path = Path(run_dir) / "steps.jsonl"
    if not path.exists():
        raise ValueError(f"{run_dir}: no steps.jsonl (is it a run directory?)")
    try:
        steps = pd.read_json(path, lines=True)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON Lines: {exc}") from None
    for column in ("duration_s", *SHAPE_COLUMNS):
        if column not in steps.columns:
            raise ValueError(f"{path}: missing field {column!r} in the step records")
    return steps


def _one_setting(dirs: list[Path], model: str | None, gpu: str | None, tp: int | None) -> tuple[str, str, int]:
    """The (model, gpu, tp) every run directory shares (the options override config.yaml); runs that differ are
    an error: one setting is fitted at a time."""
    seen = set()
    for d in dirs:
        cfg = _run_config(d)
        setting = (model or cfg.get("model"), gpu or cfg.get("gpu"), tp or cfg.get("tp") or 1)
        if setting[0] is None or setting[1] is None:
            raise ValueError(f"{d}: no config.yaml naming the model and gpu; pass --model and --gpu")
        seen.add(setting)
    if len(seen) > 1:
        raise ValueError("the runs differ in model, GPU or tp ("
                         + "; ".join(f"{m} on {tp_} x {g}" for m, g, tp_ in sorted(seen, key=str))
                         + "): fit one setting at a time")
    model_name, gpu_name, tp_ = seen.pop()
    return str(model_name), str(gpu_name), int(tp_)


def calibrate_perf(run_dirs: list[str | Path], model: str | None = None, gpu: str | None = None,
                   tp: int | None = None, out: str | Path | None = None) -> str:
    """Fit the step-time model to the steps of ``run_dirs`` (one model, GPU and tp), write the parameters to
    ``out`` (default ``perf.yaml`` in the first run directory) and return a short report."""
    dirs = [Path(d) for d in run_dirs]
    frames = [read_steps(d) for d in dirs]
    model_name, gpu_name, tp_ = _one_setting(dirs, model, gpu, tp)
    steps = pd.concat(frames, ignore_index=True)
    fit = fit_perf(steps, specs.model(model_name), specs.hardware(gpu_name), tp=tp_)
    target = Path(out) if out is not None else dirs[0] / "perf.yaml"
    save_perf(target, fit, {"model": model_name, "gpu": gpu_name, "tp": tp_,
                            "runs": [str(d) for d in dirs], "steps": int(len(steps))})
    p = fit.params
    held = (f"{fit.holdout_mape:.1f}% on {fit.holdout_n} held-out steps" if fit.holdout_mape is not None
            else "not computed (fewer than 20 steps)")
    return "\n".join([
        f"fitted the step-time model of {model_name} on {tp_} x {gpu_name} to {fit.n_steps:,} steps "
        f"from {len(dirs)} run(s)",
        f"  compute efficiency {p.compute_efficiency:.4g}, memory efficiency {p.memory_efficiency:.4g}, "
        f"overhead {p.overhead_s * 1e3:.4g} ms/step, {p.per_seq_s * 1e6:.4g} us/sequence, "
        f"{p.prefill_overhead_s * 1e3:.4g} ms more for a step with a prompt chunk",
        f"  step-time error: in-sample MAPE {fit.mape:.1f}% (median {fit.median_ape:.1f}%), held-out MAPE {held}",
        f"wrote {target}",
    ])


def measured_run(run_dir: str | Path) -> MeasuredRun:
    """A run directory as the power fit reads it: its steps, its power.csv and the idle power it measured. A run
    without measured energy is an error that says why; so is a meter that covered other GPUs than the replica's."""
    d = Path(run_dir)
    run = load_run(d)
    if run.energy_kind != "measured" or run.timeline is None:
        why = ("its energy is modelled (the simulated engine): the power model cannot be fitted to itself"
               if run.energy_kind == "modelled" else f"energy not measured ({run.energy_reason})"
               if run.energy_kind is None else "no power.csv")
        raise ValueError(f"{d}: {why}; --power needs runs measured by a meter (--meter nvml or rapl on a real "
                         f"engine)")
    tp = int(run.engine.get("tp") or run.config.get("tp") or 1)
    replicas = int(run.config.get("replicas") or 1)
    devices = run.timeline.devices
    if len(devices) != tp * replicas:
        raise ValueError(f"{d / 'power.csv'}: the meter read {len(devices)} device(s) ({', '.join(devices)}) but the "
                         f"run's engine has {tp * replicas} GPU(s): the power fit needs the meter on those GPUs only "
                         f"(--target-gpus)")
    if replicas > 1:
        raise ValueError(f"{d}: {replicas} replicas share one meter; fit runs of one replica")
    idle = run.doc.get("idle") if isinstance(run.doc.get("idle"), dict) else {}
    idle_w = idle.get("idle_total_w")
    return MeasuredRun(str(d), run.steps, run.timeline, float(idle_w) if idle_w is not None else None)


def calibrate_power(run_dirs: list[str | Path], model: str | None = None, gpu: str | None = None,
                    tp: int | None = None, out: str | Path | None = None, window_s: float = 1.0) -> tuple[PowerFit, Path]:
    """Fit the simulated engine's power model to measured runs (one model, GPU and tp; see
    ``replay.engines.sim.power_fit``), write it to ``out`` (default ``power.yaml`` in the first run directory) and
    return the fit and the path. FLOPs and bytes per step are the step-time model's counting; the durations are
    the measured ones."""
    dirs = [Path(d) for d in run_dirs]
    model_name, gpu_name, tp_ = _one_setting(dirs, model, gpu, tp)
    runs = [measured_run(d) for d in dirs]
    spec, hw = specs.model(model_name), specs.hardware(gpu_name)
    fit = fit_power(runs, PerfModel(spec, hw, tp=tp_), window_s=window_s)
    target = Path(out) if out is not None else dirs[0] / "power.yaml"
    save_power(target, fit, {"model": model_name, "gpu": gpu_name, "tp": tp_, "runs": [str(d) for d in dirs],
                             "energy": sorted({r.timeline.label for r in runs if r.timeline.label})})
    return fit, target


def format_power_fit(fit: PowerFit, path: Path | None = None, runs: int | None = None) -> str:
    """What ``replay calibrate --power`` prints: the parameters, then per run the in-sample and held-out error
    of window energy and of the whole run's energy."""
    p = fit.params
    lines = [f"fitted the power model to {fit.windows:,} meter windows of {fit.window_s:g} s over {fit.steps:,} "
             f"steps from {len(fit.in_sample)} measured run(s)",
             f"  idle {p.idle_w:.1f} W per GPU ({fit.idle_source}), {p.busy_w:.1f} W more while a step runs, "
             f"capped at {p.max_w:g} W ({fit.capped_steps:,} steps at the cap)",
             f"  compute weight {p.compute_weight:.4g}, memory weight {p.memory_weight:.4g} (shares of max - idle "
             f"per unit of peak FLOP/s and of peak bandwidth)",
             f"{'run':<40} {'windows':>7} {'in-sample: window MAPE':>23} {'run energy':>10} "
             f"{'held-out: window MAPE':>22} {'run energy':>10}"]
    held = {e.run: e for e in fit.held_out}
    for e in fit.in_sample:
        h = held.get(e.run)
        name = e.run if len(e.run) <= 40 else "..." + e.run[-37:]
        lines.append(f"{name:<40} {e.windows:>7} {e.window_mape:>22.1f}% {e.energy_error_pct:>+9.1f}% "
                     + (f"{h.window_mape:>21.1f}% {h.energy_error_pct:>+9.1f}%" if h else f"{'n/a':>22} {'n/a':>10}"))
    lines.append(f"  held out: {fit.held_out_how}; run energy: predicted / measured - 1")
    lines += [f"  note: {n}" for n in fit.notes]
    if path is not None:
        lines.append(f"wrote {path}")
    return "\n".join(lines)


# --- [SS26] energy forms -------------------------------------------------------------------------------------

_REQUEST_FIELDS = ("status", "input_tokens", "output_tokens", "energy_j")
# the order of [SS26]'s comparison (baselines first, then the FLOPs-based model and SweetSpot)
_TABLE_ORDER = ("b1", "b2", "b3", "b4", "eq4", "eq5")
_SHORT = {"b1": "B1", "b2": "B2", "b3": "B3", "b4": "B4", "eq4": "Eq. 4", "eq5": "Eq. 5 (SweetSpot)"}


@dataclass(frozen=True)
class EnergyPoints:
    """Measured (or modelled) energy per output token at each (input, output) length pair of some runs.

    ``frame`` has one row per pair: ``input_tokens``, ``output_tokens``, ``requests``, ``energy_j`` (sum over
    the pair's requests), ``generated_tokens`` (their sum) and ``e_tok_j`` = energy_j / generated_tokens, the
    [SS26] E_tok = E / n_out of a sweep point. ``measured`` is False for the simulated engine's modelled energy.
    """

    frame: pd.DataFrame
    runs: tuple[str, ...]
    measured: bool
    energy_source: str                  # the runs' energy label(s), from summary.json
    model: str | None                   # where all runs agree, else None (see notes)
    hardware: str | None
    requests_used: int
    excluded: dict[str, int]            # reason -> requests left out
    notes: tuple[str, ...] = ()


def _summary_energy(run_dir: Path) -> str:
    """The run's energy label from summary.json; a run without measured or modelled energy is an error that
    says why it was not measured."""
    doc = read_summary(run_dir)
    source = doc["summary"]["energy_source"]
    if energy_kind(source) is None:
        raise ValueError(f"{run_dir}: energy not measured ({not_measured_reason(doc)}): the energy forms need "
                         f"per-request energy; replay the trace with a meter (--meter auto, nvml or rapl) or on the "
                         f"simulated engine")
    return str(source)


def _run_setting(run_dir: Path) -> tuple[str | None, str | None]:
    """(model, hardware) of a run from its config.yaml: the model as named (the resolved engine's is the path a
    real engine loaded, on its machine), the hardware as resolved, each falling back to the other."""
    cfg = _run_config(run_dir)
    resolved = cfg.get("resolved_engine") if isinstance(cfg.get("resolved_engine"), dict) else {}
    model = cfg.get("model") or resolved.get("model")      # the name given, not the path the engine loaded
    gpu = resolved.get("gpu") or cfg.get("gpu")
    return (str(model) if model is not None else None, str(gpu) if gpu is not None else None)


def _read_requests(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "requests.jsonl"
    if not path.exists():
        raise ValueError(f"{run_dir}: no requests.jsonl (is it a run directory?)")
    rows = read_jsonl(path, required=_REQUEST_FIELDS)
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*_REQUEST_FIELDS, "generated_tokens", "id"])
    frame.attrs["path"] = str(path)
    return frame


def _finished_with_energy(frame: pd.DataFrame, path: str, excluded: dict[str, int]) -> pd.DataFrame:
    """Finished requests with an energy value, their numbers checked (a bad one is an error naming the file, the
    request and the field); the rest are counted by reason in ``excluded``."""
    status = frame["status"]
    for st in sorted(set(status) - {"finished"}):
        excluded[str(st)] = excluded.get(str(st), 0) + int((status == st).sum())
    done = frame[status == "finished"]
    no_energy = done["energy_j"].isna()
    if no_energy.any():
        excluded["finished without energy"] = excluded.get("finished without energy", 0) + int(no_energy.sum())
    done = done[~no_energy]
    ids = done["id"] if "id" in done else pd.Series(done.index, index=done.index)

    def numbers(name: str, values: pd.Series, least: int, whole: bool, want: str) -> pd.Series:
        """The column as numbers; a missing, non-numeric or out-of-range value is an error naming the request."""
        v = pd.to_numeric(values, errors="coerce").astype(float)
        ok = np.isfinite(v) & (v >= least) & ((v == np.round(v)) if whole else True)
        if not ok.all():
            got = values[~ok].iloc[0]
            got = got.item() if isinstance(got, np.generic) else got
            got = "null" if got is None or (isinstance(got, float) and math.isnan(got)) else repr(got)
            raise ValueError(f"{path}: request {ids[~ok].iloc[0]!r}: field {name!r}: expected {want}, got {got}")
        return v

    tokens = "a whole number of tokens >= 1"
    generated = (done["generated_tokens"].fillna(done["output_tokens"]) if "generated_tokens" in done
                 else done["output_tokens"])
    return pd.DataFrame({
        "input_tokens": numbers("input_tokens", done["input_tokens"], 1, True, tokens).astype(int),
        "output_tokens": numbers("output_tokens", done["output_tokens"], 1, True, tokens).astype(int),
        "energy_j": numbers("energy_j", done["energy_j"], 0, False, "a finite number of joules >= 0"),
        "generated_tokens": numbers("generated_tokens", generated, 0, True, "a whole number of tokens >= 0"),
    })


def _expand_sweeps(run_dirs: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories, a ``replay sweep`` directory (sweep.yaml, no requests.jsonl) standing for its finished
    points; points not finished (pending, interrupted or failed) are counted in a note."""
    from replay.sweep.grid import DONE, SPEC_FILE, load_sweep, point_state
    dirs, notes = [], []
    for d in map(Path, run_dirs):
        if (d / SPEC_FILE).exists() and not (d / "requests.jsonl").exists():
            points = [Path(p.config.out) for p in load_sweep(d).points()]
            done = [p for p in points if point_state(p) == DONE]
            if not done:
                raise ValueError(f"{d}: a sweep directory without a finished point (no */summary.json)")
            if len(done) < len(points):
                notes.append(f"{d}: {len(points) - len(done)} of {len(points)} sweep points not finished, left out")
            dirs.extend(done)
        else:
            dirs.append(d)
    return dirs, notes


def energy_points(run_dirs: list[str | Path]) -> EnergyPoints:
    """Group the finished requests of ``run_dirs`` by (input_tokens, output_tokens) and take each pair's
    E_tok = sum(energy_j) / sum(generated tokens): for a sweep point of fixed lengths the [SS26] per-point E_tok,
    for a trace run the same per length pair. Rejected and unfinished requests and requests without energy are
    left out and counted. All runs must be measured, or all modelled (the simulated engine). A ``replay sweep``
    directory stands for its finished points."""
    if not run_dirs:
        raise ValueError("no run directories given")
    dirs, notes = _expand_sweeps(run_dirs)
    frames, sources, settings, excluded = [], {}, {}, {}
    for d in dirs:
        sources[str(d)] = _summary_energy(d)
        settings[str(d)] = _run_setting(d)
        raw = _read_requests(d)
        frames.append(_finished_with_energy(raw, raw.attrs["path"], excluded))
    kinds = {str(d): energy_kind(sources[str(d)]) == "modelled" for d in dirs}
    if len(set(kinds.values())) > 1:
        modelled = [d for d, m in kinds.items() if m]
        measured = [d for d, m in kinds.items() if not m]
        raise ValueError(f"the runs mix modelled energy ({', '.join(modelled)}) and measured energy "
                         f"({', '.join(measured)}): fit one kind at a time")
    requests = pd.concat(frames, ignore_index=True)
    if requests.empty:
        raise ValueError(f"no finished request with energy (measured or modelled) in {', '.join(map(str, dirs))} "
                         f"(left out: {_excluded_text(excluded) or 'none'})")
    grouped = (requests.groupby(["input_tokens", "output_tokens"], sort=True)
               .agg(requests=("energy_j", "size"), energy_j=("energy_j", "sum"),
                    generated_tokens=("generated_tokens", "sum"))
               .reset_index())
    zero = grouped["generated_tokens"] <= 0
    if zero.any():
        row = grouped[zero].iloc[0]
        raise ValueError(f"length pair ({row.input_tokens}, {row.output_tokens}): finished requests generated no "
                         f"tokens, so energy per output token is undefined")
    grouped["e_tok_j"] = grouped["energy_j"] / grouped["generated_tokens"]
    models = {m for m, _ in settings.values()}
    gpus = {g for _, g in settings.values()}
    for what, values in (("model", models), ("hardware", gpus)):
        if len(values) > 1:
            notes.append(f"the runs differ in {what} ({', '.join(sorted(map(str, values)))}): one fit mixes them")
    return EnergyPoints(
        frame=grouped, runs=tuple(map(str, dirs)), measured=not next(iter(kinds.values())),
        energy_source="; ".join(sorted(set(sources.values()))),
        model=models.pop() if len(models) == 1 else None, hardware=gpus.pop() if len(gpus) == 1 else None,
        requests_used=int(len(requests)), excluded=excluded, notes=tuple(notes),
    )


def _excluded_text(excluded: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {why}" for why, n in sorted(excluded.items()))


def parse_forms(text: str) -> tuple[str, ...]:
    """``eq5``, ``eq4,b4`` or ``all`` -> the forms, in the order given (all: [SS26]'s table order)."""
    if text.strip() == "all":
        return _TABLE_ORDER
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FORM_TERMS]
    if bad or not names:
        raise ValueError(f"--form: unknown form {bad[0] if bad else text!r}; the forms are: "
                         f"{', '.join(FORMS)}, or all")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class FormFit:
    """One form's outcome: the fitted theta (None when the points cannot determine it, with the reason), and
    where it was written."""

    form: str
    theta: Theta | None
    reason: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class FormCalibration:
    """The fits of ``replay calibrate --form`` on one set of runs."""

    points: EnergyPoints
    folds: int
    seed: int
    fits: tuple[FormFit, ...] = field(default_factory=tuple)


def _source(points: EnergyPoints) -> str:
    runs = ", ".join(points.runs) if len(points.runs) <= 3 else (
        f"{len(points.runs)} runs ({points.runs[0]}, ..., {points.runs[-1]})")
    if points.measured:
        return f"fitted by replay calibrate on {runs}: measured energy ({points.energy_source})"
    return f"fitted by replay calibrate on {runs}: {points.energy_source}, not measured"


def _fit_one(form: str, points: EnergyPoints, folds: int, seed: int, model: str | None,
             hardware: str | None) -> Theta:
    f = points.frame
    n_in, n_out, e_tok = f["input_tokens"].to_numpy(), f["output_tokens"].to_numpy(), f["e_tok_j"].to_numpy()
    theta = fit(form, n_in, n_out, e_tok, model=model, hardware=hardware, source=_source(points))
    stats = dict(theta.fit or {})
    try:
        stats.update(kfold(form, n_in, n_out, e_tok, folds, seed).to_dict())
    except ValueError as exc:
        stats.update({"folds": folds, "seed": seed, "heldout_mape_pct": None, "heldout_not_computed": str(exc)})
    stats.update({"energy": "measured" if points.measured else "modelled", "energy_source": points.energy_source,
                  "runs": list(points.runs), "requests": points.requests_used,
                  "excluded_requests": dict(points.excluded)})
    return Theta(theta.form, theta.theta, theta.model, theta.hardware, theta.source, stats)


def calibrate_forms(run_dirs: list[str | Path], forms: tuple[str, ...] = ("eq5",), folds: int = 5, seed: int = 0,
                    out: str | Path | None = None, model: str | None = None,
                    hardware: str | None = None) -> FormCalibration:
    """Fit each of ``forms`` to the runs' energy per output token (``energy_points``), with in-sample and
    ``folds``-fold held-out MAPE, and write each theta as YAML: with one form to ``out`` (default
    ``theta-<form>.yaml`` in the first run directory), with several into the directory ``out`` (default the
    first run directory) as ``theta-<form>.yaml``. ``model``/``hardware`` override the keys read from the runs.

    With one form, a form the points cannot determine is an error; with several it is reported as not fitted
    (and nothing is written for it), unless no form could be fitted.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"--folds must be an integer >= 2, got {folds!r}")
    for form in forms:
        if form not in FORM_TERMS:
            raise ValueError(f"unknown form {form!r}; the forms are: {', '.join(FORMS)}")
    points = energy_points(run_dirs)
    model = model or points.model
    hardware = hardware or points.hardware
    first = Path(run_dirs[0])
    fits = []
    for form in forms:
        try:
            theta = _fit_one(form, points, folds, seed, model, hardware)
        except ValueError as exc:
            if len(forms) == 1:
                raise
            fits.append(FormFit(form, None, str(exc)))
            continue
        if len(forms) == 1:
            target = Path(out) if out is not None else first / f"theta-{form}.yaml"
        else:
            target = (Path(out) if out is not None else first) / f"theta-{form}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
        save_theta(theta, target)
        fits.append(FormFit(form, theta, None, str(target)))
    if all(f.theta is None for f in fits):
        raise ValueError("no form could be fitted: " + "; ".join(f"{f.form}: {f.reason}" for f in fits))
    return FormCalibration(points, folds, seed, tuple(fits))


def _pct(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.2f}%" if x >= 0.01 or x == 0 else f"{x:.1e}%"


def format_form_calibration(result: FormCalibration) -> str:
    """The report ``replay calibrate --form`` prints: the data, each form's coefficients (one form) or the
    [SS26]-style MAPE comparison (several), and the files written."""
    p = result.points
    energy = f"measured ({p.energy_source})" if p.measured else f"{p.energy_source}, not measured"
    lines = [f"{len(p.frame):,} (input, output) length points from {p.requests_used:,} finished requests in "
             f"{len(p.runs)} run(s); energy {energy}",
             f"  model {p.model or 'unknown'} on {p.hardware or 'unknown hardware'}"]
    if p.excluded:
        lines.append(f"  left out: {_excluded_text(p.excluded)}")
    lines += [f"  note: {n}" for n in p.notes]
    k = result.folds
    if len(result.fits) == 1:
        theta = result.fits[0].theta
        stats = theta.fit
        lines.append(f"{FORM_TITLES[theta.form]}: E_tok (J/output token) = sum of th_j * term_j")
        for j, (value, term) in enumerate(zip(theta.theta, FORM_TERMS[theta.form])):
            lines.append(f"  th{j} = {value: .6e}   x {term}")
        held = (_pct(stats["heldout_mape_pct"]) if stats.get("heldout_mape_pct") is not None
                else f"not computed: {stats.get('heldout_not_computed')}")
        lines.append(f"  in-sample MAPE {_pct(stats['in_sample_mape_pct'])} ([SS26] reports only this); "
                     f"{k}-fold held-out MAPE {held}")
        if stats.get("per_fold_mape_pct"):
            lines.append("  per fold: " + ", ".join(_pct(x) for x in stats["per_fold_mape_pct"]))
    else:
        head = f"{'form':<18} {'coefficients':>12} {'in-sample MAPE':>15} {f'{k}-fold held-out MAPE':>22}"
        lines += [head, "-" * len(head)]
        for f in sorted(result.fits, key=lambda f: _TABLE_ORDER.index(f.form)):
            ncoef = len(FORM_TERMS[f.form])
            if f.theta is None:
                lines.append(f"{_SHORT[f.form]:<18} {ncoef:>12} {'not fitted':>15}   {f.reason}")
                continue
            s = f.theta.fit
            held = _pct(s.get("heldout_mape_pct")) if s.get("heldout_mape_pct") is not None else "not computed"
            lines.append(f"{_SHORT[f.form]:<18} {ncoef:>12} {_pct(s['in_sample_mape_pct']):>15} {held:>22}")
        reasons = {f.theta.fit.get("heldout_not_computed") for f in result.fits
                   if f.theta is not None and f.theta.fit.get("heldout_not_computed")}
        lines += [f"  held-out not computed: {r}" for r in sorted(reasons)]
    lines += [f"wrote {f.path}" for f in result.fits if f.path]
    return "\n".join(lines)
