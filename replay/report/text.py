"""The report as sections of prose and tables (``sections``), rendered as plain text (``format_report``, what
``replay report`` prints; replay.report.html renders the same sections), and ``short_report``: the few lines
``replay run`` prints after its summary. Joules and seconds inside; ms only here, for display.

The run's energy is called what it is, "measured" or "modelled" (the simulated engine's power model), in every
heading and column; a run without energy says "not measured: <why>" and shows what the estimators predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from replay.engines.sim.calibration import calibration_line
from replay.report.build import LATENCIES, STATS, Report, Written, build_report
from replay.report.compare import Comparison, gap_text

__all__ = ["Section", "format_report", "sections", "short_report"]


@dataclass(frozen=True)
class Section:
    """A heading, prose lines, an optional table (first row the header; ``align`` one letter per column, l or
    r, columns past its end right-aligned) and lines after it. ``prose_rows``: the table's cells are sentences,
    printed as text one row per block rather than as aligned columns."""

    heading: str
    lines: tuple[str, ...] = ()
    table: tuple[tuple[str, ...], ...] | None = None
    align: str = "l"
    after: tuple[str, ...] = field(default_factory=tuple)
    prose_rows: bool = False


def _j(v: float | None, fmt: str | None = None) -> str:
    """A number for display: ``fmt`` if given, else joules with one decimal from 100 up and four significant
    digits below (a CPU run's estimates are fractions of a joule)."""
    if v is None:
        return "-"
    if fmt is None:
        fmt = ",.1f" if abs(v) >= 100 else ".4g"
    return f"{v:{fmt}}"


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _rows(rows: list[list[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(r) for r in rows)


def _run(r: Report) -> Section:
    o, a = r.overview, r.assumed
    engine = o["engine"] or "?"
    if engine == "vllm":
        engine = f"vLLM ({o['platform'] or 'unknown platform'})"
    elif engine == "sim":
        engine = "simulated engine"
    elif engine == "server":
        engine = (f"the server at {o.get('url') or '?'}" + (f" ({o['platform']})" if o.get("platform") else "")
                  + " (steps reconstructed from token times)")
    lines = [f"run: {engine}, model {o['model']}; {o['trace']}, {o['mode'] or '?'} ({o['arrival'] or '?'}); "
             f"{_n(o['requests'] or 0, 'request')} ({o['finished']} finished, {o['rejected']} rejected, {o['unfinished']} "
             f"unfinished" + (f", {o['failed']} failed" if o.get("failed") else "") +
             f") in {_j(o['duration_s'], ',.2f')} s"]
    if o.get("calibration"):
        lines.append(calibration_line(o["calibration"]))
    if o["energy"] == "not measured":
        lines.append(f"energy: not measured: {o['energy_reason']}")
    else:
        lines.append(f"energy: {o['energy_source']}: {_j(o['energy_total_j'])} J")
    lines.append(f"estimates assume: {a.model} on {a.hardware} ({a.hardware_name}), {a.dtype}, tp {a.tp}, "
                 f"{a.peak} peak")
    lines += [f"  {note}" for note in a.notes]
    return Section(f"report of {o['path'] or 'this run'}", tuple(lines))


def _estimators(r: Report) -> Section:
    rows = [["estimator", "what it assumes", "note"]]
    for name, e in r.estimates.items():
        note = "" if not e.reason else f"{'not estimable' if e.total_j is None else 'note'}: {e.reason}"
        rows.append([name, e.label, note])
    return Section("estimators", table=_rows(rows), align="lll", prose_rows=True)


def _totals(c: Comparison) -> Section:
    word = c.label
    if c.kind is None:
        rows = [["estimator", "requests", "estimate J", "J/request", ""]]
        for t in c.totals:
            if t.estimated_j is None:
                rows.append([t.estimator, "-", "-", "-", f"not estimable: {t.reason}"])
            else:
                rows.append([t.estimator, f"{t.n:,}", _j(t.estimated_j), _j(t.estimated_j / t.n, ",.4g"), ""])
        return Section("energy against the estimates",
                       (f"not measured: {c.reason}",
                        f"what each estimator predicts for the run's {_n(len(c.requests), 'finished request')}:"),
                       _rows(rows), "lrrrl")
    rows = [["estimator", "requests", f"{word} J", "estimate J", "gap", "MAPE", "median APE", ""]]
    for t in c.totals:
        if t.estimated_j is None:
            rows.append([t.estimator, "-", "-", "-", "-", "-", "-", f"not estimable: {t.reason}"])
        else:
            rows.append([t.estimator, f"{t.n:,}", _j(t.recorded_j), _j(t.estimated_j), gap_text(t.gap),
                         _pct(t.mape), _pct(t.median_ape), ""])
    after = []
    if c.run_total_j is not None:
        parts = [f"{t.estimator} {_j(t.run_estimate_j)} J ({gap_text(t.run_gap)})" if t.run_gap is not None
                 else f"{t.estimator} estimated only part of it" for t in c.totals if t.run_estimate_j is not None]
        after.append(f"whole run: {word} {_j(c.run_total_j)} J (time between steps included)"
                     + (": " + ", ".join(parts) if parts else ""))
    if c.left_out:
        after.append("not compared: " + ", ".join(f"{n} {why}" for why, n in c.left_out.items()))
    return Section("energy against the estimates",
                   (f"{_n(len(c.requests), 'finished request')} with {word} energy; gap = {word} / estimate - 1, as "
                    f"[Na25] Table 4; MAPE = mean |estimate - {word}| / {word} over requests",),
                   _rows(rows), "lrrrrrrl", tuple(after))


def _bins(c: Comparison) -> Section:
    word = c.label
    heading = "per [Na25] bin (input <= I, output <= O)"
    if not c.bins:
        return Section(heading, ("no compared request falls in a bin",))
    names = [t.estimator for t in c.totals if t.n]   # the estimators that estimated nothing are listed above
    if c.kind is None:
        lines = ("estimated J per output token (energy not measured)",)
        rows = [["input", "output", "requests", *names]]
        for b in c.bins:
            rows.append([str(b.input_bin), str(b.output_bin), f"{b.requests:,}",
                         *[_j(b.estimated_j_per_token(n), ".4g") for n in names]])
    else:
        lines = (f"{word} J, {word} J per output token, and the gap ({word} / estimate - 1) per estimator",)
        rows = [["input", "output", "requests", f"{word} J", "J/out tok", *names]]
        for b in c.bins:
            rows.append([str(b.input_bin), str(b.output_bin), f"{b.requests:,}", _j(b.recorded_j),
                         _j(b.recorded_j_per_token, ".4g"), *[gap_text(b.estimates[n][3]) for n in names]])
    above = c.above_bins
    after = ()
    if sum(above.values()):
        after = (f"above the largest bins (not binned): {sum(above.values())} requests (input > {c.input_bins[-1]}: "
                 f"{above['input']}, output > {c.output_bins[-1]}: {above['output']}, both: {above['both']})",)
    return Section(heading, lines, _rows(rows), "", after)


def _breakdown(r: Report) -> Section:
    b = r.breakdown
    if b.kind is None:
        return Section("where the energy went", (f"not measured: {b.reason}",))
    idle = ("no idle share (see the note)" if b.idle_j is None else
            f"idle {_j(b.idle_j)} J ({_pct(b.idle_share)}), above idle {_j(b.above_idle_j)} J "
            f"({_pct(None if b.idle_share is None else 1 - b.idle_share)})")
    lines = [f"total {_j(b.total_j)} J ({b.kind}): {idle}"]
    if b.steps_j is not None:
        lines.append(f"in steps {_j(b.steps_j)} J, outside steps {_j(b.outside_steps_j)} J")
        lines.append(f"prefill {_j(b.prefill_j)} J ({_pct(b.prefill_share)}), decode {_j(b.decode_j)} J "
                     f"({_pct(b.decode_share)}) of the step energy: {b.split}; {_j(b.mixed_steps_j)} J of it in "
                     "steps holding both")
    lines += [f"note: {n}" for n in b.notes]
    return Section("where the energy went", tuple(lines))


def _latency(r: Report) -> Section:
    rows = [["latency (ms)", *STATS]]
    for key, name in LATENCIES.items():
        d = r.latency_s[key]
        rows.append([name, *[_j(None if d[s] is None else 1000 * d[s], ",.2f") for s in STATS]])
    return Section("latency", table=_rows(rows))


def sections(report: Report) -> list[Section]:
    """The report's sections, in order: the run, the estimators, totals, bins, where the energy went, latency."""
    c = report.comparison
    return [_run(report), _estimators(report), _totals(c), _bins(c), _breakdown(report), _latency(report)]


def _table(rows: tuple[tuple[str, ...], ...], align: str) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(widths[c]) if c < len(align) and align[c] == "l" else cell.rjust(widths[c])
                             for c, cell in enumerate(r)).rstrip() for r in rows]


def _text(s: Section) -> str:
    lines = [s.heading, *[f"  {line}" for line in s.lines]]
    if s.table:
        if s.prose_rows:
            for row in s.table[1:]:
                lines.append(f"  {row[0]}: {row[1]}")
                lines += [f"    {cell}" for cell in row[2:] if cell]
        else:
            lines += _table(s.table, s.align)
    lines += [f"  {line}" for line in s.after]
    return "\n".join(lines)


def format_report(report: Report, written: Written | None = None) -> str:
    """The whole report as aligned plain text; with ``written``, where the files went and the plots skipped."""
    blocks = [_text(s) for s in sections(report)]
    if written is not None:
        lines = [f"report written to {written.out}: " + ", ".join(p.name for p in written.files)]
        lines += [f"  plot {p.name} skipped: {p.note}" for p in written.plots if p.path is None]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def short_report(run: Any, reason_said: bool = False) -> str:
    """A few lines for the end of ``replay run``: each default estimator's total beside the run's measured (or
    modelled) energy of the same requests, with the gap and MAPE; or "not measured: why" and the estimates.
    ``run``: a run directory or a ``replay.run.RunResult``. ``reason_said``: the caller has just printed why the
    energy is not measured (``replay run``'s summary does), so it is not said twice. Cheap: no plots, nothing
    written."""
    r = build_report(run)
    c = r.comparison
    word = c.label
    a = r.assumed
    assume = f"estimates for {a.model} on {a.hardware}" + (" (vLLM's CPU build: hardware.yaml's rough 'cpu' entry)"
                                                          if a.hardware == "cpu" else "")
    if c.kind is None:
        lines = ["energy vs estimates: not measured" + (" (why: above)" if reason_said else f": {c.reason}"),
                 f"  {assume}, {_n(len(c.requests), 'finished request')}:"]
        rows = [[t.estimator, "not estimable" if t.estimated_j is None else f"{_j(t.estimated_j)} J",
                 t.reason or ""] for t in c.totals]
    else:
        lines = [f"energy vs estimates ({_n(len(c.requests), 'finished request')}; gap = {word} / estimate - 1; {assume}):"]
        rows = [[word, f"{_j(c.recorded_total_j)} J", ""]]
        for t in c.totals:
            if t.estimated_j is None:
                rows.append([t.estimator, "not estimable", t.reason or ""])
            else:
                part = f" ({t.n} of {len(c.requests)} requests)" if t.n != len(c.requests) else ""
                rows.append([t.estimator, f"{_j(t.estimated_j)} J", f"gap {gap_text(t.gap)}, MAPE {_pct(t.mape)}{part}"])
    lines += _table(_rows(rows), "lrl")
    if r.run.path is not None:
        lines.append(f"full report: replay report {r.run.path}")
    return "\n".join(lines)
