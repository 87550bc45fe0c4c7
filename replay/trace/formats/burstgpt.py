"""BurstGPT CSV: ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``.

Newer files insert ``Session ID,Elapsed time`` as columns 2-3, so columns are read by name. Timestamp is in
seconds from the trace start. Rows with 0 response tokens are failed requests: excluded and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc


from replay.trace.formats import csvfile
from replay.trace.formats.base import Chunk, Format, ReadReport

COLUMNS = ["Timestamp", "Request tokens", "Response tokens"]
FAILED = "failed request (0 response tokens)"


def read(path: Path, report: ReadReport) -> Iterator[Chunk]:
    header = csvfile.read_header(path)
    csvfile.require_columns(path, header, COLUMNS, "BurstGPT")
    wanted = COLUMNS + (["Session ID"] if "Session ID" in header else [])
    types = {"Timestamp": pa.float64(), "Request tokens": pa.int64(), "Response tokens": pa.int64(),
             "Session ID": pa.string()}
    for lines, cols in csvfile.iter_columns(path, header, wanted, {c: types[c] for c in wanted}):
        report.rows_read += len(lines)
        out = csvfile.to_int(path, lines, cols["Response tokens"], "Response tokens")
        chunk = Chunk(
            line=lines,
            id=csvfile.row_ids(lines), ids_from_rows=True,
            input_tokens=csvfile.to_int(path, lines, cols["Request tokens"], "Request tokens"),
            output_tokens=out,
            arrival_ns=csvfile.to_seconds_ns(path, lines, cols["Timestamp"], "Timestamp"),
            extra={"session_id": _session_ids(cols["Session ID"])} if "Session ID" in cols else {},
        )
        if report.first_arrival_ns is None and len(lines):
            report.first_arrival_ns = int(chunk.arrival_ns[0])  # the window's origin, even if this row failed
        failed = out == 0
        report.exclude(FAILED, failed.sum())
        yield chunk.take(~failed) if failed.any() else chunk


def _session_ids(values: pa.Array) -> pa.Array:
    """Trimmed session ids; an empty one means none (null)."""
    values = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(pc.binary_length(values), 0), pa.scalar(None, pa.string()), values)


FORMAT = Format("burstgpt", "BurstGPT CSV, either column layout (failed requests excluded and counted)", read,
                ("Request tokens", "Response tokens", "Timestamp"))
