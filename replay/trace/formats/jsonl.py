"""JSON Lines traces: the canonical form (``input_tokens``...) and Mooncake / vLLM timed traces.

Mooncake: ``{"timestamp": ms, "input_length": n, "output_length": n, "hash_ids": [...]}``; each hash id names
a 512-token prefix block and equal ids mean a shared prefix, kept as ``prefix_blocks``.
Parsed line by line so that every error names its line; blank lines are skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from replay.trace.formats.base import OPTIONAL_ARROW, Chunk, Format, ReadReport
from replay.trace.formats.csvfile import int_problem
from replay.trace.formats.source import open_bytes
from replay.trace.schema import OPTIONAL, TraceError, shown

ROWS_PER_CHUNK = 65536
MOONCAKE_BLOCK_TOKENS = 512


def iter_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, object) for each non-blank line; bad JSON or a non-object names its line."""
    seen = False
    with open_bytes(path) as f:  # decompressed, whatever the file's compression
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError as exc:
                raise TraceError(path, line_no, None, f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at byte "
                                                      f"{exc.start + 1} of the line); the trace must be UTF-8 text") from None
            except json.JSONDecodeError as exc:
                msg = exc.msg
                raise TraceError(path, line_no, None, f"not valid JSON ({msg}); expected one JSON object per line") from None
            if not isinstance(obj, dict):
                raise TraceError(path, line_no, None, f"expected a JSON object, got {type(obj).__name__}")
            seen = True
            yield line_no, obj
    if not seen:
        raise TraceError(path, None, None, "empty file: expected one JSON object per line")


def _count(path: Path, line: int, obj: dict, key: str) -> int:
    if key not in obj:
        raise TraceError(path, line, key, "missing; expected a positive whole number of tokens")
    value = obj[key]
    why = int_problem(value) if not isinstance(value, str) else f"expected a number, got the string {shown(value)}"
    if why:
        raise TraceError(path, line, key, why)
    return int(value)


def _seconds(path: Path, line: int, value: object, key: str, scale_ns: float) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TraceError(path, line, key, f"expected a number (or null), got {shown(value)}")
    ns = value * scale_ns
    if not abs(ns) < 2.0 ** 63:  # int64 nanoseconds: about 292 years
        raise TraceError(path, line, key, f"time {shown(value)} is out of range")
    return round(ns)


