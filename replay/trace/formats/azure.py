"""Azure LLM inference traces (Splitwise, ISCA 2024): ``TIMESTAMP,ContextTokens,GeneratedTokens``.

2023 form: 7-digit fractions, no time zone, CRLF, no final newline. 2024 form: time zone offsets, some rows
without a fraction. Which one is decided by the first row; times become ns since the epoch (UTC if zoned).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from replay.trace.formats import csvfile
from replay.trace.formats.base import Chunk, Format, ReadReport

COLUMNS = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
_ZONE = re.compile(r"\d:\d\d(:\d\d(\.\d*)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$")  # an offset after a time of day


def read(path: Path, report: ReadReport) -> Iterator[Chunk]:
    header = csvfile.read_header(path)
    csvfile.require_columns(path, header, COLUMNS, "Azure")
    with_zone = bool(_ZONE.search(csvfile.first_value(path, header, "TIMESTAMP")))
    types = {"TIMESTAMP": csvfile.timestamp_type(with_zone), "ContextTokens": pa.int64(), "GeneratedTokens": pa.int64()}
    for lines, cols in csvfile.iter_columns(path, header, COLUMNS, types):
        report.rows_read += len(lines)
        yield Chunk(
            line=lines,
            id=csvfile.row_ids(lines), ids_from_rows=True,
            input_tokens=csvfile.to_int(path, lines, cols["ContextTokens"], "ContextTokens"),
            output_tokens=csvfile.to_int(path, lines, cols["GeneratedTokens"], "GeneratedTokens"),
            arrival_ns=csvfile.to_timestamp_ns(path, lines, cols["TIMESTAMP"], "TIMESTAMP", with_zone),
        )


FORMAT = Format("azure", "Azure LLM inference trace CSV, 2023 or 2024 (TIMESTAMP,ContextTokens,GeneratedTokens)", read,
                ("ContextTokens", "GeneratedTokens", "TIMESTAMP"))
