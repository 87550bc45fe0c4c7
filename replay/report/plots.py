"""The report's PNG plots (matplotlib, Agg backend, imported only when a plot is drawn):

- ``power.png``: power over time per device from power.csv (a measured run), with a tick at each request's
  arrival; a simulated run has no power.csv, so its step records' modelled power while a step runs is drawn
  instead (binned means where there are many steps), and labelled modelled.
- ``estimates.png``: the run's energy against each estimator per request, log-log, one colour per estimator,
  with the y = x line (on it: the estimate is exact). Values <= 0 cannot sit on a log axis: counted in the
  legend.
- ``bins.png``: energy per output token over the [Na25] bin grid (input bins x output bins), each cell with its
  value and request count; a run without energy shows the first estimator's instead, titled so.
- ``latency.png``: CDFs of TTFT, TPOT and E2E latency over finished requests.

A plot whose data the run lacks is skipped with a note saying why (``Plot.note``); nothing is drawn from
made-up numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Plot", "plot_bins", "plot_estimates", "plot_latency", "plot_power", "write_plots"]

MAX_POINTS = 4000   # step-power curves longer than this are drawn as binned means


@dataclass(frozen=True)
class Plot:
    """One plot: the file written (None when skipped), what it shows, and a note (why skipped, or a caveat)."""

    name: str
    title: str
    path: Path | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "file": self.path.name if self.path else None,
                "note": self.note}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


# --- power over time -----------------------------------------------------------------------------------------


def _step_power(start: np.ndarray, end: np.ndarray, energy: np.ndarray,
                idle_w: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(time, watts) of one replica's steps, each step flat at its energy over its duration, the gaps between
    steps at ``idle_w`` (None: left blank). Over MAX_POINTS steps: MAX_POINTS equal time bins instead, each the
    bin's energy (the part of each step inside it, plus idle power over its gaps) over its width; without idle
    power, the bin's step energy over its step time."""
    order = np.argsort(start, kind="stable")
    start, end, energy = start[order], end[order], energy[order]
    dur = end - start
    if len(start) <= MAX_POINTS:
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(dur > 0, energy / dur, np.nan)
        gap_w = np.nan if idle_w is None else idle_w
        t = np.empty(4 * len(start))
        p = np.empty(4 * len(start))
        t[0::4], t[1::4] = start, end             # the step
        t[2::4], t[3::4] = end, np.append(start[1:], end[-1])   # the gap after it
        p[0::4], p[1::4] = w, w
        p[2::4], p[3::4] = gap_w, gap_w
        keep = np.ones(len(t), dtype=bool)
        idle = np.append(start[1:] - end[:-1] > 1e-12, False)   # back-to-back steps: no gap to draw
        keep[2::4], keep[3::4] = idle, idle
        return t[keep], p[keep]
    # exact bins: the cumulative energy (each step's spread evenly over it, idle power over the gaps) and the
    # cumulative busy time, both piecewise linear at the step boundaries, read at the bin edges
    gap = np.maximum(np.concatenate(([0.0], start[1:] - end[:-1])), 0.0)
    idle_j = 0.0 if idle_w is None else idle_w * gap
    cum_end = np.cumsum(energy + idle_j)
    busy_end = np.cumsum(dur)
    times = np.column_stack((start, end)).ravel()
    cum = np.column_stack((cum_end - energy, cum_end)).ravel()
    busy = np.column_stack((busy_end - dur, busy_end)).ravel()
    edges = np.linspace(float(start[0]), float(end[-1]), MAX_POINTS + 1)
    e = np.diff(np.interp(edges, times, cum))
    b = np.diff(np.interp(edges, times, busy))
    mid = (edges[:-1] + edges[1:]) / 2
    if idle_w is None:   # mean power while a step runs
        with np.errstate(divide="ignore", invalid="ignore"):
            return mid, np.where(b > 0, e / b, np.nan)
    return mid, e / (edges[1] - edges[0])


