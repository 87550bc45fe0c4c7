"""A sweep's results: one table row per point from its run directory, and the [Na25] batch energies.

Columns of ``results_table`` (``results.csv``), in order:

- ``point`` (index), ``dir`` (the point's directory name), one column per axis (named by its key; an axis
  whose key is also a metric's name, such as ``duration_s``, is ``grid_<key>``), ``status`` (done, failed,
  interrupted, pending), ``error`` (the first line of a failed point's error.txt) and ``resumed`` (a done point
  finished by ``--resume``: its latencies include the in-flight work the interruption lost).
- From the point's summary.json (``Summary.to_dict`` names): requests, finished, rejected, unfinished,
  duration_s, request/output/total-token throughput, median and p99 of TTFT, TPOT and E2E latency,
  ``energy_source`` (what the numbers are: a meter's label, or the simulator's power model, labelled
  modelled) and ``energy_not_measured_reason``, energy in total, above idle, per request, per output token,
  and output tokens per joule. Null where not measured (never 0), and for points not done.
- ``e_tok_j``: [SS26]'s E_tok = E / n_out, the point's energy over the output tokens it generated (J/token);
  the same number as ``energy_per_output_token_j``, under the name the [SS26] fit reads.
- Static-batch points (offline, ``batch_size`` B, [Na25]): ``full_batches``, the run's batches of B requests
  (requests in trace order, B at a time; a last, smaller batch does not count), and ``energy_per_batch_j``,
  the mean over them of the batch's energy, the sum of its requests' ``energy_j`` (the energy of the steps
  that served it: a static batch has the engine to itself). A full batch with a request that did not
  finish, or has no energy, is left out of the mean; null when none is left or the run's energy was not
  measured. Both null for other points.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from replay.config import RunConfig, load_config
from replay.files import read_jsonl
from replay.report.rundir import energy_kind
from replay.run import prepare_workload
from replay.sweep.grid import ERROR_FILE, SweepSpec, load_sweep, point_state
from replay.trace.bins import DEFAULT_INPUT_BINS, DEFAULT_OUTPUT_BINS

__all__ = ["METRICS", "RESULTS_FILE", "batch_energies", "format_table", "results_table"]

RESULTS_FILE = "results.csv"
METRICS = (
    "requests", "finished", "rejected", "unfinished", "duration_s", "request_throughput", "output_throughput",
    "total_token_throughput", "median_ttft_s", "p99_ttft_s", "median_tpot_s", "p99_tpot_s", "median_e2el_s",
    "p99_e2el_s", "energy_source", "energy_not_measured_reason", "energy_total_j", "energy_above_idle_j",
    "energy_per_request_j", "energy_per_output_token_j", "output_tokens_per_j",
)
EXTRA = ("e_tok_j", "full_batches", "energy_per_batch_j")


def axis_column(key: str) -> str:
    """The table column of axis ``key``: the key, or ``grid_<key>`` where a metric has that name."""
    return f"grid_{key}" if key in METRICS + EXTRA + ("point", "dir", "status", "error") else key


def _spec(sweep: SweepSpec | str | Path) -> SweepSpec:
    return sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)


def results_table(sweep: SweepSpec | str | Path) -> pd.DataFrame:
    """One row per point of ``sweep`` (a spec, or a sweep directory), in point order; columns in the module
    docstring. Points not done have their status and null metrics."""
    spec = _spec(sweep)
    rows = []
    for point in spec.points():
        out = Path(point.config.out)
        state = point_state(out)
        row: dict[str, Any] = {"point": point.index, "dir": point.name}
        row.update({axis_column(k): v for k, v in point.values})
        row["status"] = state
        row["error"] = _first_line(out / ERROR_FILE) if state == "failed" else None
        doc = _summary_doc(out) if state == "done" else {}
        summary = doc.get("summary", {})
        row["resumed"] = ("resumed" in doc) if state == "done" else None
        row.update({name: summary.get(name) for name in METRICS})
        row["e_tok_j"] = row["energy_per_output_token_j"]  # [SS26]'s name for the summary's figure
        measured = summary.get("energy_source") is not None  # the run's verdict, whatever its records hold
        full, per_batch = _batch_energy(out, measured) if state == "done" else (None, None)
        row["full_batches"], row["energy_per_batch_j"] = full, per_batch
        rows.append(row)
    columns = ["point", "dir", *(axis_column(a.key) for a in spec.axes), "status", "error", "resumed", *METRICS,
               *EXTRA]
    return pd.DataFrame(rows, columns=columns).astype(object).where(lambda f: f.notna(), None)


def _first_line(path: Path) -> str | None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return text.splitlines()[0] if text.strip() else None


def _summary_doc(out: Path) -> dict[str, Any]:
    try:
        doc = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{out / 'summary.json'}: not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        raise ValueError(f"{out / 'summary.json'}: expected a 'summary' mapping")
    return doc


def _run_config(out: Path) -> RunConfig:
    """The resolved configuration a run recorded in its config.yaml (its other keys, such as the engine's
    sizing, are the run's own business)."""
    data = load_config(out / "config.yaml")
    known = {f.name for f in fields(RunConfig)}
    return RunConfig.from_dict({k: v for k, v in data.items() if k in known}, where=str(out / "config.yaml"))


def _batch_energy(out: Path, measured: bool) -> tuple[int | None, float | None]:
    """(full batches in the run, mean energy of one in J) of a static-batch run; (None, None) for other runs.
    The mean is over the full batches whose requests all finished with an energy; None when the run's energy
    was not measured or no batch qualifies. [Na25]: E_batch is the energy of one full batch."""
    config = _run_config(out)
    if config.arrival != "static" or config.batch_size is None:
        return None, None
    ids = [str(i) for i in prepare_workload(config).table.column("id").to_pylist()]
    size = config.batch_size
    full = len(ids) // size
    if not measured:
        return full, None
    energy: dict[str, float] = {}
    for record in read_jsonl(out / "requests.jsonl", required=("id",)):
        if record.get("status") == "finished" and record.get("energy_j") is not None:
            energy[str(record["id"])] = float(record["energy_j"])
    sums = []
    for k in range(full):
        batch = ids[k * size:(k + 1) * size]
        if all(i in energy for i in batch):
            sums.append(math.fsum(energy[i] for i in batch))
    return full, (float(np.mean(sums)) if sums else None)


def batch_energies(sweep: SweepSpec | str | Path, input_bins: Iterable[int] = DEFAULT_INPUT_BINS,
                   output_bins: Iterable[int] = DEFAULT_OUTPUT_BINS, every_batch_size: bool = False) -> pd.DataFrame:
    """The [Na25] batch-energy frame from a synthetic sweep of static batches (section 4.1:
    ``E_total = sum N(I*,O*) / B(I*,O*) * E_batch(I*,O*)``, B the largest batch the hardware and backend allow
    for the bin): one row per (input_bin, output_bin) with ``batch_size`` B and ``energy_j``, the energy of one
    full batch, plus n_in, n_out, ``source`` (the energy's label), ``modelled`` (True for the simulator's power
    model) and ``point``. ``every_batch_size``: one row per bin and batch size instead.

    A point's lengths go to their bins as requests do (I* = the smallest input edge >= n_in, O* likewise).
    Within a bin the points with the longest lengths stand for it (nearest the edges, which [Na25]'s rounding
    up stands for), and of those the largest batch size that ran to the end with energy: a batch too large
    for the GPU fails, is left out, and the next smaller one is B. Points that are not done, not static
    batches, without energy, or above the largest bins are left out and counted in
    ``frame.attrs["left_out"]``; none left is an error saying why."""
    spec = _spec(sweep)
    if not spec.synthetic:
        raise ValueError(f"{spec.out}: batch energies need a synthetic sweep (n_in and n_out axes), not a sweep "
                         f"of the trace {spec.trace}")
    in_edges, out_edges = sorted(int(e) for e in input_bins), sorted(int(e) for e in output_bins)
    table = results_table(spec)
    left_out = {"not done": 0, "not static batches": 0, "energy not measured": 0, "above the largest bins": 0}
    rows = []
    for point, row in zip(spec.points(), table.to_dict("records")):
        n_in, n_out = point.value("n_in"), point.value("n_out")
        if row["status"] != "done":
            left_out["not done"] += 1
        elif row["full_batches"] is None:
            left_out["not static batches"] += 1
        elif row["energy_per_batch_j"] is None:
            left_out["energy not measured"] += 1
        elif n_in > in_edges[-1] or n_out > out_edges[-1]:
            left_out["above the largest bins"] += 1
        else:
            rows.append({"input_bin": next(e for e in in_edges if e >= n_in),
                         "output_bin": next(e for e in out_edges if e >= n_out),
                         "batch_size": point.config.batch_size, "energy_j": row["energy_per_batch_j"],
                         "n_in": n_in, "n_out": n_out, "source": row["energy_source"],
                         "modelled": energy_kind(row["energy_source"]) == "modelled", "point": point.name})
    if not rows:
        why = ", ".join(f"{n} {what}" for what, n in left_out.items() if n)
        raise ValueError(f"{spec.out}: no point gives a batch energy ({why}); a batch-energy sweep runs static "
                         "batches (--offline --batch-size B) with energy measured or modelled")
    frame = pd.DataFrame(rows)
    if every_batch_size:
        frame = frame.sort_values(["input_bin", "output_bin", "batch_size", "n_in", "n_out"], kind="stable")
        frame = frame.drop_duplicates(["input_bin", "output_bin", "batch_size"], keep="last")
    else:
        frame = frame.sort_values(["input_bin", "output_bin", "n_in", "n_out", "batch_size"], kind="stable")
        frame = frame.drop_duplicates(["input_bin", "output_bin"], keep="last")
    frame = frame.reset_index(drop=True)
    frame.attrs["left_out"] = left_out
    return frame


_SHOWN = (("finished", "finished", "{:,}"), ("p99_ttft_s", "p99 TTFT ms", "ms"),
          ("median_tpot_s", "TPOT ms", "ms"), ("output_throughput", "out tok/s", "{:,.1f}"),
          ("energy_per_request_j", "J/req", "{:.4g}"), ("e_tok_j", "J/out tok", "{:.4g}"),
          ("output_tokens_per_j", "tok/J", "{:.4g}"), ("energy_per_batch_j", "J/batch", "{:.4g}"))


def format_table(table: pd.DataFrame, spec: SweepSpec) -> str:
    """The results table for a terminal: axes, status and the main figures (results.csv holds every column);
    energy figures that were not measured show as "not measured", modelled ones are flagged below."""
    cols = [axis_column(a.key) for a in spec.axes]
    shown = [(c, title, how) for c, title, how in _SHOWN if c != "energy_per_batch_j"
             or table[c].notna().any()]
    lines = []
    for row in table.to_dict("records"):
        cells = {c: "-" if row[c] is None else str(row[c]) for c in cols}
        cells["status"] = row["status"]
        for c, title, how in shown:
            v = row[c]
            if v is None:
                text = "not measured" if c in EXTRA[:1] + ("energy_per_request_j", "output_tokens_per_j") \
                    and row["status"] == "done" else "-"
            elif how == "ms":
                text = f"{v * 1e3:,.1f}"
            else:
                text = how.format(v)
            cells[title] = text
        lines.append(cells)
    header = [*cols, "status", *(title for _, title, _ in shown)]
    widths = {h: max([len(h)] + [len(r[h]) for r in lines]) for h in header}
    out = ["  ".join(h.rjust(widths[h]) for h in header)]
    out += ["  ".join(r[h].rjust(widths[h]) for h in header) for r in lines]
    sources = sorted({s for s in table["energy_source"] if s is not None})
    if sources:
        out.append("energy: " + "; ".join(sources))
    failed = table[table["status"] == "failed"]
    for row in failed.to_dict("records"):
        out.append(f"failed {row['dir']}: {row['error']}")
    return "\n".join(out)
