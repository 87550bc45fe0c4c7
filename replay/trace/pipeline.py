"""From any supported file to canonical batches: detect, read, check order, window, limit, rebase.

One pipeline serves `read_trace` (into memory) and `convert` (streamed to disk), so both see the same
validation and the same errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from replay.trace.formats import FORMATS, Chunk, ReadReport, detect
from replay.trace.formats.base import check_counts, where_first
from replay.trace.formats.source import decompression_checked
from replay.trace.schema import OPTIONAL, SCHEMA, TraceError, Workload, shown


@dataclass(frozen=True)
class ReadOptions:
    """How to read a trace: the format (None: detect), a kind to stamp, a time window, a cap, reordering."""

    format: str | None = None
    kind: str | None = None
    limit: int | None = None
    start_s: float | None = None
    duration_s: float | None = None
    sort: bool = False

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        for name in ("start_s", "duration_s"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value * 1e9):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number of seconds, got {value}")
        if self.start_s is not None and self.start_s < 0:
            raise ValueError(f"--start-s must be >= 0, got {self.start_s}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"--duration-s must be > 0, got {self.duration_s}")


def _validated(path: Path, chunks: Iterator[Chunk], fields: tuple[str, str, str],
               unit: str = "line") -> Iterator[Chunk]:
    """Positive token counts, times that never go backwards (checked across chunk edges too) and request ids
    that are unique (a duplicate would be served once and its twin dropped on resume).

    `fields` names the input, output and time columns as the source file calls them.
    """
    last_ns: int | None = None
    last_line = 0
    seen: dict[str, int] = {}                # id -> the line it was first on
    for chunk in chunks:
        check_counts(path, chunk.line, chunk.input_tokens, fields[0], unit)
        check_counts(path, chunk.line, chunk.output_tokens, fields[1], unit)
        t = chunk.arrival_ns
        if t is not None and len(t):
            prev = np.concatenate([[last_ns if last_ns is not None else t[0]], t[:-1]])
            i = where_first(t < prev)
            if i is not None:
                before = int(chunk.line[i - 1]) if i else last_line
                raise TraceError(path, int(chunk.line[i]), fields[2],
                                 f"time goes backwards ({(prev[i] - t[i]) / 1e9:.6g} s before {unit} {before}); "
                                 "the trace must be in time order (--sort reorders it, with a warning)", unit)
            last_ns, last_line = int(t[-1]), int(chunk.line[-1])
        given = not chunk.ids_from_rows and chunk.id.null_count < len(chunk.id)     # row numbers cannot clash
        ids = chunk.id.to_pylist() if given else ()
        for i, request_id in enumerate(ids):
            if request_id is None:
                continue
            first = seen.setdefault(request_id, int(chunk.line[i]))
            if first != int(chunk.line[i]):
                raise TraceError(path, int(chunk.line[i]), "id", f"request id {shown(request_id)} is already on "
                                 f"{unit} {first}; every request needs an id of its own", unit)
        yield chunk


def _sorted(chunks: Iterator[Chunk], report: ReadReport) -> Iterator[Chunk]:
    """All rows in time order (stable); counts how many were out of order. Holds the trace in memory."""
    parts = list(chunks)
    if not parts:
        return
    whole = Chunk.concat(parts)
    if whole.arrival_ns is not None:
        t = whole.arrival_ns
        late = int(np.sum(t < np.maximum.accumulate(t)))
        if late:
            report.warnings.append(f"{late} requests were out of time order and were reordered (--sort)")
            whole = whole.take(np.argsort(t, kind="stable"))
    yield whole


def canonical_batches(path: str | Path, options: ReadOptions = ReadOptions(),
                      report: ReadReport | None = None) -> Iterator[pa.RecordBatch]:
    """Canonical record batches from a trace file in any supported format; see module docstring."""
    path = Path(path)
    if not path.exists():
        raise TraceError(path, None, None, "no such file")
    if path.is_dir():
        raise TraceError(path, None, None, "is a directory, expected a trace file")
    report = report if report is not None else ReadReport(str(path))
    fmt = FORMATS[options.format] if options.format else _detect(path)
    report.format = fmt.name

    chunks = decompression_checked(path, fmt.read(path, report))
    chunks = _sorted(chunks, report) if options.sort else chunks
    chunks = _validated(path, chunks, fmt.fields, fmt.unit)
    windowed = options.start_s is not None or options.duration_s is not None
    start_ns = round((options.start_s or 0.0) * 1e9)
    end_ns = None if options.duration_s is None else start_ns + round(options.duration_s * 1e9)
    first_ns: int | None = None   # the source's first request: the window is measured from it
    base_ns: int | None = None    # the first request kept: arrival_s is measured from it
    left = options.limit
    kept = 0
    for chunk in chunks:
        if not len(chunk):  # e.g. a block whose rows were all excluded
            continue
        t = chunk.arrival_ns
        if windowed:
            if t is None:
                raise TraceError(path, None, None, "--start-s/--duration-s need a timed trace; this one has no arrival times")
            if first_ns is None:
                first_ns = int(t[0])
                if report.first_arrival_ns is not None:  # the source's first request was excluded
                    first_ns = min(first_ns, report.first_arrival_ns)
            rel = t - first_ns
            inside = rel >= start_ns
            if end_ns is not None:
                inside &= rel < end_ns
            done = end_ns is not None and not options.sort and rel[-1] >= end_ns
            chunk = chunk.take(inside) if not inside.all() else chunk
            if not len(chunk):
                if done:
                    break
                continue
        else:
            done = False
        if left is not None and len(chunk) >= left:
            chunk = chunk.take(np.arange(left))
            done = True
        if left is not None:
            left -= len(chunk)
        if chunk.arrival_ns is not None and base_ns is None:
            base_ns = int(chunk.arrival_ns[0])
        kept += len(chunk)
        yield _to_batch(chunk, base_ns, options.kind)
        if done:
            break
    if kept == 0:
        raise TraceError(path, None, None, "no requests in the selected window" if windowed else "no requests")


def _detect(path: Path):
    """`detect`, with a corrupt compressed file reported as one line like any other read."""
    return next(decompression_checked(path, (detect(path) for _ in range(1))))  # detect runs inside the check


def _to_batch(chunk: Chunk, base_ns: int | None, kind: str | None) -> pa.RecordBatch:
    n = len(chunk)
    arrival = pa.nulls(n, pa.float64()) if chunk.arrival_ns is None else pa.array((chunk.arrival_ns - base_ns) / 1e9)
    cols = {"id": chunk.id, "arrival_s": arrival,
            "input_tokens": pa.array(chunk.input_tokens), "output_tokens": pa.array(chunk.output_tokens)}
    for name in OPTIONAL:
        cols[name] = chunk.extra.get(name, pa.nulls(n, SCHEMA.field(name).type))
    if kind is not None:
        cols["kind"] = pa.repeat(pa.scalar(kind, pa.string()), n)
    return pa.record_batch([cols[c] for c in SCHEMA.names], schema=SCHEMA)


def read_trace(path: str | Path, options: ReadOptions = ReadOptions(), report: ReadReport | None = None) -> Workload:
    """Read and validate a whole trace (any supported format) into a `Workload`."""
    batches = list(canonical_batches(path, options, report))
    return Workload(pa.Table.from_batches(batches, schema=SCHEMA), source=str(path))
