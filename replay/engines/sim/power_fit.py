"""Fitting the simulated engine's power model to measured runs: what a real GPU drew, step by step.

Why: the power model's defaults rest on published figures, not on a measurement, and on a real H200 they put a
simulated run's energy 19% low (../shared/data/gpu-h200-2026-12/README.md). A measured run holds what is needed
to calibrate them: its steps (start, end and shape: what each step did) and its meter's cumulative joules.

The model (``replay.engines.sim.power``) is, per GPU, for a step of duration d that does F FLOPs and moves B bytes
(per GPU, ``PerfModel.work``):

    E_step = min(idle_w + busy_w + a F / d + b B / d,  max_w) * d,   a = (max_w - idle_w) compute_weight / P_peak
                                                                       b = (max_w - idle_w) memory_weight / W_peak

and idle_w between steps: static power, a cost per second of work (clocks up, whatever the kernel), a cost per
FLOP and a cost per byte, capped at the power limit. That is linear in (busy_w, a, b), so it is fitted by
non-negative least squares. The meter cannot see single steps (NVML's counter updates every few tens of ms, the
meter samples every 0.1 s), so the fit is on windows of ``window_s`` of the meter's own samples: a window's
measured joules against the modelled joules of the steps (and the parts of steps) inside it plus idle power over
the rest. Capped steps (the model above max_w) are held at max_w and the fit repeated until the capped set is
stable. max_w is the hardware's TDP, unless the meter saw more (99th percentile of window power) and the fit is
better with that as the cap (a CPU's placeholder TDP; an H200 drew 730 W over 1 s windows of prefill). idle_w is
the runs' measured idle power (``summary.json`` ``idle``), time-weighted; it is fitted too
where a run did not measure it. The objective is the mean squared RELATIVE error of window energy.

Errors are reported per run, in-sample and held out: with two runs or more each run is predicted by a fit on the
others (the simulator's case: a calibration used on a run it has not seen); with one run every fifth window is
held out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from replay.energy.timeline import EnergyTimeline
from replay.engines.sim.perf import SHAPE_COLUMNS, PerfModel, _nonneg_ls, load_params, save_params
from replay.engines.sim.power import PowerParams

__all__ = ["MeasuredRun", "PowerFit", "RunError", "fit_power", "load_power", "save_power"]

OBJECTIVE = "mean squared relative error of window energy"
MAX_CAP_ROUNDS = 20


@dataclass(frozen=True)
class MeasuredRun:
    """One measured run as the fit needs it: its steps (``start_s``, ``end_s``, the StepShape columns, and
    ``replica`` where there are several), its meter's timeline (every device the replica's GPUs), and the idle
    power it measured for the whole replica (None: not measured)."""

    name: str
    steps: pd.DataFrame
    timeline: EnergyTimeline
    idle_w: float | None = None


@dataclass(frozen=True)
class RunError:
    """How well a fit reproduces one run: window-energy MAPE and the whole run's energy error (predicted /
    measured - 1, in %), over the meter's span."""

    run: str
    windows: int
    window_mape: float
    energy_error_pct: float
    measured_j: float
    predicted_j: float

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "windows": self.windows, "window_mape_pct": self.window_mape,
                "energy_error_pct": self.energy_error_pct, "measured_j": self.measured_j,
                "predicted_j": self.predicted_j}


@dataclass(frozen=True)
class PowerFit:
    """Fitted per-GPU parameters, the in-sample error per run, and the held-out error per run (each run predicted
    by a fit on the others; with one run, its every fifth window). ``capped_steps``: steps the fit holds at
    max_w."""

    params: PowerParams
    in_sample: tuple[RunError, ...]
    held_out: tuple[RunError, ...]
    held_out_how: str
    windows: int
    steps: int
    capped_steps: int
    window_s: float
    idle_source: str
    objective: str = OBJECTIVE
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"windows": self.windows, "steps": self.steps, "capped_steps": self.capped_steps,
                "window_s": self.window_s, "idle": self.idle_source, "objective": self.objective,
                "in_sample": [e.to_dict() for e in self.in_sample], "held_out_how": self.held_out_how,
                "held_out": [e.to_dict() for e in self.held_out], "notes": list(self.notes)}


# --- one run's windows and per-step work -------------------------------------------------------------------


