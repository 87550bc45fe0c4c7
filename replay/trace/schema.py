"""The canonical trace: one request per row, its Arrow schema, and the error every reader raises.

Columns (see README "Canonical trace format"): ``id``, ``arrival_s`` (seconds from the trace's first
request, null where the source has no timing), ``input_tokens``, ``output_tokens`` (positive ints), and the
optional ``kind``, ``session_id``, ``prefix_blocks`` (ids of shared prefix blocks) and ``block_tokens``.
Arrival times are kept at nanosecond resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("arrival_s", pa.float64()),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("kind", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("prefix_blocks", pa.list_(pa.int64())),
        pa.field("block_tokens", pa.int64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
REQUIRED = ("id", "arrival_s", "input_tokens", "output_tokens")
OPTIONAL = tuple(c for c in COLUMNS if c not in REQUIRED)


SHOWN_CHARS = 80  # a bad value quoted in an error is cut to this many characters


def shown(value: object, limit_chars: int = SHOWN_CHARS) -> str:
    """`repr(value)` for an error line, cut to `limit_chars` with its full length when longer.

    Traces can hold a 100,000-character field; an error must stay one readable line whatever the input.
    """
    text = repr(value)
    if len(text) <= limit_chars:
        return text
    length = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters as written"
    return f"{text[:limit_chars]}... ({length})"


class TraceError(ValueError):
    """Bad trace input, located: the file, the line (or row) and the field, and what was expected."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str, unit: str = "line"):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else (f"{self.path}:{line}" if unit == "line" else f"{self.path}: {unit} {line}")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace: when it arrived and how many tokens went in and came out."""

    id: str
    arrival_s: float | None
    input_tokens: int
    output_tokens: int
    kind: str | None = None
    session_id: str | None = None
    prefix_blocks: tuple[int, ...] | None = None
    block_tokens: int | None = None


@dataclass(frozen=True)
class Workload:
    """An ordered, validated trace held as a columnar table (cheap for millions of requests).

    Build one with ``replay.trace.read_trace`` (which validates) or ``Workload.from_requests``.
    """

    table: pa.Table
    source: str = ""

    def __post_init__(self) -> None:
        if self.table.schema != SCHEMA:
            object.__setattr__(self, "table", self.table.select(list(COLUMNS)).cast(SCHEMA))

    @classmethod
    def from_requests(cls, requests, source: str = "") -> "Workload":
        rows = [
            {**{c: getattr(r, c) for c in COLUMNS},
             "prefix_blocks": list(r.prefix_blocks) if r.prefix_blocks is not None else None}
            for r in requests
        ]
        return cls(pa.Table.from_pylist(rows, schema=SCHEMA), source)

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[Request]:
        for batch in self.table.to_batches():
            cols = [batch.column(c).to_pylist() for c in COLUMNS]
            for row in zip(*cols):
                blocks = row[6]
                yield Request(*row[:6], tuple(blocks) if blocks is not None else None, row[7])

    def __getitem__(self, i: int) -> Request:
        row = self.table.slice(i % len(self) if i < 0 else i, 1).to_pylist()
        if not row:
            raise IndexError(i)
        r = row[0]
        blocks = r["prefix_blocks"]
        r["prefix_blocks"] = tuple(blocks) if blocks is not None else None
        return Request(**r)

    @property
    def timed(self) -> bool:
        """True when every request has an arrival time (length-only sources have none)."""
        return len(self) > 0 and self.table.column("arrival_s").null_count == 0

    @property
    def arrival_s(self) -> np.ndarray:
        return self.table.column("arrival_s").to_numpy(zero_copy_only=False)

    @property
    def input_tokens(self) -> np.ndarray:
        return self.table.column("input_tokens").to_numpy()

    @property
    def output_tokens(self) -> np.ndarray:
        return self.table.column("output_tokens").to_numpy()