def _text(path: Path, line: int, obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise TraceError(path, line, key, f"expected a string (or null), got {shown(value)}")
    return value


def _blocks(path: Path, line: int, value: object, key: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or any(isinstance(b, bool) or not isinstance(b, int) or not -2 ** 63 <= b < 2 ** 63
                                          for b in value):
        raise TraceError(path, line, key, f"expected a list of whole numbers (or null), got {shown(value)}")
    return value


class _Rows:
    """Columns accumulated row by row, emitted as a `Chunk` every ROWS_PER_CHUNK rows."""

    def __init__(self, path: Path, optional: tuple[str, ...], time_field: str):
        self.path, self.optional, self.time_field = path, optional, time_field
        self.reset()
        self.timed: bool | None = None
        self.first_line = 0

    def reset(self) -> None:
        self.line, self.id, self.inp, self.out, self.arr = [], [], [], [], []
        self.extra = {k: [] for k in self.optional}

    def add(self, line: int, id_: str, inp: int, out: int, arrival_ns: int | None, **extra) -> None:
        timed = arrival_ns is not None
        if self.timed is None:
            self.timed, self.first_line = timed, line
        elif timed != self.timed:
            had = "has an arrival time" if self.timed else "has none"
            raise TraceError(self.path, line, self.time_field,
                             f"{'missing' if not timed else 'unexpected'} arrival time: line {self.first_line} "
                             f"{had}, and a trace is either timed on every line or on none")
        self.line.append(line), self.id.append(id_), self.inp.append(inp), self.out.append(out)
        self.arr.append(arrival_ns)
        for k, v in extra.items():
            self.extra[k].append(v)

    def chunk(self) -> Chunk:
        c = Chunk(
            np.array(self.line, dtype=np.int64), pa.array(self.id, pa.string()),
            np.array(self.inp, dtype=np.int64), np.array(self.out, dtype=np.int64),
            np.array(self.arr, dtype=np.int64) if self.timed else None,
            {k: pa.array(v, OPTIONAL_ARROW[k]) for k, v in self.extra.items()},
        )
        self.reset()
        return c


def _read_rows(path: Path, report: ReadReport, optional: tuple[str, ...], time_field: str,
               parse: Callable[[int, dict, _Rows], None]) -> Iterator[Chunk]:
    rows = _Rows(path, optional, time_field)
    for line, obj in iter_objects(path):
        report.rows_read += 1
        parse(line, obj, rows)
        if len(rows.line) >= ROWS_PER_CHUNK:
            yield rows.chunk()
    if rows.line:
        yield rows.chunk()


def _canonical_row(path: Path):
    def parse(line: int, obj: dict, rows: _Rows) -> None:
        if "id" not in obj:
            raise TraceError(path, line, "id", "missing; expected a string")
        id_ = obj["id"]
        if not isinstance(id_, str) or not id_:
            raise TraceError(path, line, "id", f"expected a non-empty string, got {shown(id_)}")
        if "arrival_s" not in obj:
            raise TraceError(path, line, "arrival_s", "missing; expected seconds from the first request, or null")
        blocks = _blocks(path, line, obj.get("prefix_blocks"), "prefix_blocks")
        block_tokens = obj.get("block_tokens")
        if block_tokens is not None and (int_problem(block_tokens) or isinstance(block_tokens, str) or block_tokens <= 0):
            raise TraceError(path, line, "block_tokens", f"expected a positive whole number, got {shown(block_tokens)}")
        if blocks is not None and block_tokens is None:
            raise TraceError(path, line, "block_tokens", "missing; prefix_blocks needs the tokens per block")
        rows.add(
            line, id_, _count(path, line, obj, "input_tokens"), _count(path, line, obj, "output_tokens"),
            _seconds(path, line, obj["arrival_s"], "arrival_s", 1e9),
            kind=_text(path, line, obj, "kind"), session_id=_text(path, line, obj, "session_id"),
            prefix_blocks=blocks, block_tokens=None if block_tokens is None else int(block_tokens),
        )
    return parse


def read_canonical(path: Path, report: ReadReport) -> Iterator[Chunk]:
    return _read_rows(path, report, OPTIONAL, "arrival_s",
                      _canonical_row(path))


def read_mooncake(path: Path, report: ReadReport) -> Iterator[Chunk]:
    def parse(line: int, obj: dict, rows: _Rows) -> None:
        if "timestamp" not in obj:
            raise TraceError(path, line, "timestamp", "missing; expected milliseconds")
        arrival = _seconds(path, line, obj["timestamp"], "timestamp", 1e6)
        if arrival is None:
            raise TraceError(path, line, "timestamp", "null; expected milliseconds")
        blocks = _blocks(path, line, obj.get("hash_ids"), "hash_ids")
        rows.add(line, str(report.rows_read - 1), _count(path, line, obj, "input_length"),
                 _count(path, line, obj, "output_length"), arrival, prefix_blocks=blocks,
                 block_tokens=MOONCAKE_BLOCK_TOKENS if blocks is not None else None)
    return _read_rows(path, report, ("prefix_blocks", "block_tokens"), "timestamp", parse)


CANONICAL = Format("jsonl", "canonical replay trace, JSON Lines (id, arrival_s, input_tokens, output_tokens, ...)",
                   read_canonical)
MOONCAKE = Format("mooncake", "Mooncake / vLLM timed trace JSONL (timestamp ms, input_length, output_length, hash_ids)",
                  read_mooncake, ("input_length", "output_length", "timestamp"))
