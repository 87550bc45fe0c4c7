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
from replay.trace.formats.source import compression, open_bytes
from replay.trace.schema import TraceError, shown

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
                         f"expected a positive whole number of tokens, got {shown(arr[i].as_py())}", unit="row") from None


def _seekable(path: Path) -> Path | pa.BufferReader:
    """Parquet needs random access: a compressed file is decompressed into memory (plain files are not)."""
    if compression(path) is None:
        return path
    with open_bytes(path) as f:
        return pa.BufferReader(f.read())


def read(path: Path, report: ReadReport) -> Iterator[Chunk]:
    try:
        pf = pq.ParquetFile(_seekable(path))
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
        ids = _column(path, batch, "id", pa.string())
        if ids.null_count:
            i = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
            raise TraceError(path, int(rows[i]), "id", "missing; expected a string", unit="row")
        _first_row(path, rows, pc.equal(pc.binary_length(ids), 0), "id", "empty; expected a non-empty string")
        arrival = _column(path, batch, "arrival_s", pa.float64())
        if timed is None:
            timed = arrival.null_count < n  # timed: no nulls; untimed: nothing but nulls
        if arrival.null_count != (0 if timed else n):
            valid = arrival.is_valid().to_numpy(zero_copy_only=False)
            i = int(np.flatnonzero(valid != timed)[0])
            raise TraceError(path, int(rows[i]), "arrival_s",
                             "a trace is either timed on every row or on none", unit="row")
        arrival_ns = None
        if timed:
            secs = arrival.to_numpy()
            bad = ~(np.abs(secs) < 2.0 ** 63 / 1e9)  # NaN, infinities, and times int64 ns cannot hold
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise TraceError(path, int(rows[i]), "arrival_s", f"not a finite number: {secs[i]}", unit="row")
            arrival_ns = np.round(secs * 1e9).astype(np.int64)
        extra = {c: _column(path, batch, c, OPTIONAL_ARROW[c]) for c in optional}
        _check_blocks(path, rows, extra)
        yield Chunk(
            rows, ids,
            _ints(path, rows, batch.column("input_tokens"), "input_tokens"),
            _ints(path, rows, batch.column("output_tokens"), "output_tokens"),
            arrival_ns,
            extra,
        )


def _column(path: Path, batch: pa.RecordBatch, name: str, target: pa.DataType) -> pa.Array:
    """A column cast to its canonical type; a column of the wrong type names itself."""
    try:
        return pc.cast(batch.column(name), target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise TraceError(path, None, name, f"column of type {batch.column(name).type} cannot be read as "
                                           f"{target}: {exc}") from None


def _first_row(path: Path, rows: np.ndarray, bad: pa.Array, field: str, message: str) -> None:
    """Raise for the first row where `bad` is true (nulls count as fine)."""
    hits = np.flatnonzero(pc.fill_null(bad, False).to_numpy(zero_copy_only=False))
    if len(hits):
        raise TraceError(path, int(rows[hits[0]]), field, message, unit="row")


def _check_blocks(path: Path, rows: np.ndarray, extra: dict[str, pa.Array]) -> None:
    """What the JSON Lines reader also demands: positive block sizes, and a size wherever blocks are given."""
    block_tokens = extra.get("block_tokens")
    if block_tokens is not None:
        _first_row(path, rows, pc.less_equal(block_tokens, 0), "block_tokens", "expected a positive whole number")
    blocks = extra.get("prefix_blocks")
    if blocks is not None:
        has_size = block_tokens.is_valid() if block_tokens is not None else pa.repeat(False, len(blocks))
        _first_row(path, rows, pc.and_(blocks.is_valid(), pc.invert(has_size)), "block_tokens",
                   "missing; prefix_blocks needs the tokens per block")
        if pc.list_flatten(blocks).null_count:
            _first_row(path, rows, pa.array([b is not None and None in b for b in blocks.to_pylist()]),
                       "prefix_blocks", "expected a list of whole numbers, got a null in it")


FORMAT = Format("parquet", "canonical replay trace, Parquet (same columns as the JSON Lines form)", read,
                unit="row")
