"""Canonical traces in Parquet (the same columns as the JSON Lines form), read in row batches.

Errors name the row (1-based) instead of a line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from replay.trace.formats.base import OPTIONAL_ARROW, Chunk, Format, ReadReport, first_bad
from replay.trace.schema import TraceError

BATCH_ROWS = 1 << 20


def _ints(path: Path, rows: np.ndarray, arr: pa.Array, field: str) -> np.ndarray:
    def cast(a: pa.Array) -> pa.Array:
        if a.null_count:
            raise ValueError("null")
        return pc.cast(a, pa.int64())  # safe cast: fractional floats fail
    try:
        return cast(arr).to_numpy()
    except (pa.ArrowInvalid, ValueError):
        i = first_bad(arr, cast)
        raise TraceError(path, int(rows[i]), field,
                         f"expected a positive whole number of tokens, got {arr[i].as_py()!r}", unit="row") from None


def read(path: Path, report: ReadReport) -> Iterator[Chunk]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceError(path, None, None, f"not a readable Parquet file: {exc}") from None
    names = pf.schema_arrow.names
    for col in ("id", "arrival_s", "input_tokens", "output_tokens"):
        if col not in names:
            raise TraceError(path, None, col, f"missing column; the file has {', '.join(names)}")
    if pf.metadata.num_rows == 0:
        raise TraceError(path, None, None, "empty file: no requests")
    optional = [c for c in OPTIONAL_ARROW if c in names]
    row0 = 1
    timed: bool | None = None
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=["id", "arrival_s", "input_tokens", "output_tokens", *optional]):
        n = batch.num_rows
        rows = np.arange(row0, row0 + n, dtype=np.int64)
        row0 += n
        report.rows_read += n
        ids = pc.cast(batch.column("id"), pa.string())
        if ids.null_count:
            i = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
            raise TraceError(path, int(rows[i]), "id", "missing; expected a string", unit="row")
        arrival = pc.cast(batch.column("arrival_s"), pa.float64())
        if timed is None:
            timed = arrival.null_count == 0
        if (arrival.null_count == 0) != timed or (timed and arrival.null_count):
            valid = arrival.is_valid().to_numpy(zero_copy_only=False)
            i = int(np.flatnonzero(valid != timed)[0])
            raise TraceError(path, int(rows[i]), "arrival_s",
                             "a trace is either timed on every row or on none", unit="row")
        arrival_ns = None
        if timed:
            secs = arrival.to_numpy()
            if not np.all(np.isfinite(secs)):
                i = int(np.flatnonzero(~np.isfinite(secs))[0])
                raise TraceError(path, int(rows[i]), "arrival_s", f"not a finite number: {secs[i]}", unit="row")
            arrival_ns = np.round(secs * 1e9).astype(np.int64)
        yield Chunk(
            rows, ids,
            _ints(path, rows, batch.column("input_tokens"), "input_tokens"),
            _ints(path, rows, batch.column("output_tokens"), "output_tokens"),
            arrival_ns,
            {c: pc.cast(batch.column(c), OPTIONAL_ARROW[c]) for c in optional},
        )


FORMAT = Format("parquet", "canonical replay trace, Parquet (same columns as the JSON Lines form)", read)