def plot_power(run: Any, path: Path) -> Plot:
    """power.png for a ``RunData`` (module docstring)."""
    title = "power over time, with request arrivals"
    steps, requests = run.steps, run.requests
    curves: list[tuple[str, np.ndarray, np.ndarray, str]] = []   # label, time, watts, drawstyle
    if run.timeline is not None:
        tl = run.timeline
        for device in tl.devices:
            curves.append((device, tl.times_s[1:], tl.power_w(device), "steps-pre"))
        what = f"{tl.label or 'measured (power.csv)'}: mean power over each sample interval"
    elif run.energy_kind == "modelled" and len(steps) and "energy_j" in steps.columns:
        # the power model's idle power: the summary's idle energy is idle power x the run's duration, all replicas
        idle_j, duration_s = run.summary.get("energy_idle_j"), run.summary.get("duration_s")
        replicas = steps["replica"].nunique()
        idle_w = idle_j / duration_s / replicas if idle_j is not None and duration_s else None
        for replica, group in steps.groupby("replica"):
            t, w = _step_power(group["start_s"].to_numpy(np.float64), group["end_s"].to_numpy(np.float64),
                               group["energy_j"].to_numpy(dtype=np.float64, na_value=np.nan), idle_w)
            curves.append((f"replica {replica}", t, w, "default"))
        binned = f", as means over {MAX_POINTS} time bins" if len(steps) > MAX_POINTS else ""
        gaps = "idle power" if idle_w is not None else "not drawn (idle power unknown)"
        what = f"modelled by the simulated engine's power model: each step's, between steps {gaps}{binned}"
    else:
        why = (f"energy not measured: {run.energy_reason}" if run.energy_kind is None
               else "the run has no power.csv and no step energies")
        return Plot("power", title, None, f"no power to plot: {why}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label, t, w, style in curves:
        ax.plot(t, w, drawstyle=style, linewidth=0.8, label=label)
    if len(requests) and "arrival_s" in requests.columns:
        arrivals = requests["arrival_s"].to_numpy(dtype=np.float64, na_value=np.nan)
        arrivals = arrivals[np.isfinite(arrivals)]
        ax.vlines(arrivals, 0, 0.06, transform=ax.get_xaxis_transform(), color="black", linewidth=0.5,
                  alpha=0.6, label=f"arrivals ({len(arrivals)})")
    ax.set_xlabel("run time (s)")
    ax.set_ylabel("power (W)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{title}\n{what}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)
    return Plot("power", title, path)


# --- estimates per request -----------------------------------------------------------------------------------


def plot_estimates(comparison: Any, path: Path) -> Plot:
    """estimates.png for a ``Comparison`` (module docstring)."""
    title = "energy per request: estimated against the run's"
    c = comparison
    if c.kind is None:
        return Plot("estimates", title, None, f"energy not measured: {c.reason}; nothing to set the estimates "
                                              "against")
    rec = c.requests["recorded_j"].to_numpy(np.float64)
    series = []
    for name in c.estimators:
        est = c.requests[name].to_numpy(np.float64)
        both = np.isfinite(est) & np.isfinite(rec)
        ok = both & (est > 0) & (rec > 0)
        if ok.any():
            series.append((name, rec[ok], est[ok], int((both & ~ok).sum())))
    if not series:
        return Plot("estimates", title, None, "no estimator estimated any compared request (see the estimators' "
                                              "reasons)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.2))
    lo = min(min(r.min(), e.min()) for _, r, e, _ in series)
    hi = max(max(r.max(), e.max()) for _, r, e, _ in series)
    for name, r, e, dropped in series:
        label = name + (f" ({dropped} values <= 0 not shown)" if dropped else "")
        ax.scatter(r, e, s=6, alpha=0.6, label=label, rasterized=len(r) > 2000)
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle="--", label="y = x (exact)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{c.kind} energy per request (J)")
    ax.set_ylabel("estimated energy per request (J)")
    ax.set_title(f"{title}\nbelow the line: the estimate is under the {c.kind} energy", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)
    return Plot("estimates", title, path)


# --- energy per output token over the bin grid ---------------------------------------------------------------


def heatmap(fig: Any, ax: Any, grid: np.ndarray, cell_text, x_labels: list[str], y_labels: list[str], x_title: str,
            y_title: str, colour_label: str, fontsize: int = 7) -> None:
    """An annotated heatmap of ``grid`` (rows bottom-up, NaN cells blank): ``cell_text(row, column)`` written in
    each finite cell, dark text on the bright half of the scale (the [Na25] bin grid, the [SS26] surface)."""
    image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label=colour_label)
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            if np.isfinite(grid[r, c]):
                ax.text(c, r, cell_text(r, c), ha="center", va="center", fontsize=fontsize,
                        color="black" if grid[r, c] > middle else "white")
    ax.set_xticks(range(len(x_labels)), x_labels)
    ax.set_yticks(range(len(y_labels)), y_labels)
    ax.set_xlabel(x_title)
    ax.set_ylabel(y_title)


def plot_bins(comparison: Any, path: Path) -> Plot:
    """bins.png for a ``Comparison`` (module docstring)."""
    c = comparison
    title = "energy per output token over the [Na25] bins"
    if not c.bins:
        return Plot("bins", title, None, "no compared request falls in a bin")
    if c.kind is not None:
        source, value, note = f"{c.kind}", (lambda b: b.recorded_j_per_token), None
    else:
        name = next((n for n in c.estimators if any(b.estimated_j_per_token(n) is not None for b in c.bins)), None)
        if name is None:
            return Plot("bins", title, None, f"energy not measured ({c.reason}) and no estimator estimated every "
                                             "request of a bin")
        source, value = f"estimated by {name} (energy not measured)", (lambda b: b.estimated_j_per_token(name))
        note = f"energy not measured: {c.reason}; the grid shows the {name} estimate"
    grid = np.full((len(c.input_bins), len(c.output_bins)), np.nan)
    count = np.zeros_like(grid, dtype=np.int64)
    for b in c.bins:
        i, o = c.input_bins.index(b.input_bin), c.output_bins.index(b.output_bin)
        v = value(b)
        grid[i, o] = np.nan if v is None else v
        count[i, o] = b.requests
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 0.95 * len(c.output_bins), 1.4 + 0.55 * len(c.input_bins)))
    heatmap(fig, ax, grid, lambda i, o: f"{grid[i, o]:.3g}\nn={count[i, o]}", [f"<={o}" for o in c.output_bins],
            [f"<={i}" for i in c.input_bins], "output tokens", "input tokens", "J per output token", fontsize=6)
    ax.set_title(f"{title}: {source}", fontsize=9)
    _save(fig, path)
    return Plot("bins", title, path, note)