class _Run:
    """A run prepared for the fit: the meter's windows and, per active step, its overlap with each window edge
    (as cumulative sums read at the edges), its duration, FLOPs and bytes per GPU."""

    def __init__(self, run: MeasuredRun, perf: PerfModel, window_s: float) -> None:
        self.name, self.idle_w = run.name, run.idle_w
        t = run.timeline.times_s
        cum = np.sum([run.timeline.cumulative_j[d] for d in run.timeline.devices], axis=0)
        period = float(np.median(np.diff(t))) if len(t) > 1 else window_s
        k = max(1, round(window_s / period)) if period > 0 else 1
        idx = np.unique(np.r_[np.arange(0, len(t), k), len(t) - 1])
        edges, joules = t[idx], np.diff(cum[idx])
        keep = joules > 0                               # a counter that did not move says nothing
        self.start_s, self.end_s = edges[:-1][keep], edges[1:][keep]
        self.length_s, self.measured_j = self.end_s - self.start_s, joules[keep]
        steps = run.steps
        for c in ("start_s", "end_s", *SHAPE_COLUMNS):
            if c not in steps.columns:
                raise ValueError(f"{run.name}: steps: missing field {c!r}")
        flops, nbytes = _work(perf, steps)
        s, e = steps["start_s"].to_numpy(float), steps["end_s"].to_numpy(float)
        d = e - s
        replica = steps["replica"].to_numpy() if "replica" in steps.columns else np.zeros(len(steps), dtype=int)
        active = np.flatnonzero((flops > 0) & (d > 0))
        active = active[np.lexsort((s[active], replica[active]))]    # by replica, then by start: sorted once
        self.s, self.d = s[active], d[active]
        self.flops, self.nbytes = flops[active], nbytes[active]
        self.n_steps = len(active)
        cuts = np.flatnonzero(np.diff(replica[active])) + 1
        self._replicas = [slice(a, b) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(active)], strict=True)]

    def window_sums(self, q: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per window, the sum over steps of q (in step order) times the fraction of the step inside the window
        (each step's q spread evenly over its duration; steps of one replica do not overlap)."""
        total = np.zeros(len(self.start_s))
        for r in self._replicas:
            s, d, qq = self.s[r], self.d[r], q[r]
            total += _spread_until(s, d, qq, self.end_s) - _spread_until(s, d, qq, self.start_s)
        return total if rows is None else total[rows]


def _spread_until(s: np.ndarray, d: np.ndarray, q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """At each time in ``t``, the sum of ``q`` over the steps (starts ``s`` sorted, durations ``d``, not
    overlapping) up to that time, a step's ``q`` counted in proportion to the part of it before the time."""
    prefix = np.concatenate(([0.0], np.cumsum(q)))
    i = np.searchsorted(s, t, side="right") - 1
    j = np.maximum(i, 0)
    part = prefix[j] + q[j] * np.clip((t - s[j]) / d[j], 0.0, 1.0)
    return np.where(i >= 0, part, 0.0)


def _work(perf: PerfModel, steps: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-step (FLOPs, bytes) per GPU, as ``PerfModel.work`` gives them (vectorised)."""
    f = perf.features(steps)
    flops = np.where(f["active"], f["lin_flops"] + f["attn_flops"], 0.0)
    return flops, np.where(f["active"], f["weight_bytes"] + f["kv_bytes"], 0.0)


# --- the fit -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Coef:
    idle_w: float      # per GPU
    busy_w: float      # per GPU
    j_per_flop: float  # a, per GPU
    j_per_byte: float  # b, per GPU


def _step_power_w(run: _Run, coef: _Coef) -> np.ndarray:
    """Each step's modelled power per GPU, before the cap."""
    return coef.idle_w + coef.busy_w + (coef.j_per_flop * run.flops + coef.j_per_byte * run.nbytes) / run.d


def _predict(run: _Run, coef: _Coef, max_w: float, tp: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Modelled joules of each window (the replica: tp GPUs)."""
    p = _step_power_w(run, coef)
    step_w = np.minimum(p, max_w) - coef.idle_w                     # above idle, per GPU
    length = run.length_s if rows is None else run.length_s[rows]
    return tp * (coef.idle_w * length + run.window_sums(step_w * run.d, rows))


def _capped(runs: list[tuple[_Run, np.ndarray]], coef: _Coef, max_w: float) -> list[np.ndarray]:
    """Per run, the steps the model with ``coef`` puts above the cap."""
    return [_step_power_w(r, coef) > max_w for r, _ in runs]


def _objective(runs: list[tuple[_Run, np.ndarray]], coef: _Coef, max_w: float, tp: int) -> float:
    """Mean squared relative error of window energy, the cap applied."""
    rel = [(_predict(r, coef, max_w, tp, rows) - r.measured_j[rows]) / r.measured_j[rows] for r, rows in runs]
    return float(np.mean(np.concatenate(rel) ** 2))


def _solve(runs: list[tuple[_Run, np.ndarray]], idle_w: float | None, max_w: float, tp: int) -> _Coef:
    """Least squares on the windows ``rows`` of each run with the capped steps held at the cap: from none
    capped, the capped set is updated from each fit until it repeats; the fit with the lowest objective (cap
    applied) wins, so a capped set that swings back and forth cannot leave a worse fit behind."""
    capped = [np.zeros(r.n_steps, dtype=bool) for r, _ in runs]
    best, seen = None, set()
    for _ in range(MAX_CAP_ROUNDS):
        blocks, targets = [], []
        for (run, rows), cap in zip(runs, capped, strict=True):
            free = ~cap
            cols = [run.window_sums(run.d * free, rows), run.window_sums(run.flops * free, rows),
                    run.window_sums(run.nbytes * free, rows)]
            capped_s = run.window_sums(run.d * cap, rows)
            length = run.length_s[rows]
            y = run.measured_j[rows] / tp
            if idle_w is None:                                      # idle fitted: max_w - idle for capped time
                cols.append(length - capped_s)
                y = y - max_w * capped_s
            else:
                y = y - idle_w * length - (max_w - idle_w) * capped_s
            w = tp / run.measured_j[rows]
            blocks.append(np.column_stack(cols) * w[:, None])
            targets.append(y * w)
        a, t = np.vstack(blocks), np.concatenate(targets)
        scale = np.abs(a).max(axis=0)
        scale[scale == 0] = 1.0
        x, _ = _nonneg_ls((a / scale).T @ (a / scale), (a / scale).T @ t, float(t @ t))
        x = x / scale
        coef = _Coef(idle_w=float(x[3]) if idle_w is None else idle_w, busy_w=float(x[0]),
                     j_per_flop=float(x[1]), j_per_byte=float(x[2]))
        score = _objective(runs, coef, max_w, tp)
        if best is None or score < best[0]:
            best = (score, coef)
        seen.add(b"".join(c.tobytes() for c in capped))
        capped = _capped(runs, coef, max_w)
        if b"".join(c.tobytes() for c in capped) in seen:
            break
    return best[1]


def _error(run: _Run, coef: _Coef, max_w: float, tp: int, rows: np.ndarray | None = None,
           name: str | None = None) -> RunError:
    rows = np.arange(len(run.measured_j)) if rows is None else rows
    pred, meas = _predict(run, coef, max_w, tp, rows), run.measured_j[rows]
    return RunError(run=name or run.name, windows=len(rows),
                    window_mape=float(np.mean(np.abs(pred - meas) / meas) * 100.0),
                    energy_error_pct=float((pred.sum() / meas.sum() - 1.0) * 100.0),
                    measured_j=float(meas.sum()), predicted_j=float(pred.sum()))


def _idle(runs: list[_Run], tp: int) -> tuple[float | None, str]:
    """Per-GPU idle from the runs' measurements, weighted by their metered time; None when one lacks it."""
    if any(r.idle_w is None for r in runs):
        return None, "fitted (a run did not measure idle power)"
    spans = np.array([r.length_s.sum() for r in runs])
    idle = float(np.dot([r.idle_w for r in runs], spans) / spans.sum()) / tp
    return idle, "measured before each run, time-weighted over the runs"


def fit_power(runs: list[MeasuredRun], perf: PerfModel, max_w: float | None = None,
              window_s: float = 1.0) -> PowerFit:
    """Fit the power model's idle_w, busy_w, compute_weight and memory_weight (per GPU) to measured runs of one
    model on one replica shape (``perf``: its model, hardware and tp; FLOPs and bytes come from its counting).
    ``max_w``: the per-GPU cap, default the hardware's TDP. See the module docstring."""
    if not runs:
        raise ValueError("no measured runs to fit")
    if window_s <= 0:
        raise ValueError(f"window_s: expected a positive number of seconds, got {window_s!r}")
    hw, tp = perf.hardware, perf.tp
    cap = float(hw.tdp_w if max_w is None else max_w)
    prepared = [_Run(r, perf, window_s) for r in runs]
    for r in prepared:
        if len(r.measured_j) < 3:
            raise ValueError(f"{r.name}: the meter's timeline has {len(r.measured_j)} window(s) of {window_s:g} s; "
                             f"at least 3 are needed to fit")
        if r.n_steps == 0:
            raise ValueError(f"{r.name}: no step with work in steps.jsonl")
    notes = []
    # the 99th percentile of window power, not the maximum: one window can catch a counter update late
    peak_w = float(np.percentile(np.concatenate([r.measured_j / r.length_s for r in prepared]), 99)) / tp
    idle, idle_source = _idle(prepared, tp)
    everything = [(r, np.arange(len(r.measured_j))) for r in prepared]
    coef = _solve(everything, idle, cap, tp)
    if max_w is None and peak_w > cap:      # the spec's TDP may not be this device's limit (a placeholder, a CPU)
        raised = _solve(everything, idle, peak_w, tp)
        if _objective(everything, raised, peak_w, tp) < _objective(everything, coef, cap, tp):
            notes.append(f"the meter saw {peak_w:.0f} W per GPU (99th percentile of the windows), above "
                         f"{hw.key}'s TDP of {cap:g} W, and the fit is better with that as the cap")
            coef, cap = raised, peak_w
    if coef.j_per_flop == 0.0 or coef.j_per_byte == 0.0:
        notes.append("a coefficient came out 0 (non-negative fit): the runs do not separate compute from memory "
                     "work; fit runs of both kinds (prefill-heavy and decode-heavy)")
    if idle is None and not 0 < coef.idle_w < cap:
        raise ValueError(f"the fitted idle power {coef.idle_w:.1f} W is outside (0, {cap:g}) W: measure idle "
                         f"(replay run --idle-s) or fit more runs")
    if coef.idle_w >= cap:
        raise ValueError(f"idle power {coef.idle_w:.1f} W per GPU is not below the cap {cap:g} W")
    in_sample = tuple(_error(r, coef, cap, tp) for r in prepared)
    if len(prepared) >= 2:
        how = "each run predicted by a fit on the others"
        held = []
        for i, r in enumerate(prepared):
            others = [(o, np.arange(len(o.measured_j))) for j, o in enumerate(prepared) if j != i]
            held_idle, _ = _idle([o for o, _ in others], tp)
            held.append(_error(r, _solve(others, held_idle, cap, tp), cap, tp))
    else:
        how = "every fifth window of the run held out, the rest fitted"
        r = prepared[0]
        test = np.arange(len(r.measured_j)) % 5 == 4
        held = [_error(r, _solve([(r, np.flatnonzero(~test))], idle, cap, tp), cap, tp, np.flatnonzero(test))]
    span = cap - coef.idle_w
    params = PowerParams(idle_w=coef.idle_w, max_w=cap, busy_w=coef.busy_w,
                         compute_weight=coef.j_per_flop * perf.peak_flops / span,
                         memory_weight=coef.j_per_byte * perf.bandwidth_bps / span)
    capped = sum(int(c.sum()) for c in _capped(everything, coef, cap))
    return PowerFit(params=params, in_sample=in_sample, held_out=tuple(held), held_out_how=how,
                    windows=sum(len(r.measured_j) for r in prepared), steps=sum(r.n_steps for r in prepared),
                    capped_steps=capped, window_s=window_s, idle_source=idle_source, notes=tuple(notes))


# --- persistence ---------------------------------------------------------------------------------------------


def save_power(path: str | Path, fit_or_params: PowerFit | PowerParams, meta: dict | None = None) -> Path:
    """Write parameters (and, for a PowerFit, its errors) with ``meta`` as YAML ``{power_params, fit, meta}``;
    ``replay run --power FILE`` reads it."""
    if isinstance(fit_or_params, PowerFit):
        return save_params(path, "power_params", fit_or_params.params, fit_or_params.to_dict(), meta)
    return save_params(path, "power_params", fit_or_params, None, meta)


def load_power(path: str | Path) -> PowerParams:
    """Read the ``power_params`` of a file written by ``save_power``; errors name the file and the key."""
    return load_params(path, "power_params", PowerParams, "replay calibrate --power")
