"""What every reader yields: a `Chunk` of parsed rows with their source lines, and a `ReadReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from replay.trace.schema import OPTIONAL, SCHEMA, TraceError

OPTIONAL_ARROW = {name: SCHEMA.field(name).type for name in OPTIONAL}  # the optional columns' Arrow types


@dataclass
class Chunk:
    """Rows parsed from a source, in file order, before windowing and rebasing.

    ``line`` is each row's 1-based line in the file (row number for Parquet); ``arrival_ns`` is an absolute
    time in ns on the source's own clock, or None when the source has no timing. ``ids_from_rows``: the source
    has no ids and ``id`` holds row numbers, so they need no uniqueness check.
    """

    line: np.ndarray
    id: pa.Array
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_ns: np.ndarray | None
    extra: dict[str, pa.Array] = field(default_factory=dict)
    ids_from_rows: bool = False       # ids made from row numbers (csvfile.row_ids): unique by construction

    def __len__(self) -> int:
        return len(self.line)

    def take(self, index: np.ndarray) -> "Chunk":
        """Rows picked by a boolean mask or an index array."""
        idx = pa.array(np.flatnonzero(index) if index.dtype == bool else index)
        return Chunk(
            self.line[index], self.id.take(idx), self.input_tokens[index], self.output_tokens[index],
            None if self.arrival_ns is None else self.arrival_ns[index],
            {k: v.take(idx) for k, v in self.extra.items()}, self.ids_from_rows,
        )

    @staticmethod
    def concat(chunks: list["Chunk"]) -> "Chunk":
        first = chunks[0]
        return Chunk(
            np.concatenate([c.line for c in chunks]),
            pa.concat_arrays([c.id for c in chunks]),
            np.concatenate([c.input_tokens for c in chunks]),
            np.concatenate([c.output_tokens for c in chunks]),
            None if first.arrival_ns is None else np.concatenate([c.arrival_ns for c in chunks]),
            {k: pa.concat_arrays([c.extra[k] for c in chunks]) for k in first.extra},
            all(c.ids_from_rows for c in chunks),
        )


@dataclass
class ReadReport:
    """What a read saw besides the rows it kept: exclusions by reason, and warnings."""

    path: str
    format: str = ""
    rows_read: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    first_arrival_ns: int | None = None  # set by readers that exclude rows: the source's first time, kept or not

    def exclude(self, reason: str, n: int) -> None:
        if n:
            self.excluded[reason] = self.excluded.get(reason, 0) + int(n)


@dataclass(frozen=True)
class Format:
    """A readable trace format: a name, a one-line description, a reader of `Chunk`s, and what the source
    calls its input-token, output-token and time fields (for error messages)."""

    name: str
    description: str
    read: Callable[[Path, ReadReport], Iterator[Chunk]]
    fields: tuple[str, str, str] = ("input_tokens", "output_tokens", "arrival_s")
    unit: str = "line"  # what `Chunk.line` counts, for error messages ("row" for Parquet)


def first_bad(values: pa.Array, convert: Callable[[pa.Array], object]) -> int:
    """Index of the first element that `convert` rejects (binary search over prefixes; error path only)."""
    lo, hi = 0, len(values)  # invariant: values[:lo] converts, values[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(values.slice(0, mid))
            lo = mid
        except (pa.ArrowInvalid, ValueError):
            hi = mid
    return lo if hi - lo == 1 and lo < len(values) else 0


def where_first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def check_counts(path: Path, chunk_line: np.ndarray, values: np.ndarray, field_name: str, unit: str = "line") -> None:
    """Token counts must be positive whole numbers: name the first line that is not."""
    i = where_first(values <= 0)
    if i is not None:
        v = int(values[i])
        why = "zero tokens" if v == 0 else f"negative token count {v}"
        raise TraceError(path, int(chunk_line[i]), field_name, f"{why}; expected a positive whole number", unit)
