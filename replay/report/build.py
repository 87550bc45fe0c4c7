"""``replay report``: one run's energy against the estimators, where the energy went and its latency, assembled
once and written as text, report.json, PNG plots and (optionally) one self-contained HTML page.

``build_report(run_dir)`` reads the run and computes everything (no files written); ``write_report(report, out)``
writes report.json, comparison.csv (one row per compared request), the plots and report.html; ``short_report``
is the few lines ``replay run`` prints at the end of every run (default estimators, totals only, no plots).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from replay.estimate.estimators import Estimate, EstimateContext
from replay.estimate.forms import Theta, load_theta
from replay.files import plain, write_atomic
from replay.report.breakdown import EnergyBreakdown, energy_breakdown
from replay.report.compare import Comparison, compare
from replay.report.estimates import Assumed, parse_estimators, run_context, run_estimates
from replay.report.rundir import RunData, from_result, load_run

__all__ = ["LATENCIES", "Report", "Written", "build_report", "write_report"]

LATENCIES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E"}   # summary key -> display name
STATS = ("mean", "median", "p90", "p99")


@dataclass(frozen=True, eq=False)
class Report:
    """Everything ``replay report`` shows for one run."""

    run: RunData
    context: EstimateContext
    assumed: Assumed
    estimates: dict[str, Estimate]
    comparison: Comparison
    breakdown: EnergyBreakdown
    latency_s: dict[str, dict[str, float | None]]     # metric -> {mean, median, p90, p99}, seconds
    overview: dict[str, Any]

    def to_dict(self, per_request: bool = True) -> dict[str, Any]:
        """Plain values (no NaN) for report.json: everything the printed report shows, and the per-request
        rows with ``per_request``."""
        return plain({"run": self.overview, "assumed": self.assumed.to_dict(),
                       "comparison": self.comparison.to_dict(per_request=per_request),
                       "energy_breakdown": self.breakdown.to_dict(), "latency_s": self.latency_s})


def _as_run(run: RunData | str | Path | Any) -> RunData:
    if isinstance(run, RunData):
        return run
    if isinstance(run, (str, Path)):
        return load_run(run)
    return from_result(run)   # a replay.run.RunResult


def _overview(run: RunData) -> dict[str, Any]:
    s, engine = run.summary, run.engine
    return {"path": str(run.path) if run.path is not None else None, "engine": engine.get("engine"),
            "platform": engine.get("platform"), "url": engine.get("url"), "calibration": engine.get("calibration"), "model": run.config.get("model") or engine.get("model"),
            "gpu": run.config.get("gpu"), "trace": run.config.get("trace"), "mode": run.config.get("mode"),
            "arrival": run.config.get("arrival"), "requests": s.get("requests"), "finished": s.get("finished"),
            "rejected": s.get("rejected"), "unfinished": s.get("unfinished"), "failed": s.get("failed"),
            "duration_s": s.get("duration_s"),
            "energy": run.energy_kind or "not measured", "energy_source": s.get("energy_source"),
            "energy_reason": run.energy_reason, "energy_total_j": s.get("energy_total_j"),
            "choices": list(run.config.get("choices") or [])}


def _latency(summary: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    return {m: {st: summary.get(f"{st}_{m}_s") for st in STATS} for m in LATENCIES}


def build_report(run: RunData | str | Path | Any, estimators: list[str] | tuple[str, ...] | None = None,
                 theta: Theta | str | Path | None = None, bins_from: pd.DataFrame | str | Path | None = None,
                 peak: str = "dense", gpu: str | None = None) -> Report:
    """The report of ``run`` (a run directory, a ``RunData`` or a ``replay.run.RunResult``).

    ``estimators``: names of ``replay.estimate.ESTIMATORS`` or "all" (default: ``estimates.default_estimators``);
    ``theta``: [SS26] coefficients (a Theta or a theta YAML file); ``bins_from``: [Na25] batch energies (a
    frame, or a ``replay sweep`` directory of static batches); ``peak``: "dense" or "sparse" for flops and
    roofline; ``gpu``: the hardware to assume instead of the run's (``estimates.run_context``)."""
    data = _as_run(run)
    if isinstance(theta, (str, Path)):
        theta = load_theta(theta)
    if isinstance(bins_from, (str, Path)):
        from replay.sweep import batch_energies
        bins_from = batch_energies(bins_from)
    ctx, assumed = run_context(data, theta=theta, batch_energies=bins_from, peak=peak, gpu=gpu)
    names = parse_estimators(list(estimators) if estimators else None, ctx)
    estimates = run_estimates(data.requests, ctx, names)
    comparison = compare(data.requests, estimates, data.energy_kind, data.energy_reason,
                         run_total_j=data.summary.get("energy_total_j"), input_bins=ctx.input_bins,
                         output_bins=ctx.output_bins)
    return Report(data, ctx, assumed, estimates, comparison, energy_breakdown(data), _latency(data.summary),
                  _overview(data))


@dataclass(frozen=True)
class Written:
    """What ``write_report`` wrote: report.json, comparison.csv, each plot (or why it was skipped), the HTML."""

    out: Path
    json: Path
    csv: Path
    plots: tuple[Any, ...]          # replay.report.plots.Plot
    html: Path | None = None
    files: tuple[Path, ...] = field(default_factory=tuple)


def write_report(report: Report, out: str | Path, html: bool = False) -> Written:
    """Write the report into ``out`` (created): the PNG plots, report.json (``Report.to_dict`` plus the plots'
    files and skip notes), comparison.csv and, with ``html``, report.html. Files are replaced, never appended."""
    from replay.report.plots import write_plots
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out)
    doc = report.to_dict()
    doc["plots"] = [p.to_dict() for p in plots]
    json_path = out / "report.json"
    write_atomic(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    csv_path = out / "comparison.csv"
    write_atomic(csv_path, report.comparison.requests.to_csv(index=False))
    files = [json_path, csv_path, *[p.path for p in plots if p.path is not None]]
    html_path = None
    if html:
        from replay.report.html import render_html
        html_path = out / "report.html"
        write_atomic(html_path, render_html(report, plots))
        files.append(html_path)
    return Written(out, json_path, csv_path, tuple(plots), html_path, tuple(files))
