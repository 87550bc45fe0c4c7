"""Vidur / Splitwise request CSVs (``arrived_at,num_prefill_tokens,num_decode_tokens``) and length-only CSVs.

Length-only CSVs such as ShareGPT statistics have ``num_prefill_tokens,num_decode_tokens`` and no times:
their requests get ``arrival_s`` null, and a run then needs an arrival process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from replay.trace.formats import csvfile
from replay.trace.formats.base import Chunk, Format, ReadReport

LENGTHS = ["num_prefill_tokens", "num_decode_tokens"]
TIMED = ["arrived_at", *LENGTHS]


def _read(path: Path, report: ReadReport, timed: bool) -> Iterator[Chunk]:
    header = csvfile.read_header(path)
    needed = TIMED if timed else LENGTHS
    csvfile.require_columns(path, header, needed, "Vidur/Splitwise" if timed else "length-only")
    types = {"arrived_at": pa.float64(), "num_prefill_tokens": pa.int64(), "num_decode_tokens": pa.int64()}
    for lines, cols in csvfile.iter_columns(path, header, needed, {c: types[c] for c in needed}):
        report.rows_read += len(lines)
        yield Chunk(
            line=lines,
            id=csvfile.row_ids(lines), ids_from_rows=True,
            input_tokens=csvfile.to_int(path, lines, cols["num_prefill_tokens"], "num_prefill_tokens"),
            output_tokens=csvfile.to_int(path, lines, cols["num_decode_tokens"], "num_decode_tokens"),
            arrival_ns=csvfile.to_seconds_ns(path, lines, cols["arrived_at"], "arrived_at") if timed else None,
        )


def read_timed(path: Path, report: ReadReport) -> Iterator[Chunk]:
    return _read(path, report, timed=True)


def read_lengths(path: Path, report: ReadReport) -> Iterator[Chunk]:
    return _read(path, report, timed=False)


SPLITWISE = Format("splitwise", "Vidur/Splitwise CSV (arrived_at,num_prefill_tokens,num_decode_tokens)", read_timed,
                   ("num_prefill_tokens", "num_decode_tokens", "arrived_at"))
LENGTHS_ONLY = Format("lengths", "length-only CSV (num_prefill_tokens,num_decode_tokens,...): no timing", read_lengths,
                      ("num_prefill_tokens", "num_decode_tokens", ""))