# --- latency CDFs --------------------------------------------------------------------------------------------

_CDF = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E latency"))


def plot_latency(requests: Any, path: Path) -> Plot:
    """latency.png from a run's requests frame (module docstring)."""
    title = "latency CDFs (finished requests)"
    if not len(requests) or "status" not in requests.columns:
        return Plot("latency", title, None, "no requests")
    fin = requests[requests["status"] == "finished"]
    if not len(fin):
        return Plot("latency", title, None, "no finished requests")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(_CDF), figsize=(11, 3.3))
    for ax, (col, name) in zip(axes, _CDF):
        x = fin[col].to_numpy(dtype=np.float64, na_value=np.nan) if col in fin.columns else np.empty(0)
        x = np.sort(x[np.isfinite(x)]) * 1000
        if x.size:
            ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", linewidth=1)
            ax.set_xlabel(f"{name} (ms)")
        else:
            ax.text(0.5, 0.5, f"no {name} values", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.set_title(f"{name} (n={x.size})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return Plot("latency", title, path)


def write_plots(report: Any, out: Path) -> list[Plot]:
    """Every plot of a ``Report`` into ``out`` (PNG files named after the plots)."""
    out = Path(out)
    plots = [plot_power(report.run, out / "power.png"), plot_estimates(report.comparison, out / "estimates.png"),
             plot_bins(report.comparison, out / "bins.png"), plot_latency(report.run.requests, out / "latency.png")]
    for p in plots:   # a plot skipped now leaves no stale file from an earlier report in ``out``
        if p.path is None:
            (out / f"{p.name}.png").unlink(missing_ok=True)
    return plots
