"""Streaming CSV reading shared by the CSV formats: pyarrow batches, exact source lines, located errors.

Every column is read as text and converted here, so a bad value is reported with its file, line and
field rather than as a generic parse failure. Blank lines are skipped (line numbers stay exact).
"""

from __future__ import annotations

import csv
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from replay.trace.formats.base import first_bad
from replay.trace.formats.source import arrow_stream, open_bytes, open_text
from replay.trace.schema import TraceError, shown

BLOCK_BYTES = 1 << 20  # 1 MiB: peak memory stays flat (8 MiB blocks peaked 2x higher, no faster)


class _RowOverBlock(Exception):
    """pyarrow met a row longer than its read block; reading restarts with a block that holds it."""


@contextmanager
def _unlimited_fields() -> Iterator[None]:
    """Python's csv module refuses fields over 128 KiB; a trace may carry a whole prompt in one."""
    before = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _csv_row(text: str) -> list[str]:
    with _unlimited_fields():
        return next(csv.reader([text]), [])


def read_header(path: Path) -> list[str]:
    """The header's column names (BOM and surrounding spaces stripped); empty files are an error."""
    with open_bytes(path) as f:
        raw = f.readline()
    if not raw.strip():
        raise TraceError(path, None if not raw else 1, None, "empty file: expected a CSV header and rows")
    text = raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    return [c.strip() for c in _csv_row(text)]


def require_columns(path: Path, header: list[str], needed: list[str], fmt: str) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise TraceError(
            path, 1, missing[0],
            f"missing column for the {fmt} format; expected columns {', '.join(needed)}, "
            f"the header has {', '.join(header) or '(nothing)'}",
        )


def iter_columns(path: Path, header: list[str], columns: list[str],
                 types: dict[str, pa.DataType] | None = None) -> Iterator[tuple[np.ndarray, dict[str, pa.Array]]]:
    """Yield (source lines, {column: values}) per block of rows, blank lines dropped.

    With `types`, blocks are converted by pyarrow directly (the fast path); at the first block that does
    not convert cleanly, reading goes on from that block as trimmed text, which the `to_*` helpers below
    convert with located errors. Without `types`, everything is read as text. A row longer than the read
    block (a prompt in a column, say) restarts reading where it stopped, with a block that holds it.
    """
    block_bytes, done = BLOCK_BYTES, 0  # done: data rows already yielded
    while True:
        try:
            for lines, cols in _columns(path, header, columns, types, done, block_bytes):
                yield lines, cols
                done += len(lines)
            return
        except _RowOverBlock:
            needed = _block_for_longest_line(path)
            if needed <= block_bytes:  # pragma: no cover (pyarrow straddled a row that fits: give up, located)
                raise TraceError(path, None, None, f"unreadable CSV: a row does not fit a {block_bytes}-byte "
                                                   "block") from None
            block_bytes = needed


def _columns(path: Path, header: list[str], columns: list[str], types: dict[str, pa.DataType] | None,
             done: int, block_bytes: int) -> Iterator[tuple[np.ndarray, dict[str, pa.Array]]]:
    """`iter_columns` from data row `done` on with one block size: typed blocks, then text from the first bad."""
    if types:
        try:
            for lines, cols in _blocks(path, header, columns, types, done, block_bytes):
                if any(c.null_count for c in cols.values()):
                    break
                yield lines, cols
                done += len(lines)
            else:
                return
        except pa.ArrowInvalid:
            pass
    for lines, cols in _blocks(path, header, columns, None, done, block_bytes):
        cols = {c: pc.utf8_trim_whitespace(a) for c, a in cols.items()}
        blank = np.ones(len(lines), dtype=bool)
        for arr in cols.values():
            blank &= pc.equal(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False)
        if blank.any():
            keep = pa.array(np.flatnonzero(~blank))
            lines = lines[~blank]
            cols = {c: a.take(keep) for c, a in cols.items()}
        if len(lines):
            yield lines, cols


def _blocks(path: Path, header: list[str], columns: list[str], types: dict[str, pa.DataType] | None,
            skip: int, block_bytes: int) -> Iterator[tuple[np.ndarray, dict[str, pa.Array]]]:
    """Raw pyarrow blocks after the header and `skip` data rows, with each row's line number."""
    column_types = dict(types) if types else {c: pa.string() for c in header}
    # pyarrow's skip_rows must fit in its first block, so later starts begin at the line's byte offset instead
    offset = 0
    if skip:
        offset = _line_offset(path, 1 + skip)
        if not _has_text_from(path, offset):  # only blank lines are left
            return
    source = arrow_stream(path, offset)  # decompressed, whatever the file's compression
    skip_rows = 0 if skip else 1
    try:  # open_csv already parses the first block, so a bad row there raises here
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=block_bytes, column_names=header, skip_rows=skip_rows),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=column_types,
                                                 strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        source.close()
        raise _parse_error(path, header, exc, types) from None
    line0 = 2 + skip
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise _parse_error(path, header, exc, types) from None
            n = batch.num_rows
            yield np.arange(line0, line0 + n, dtype=np.int64), {c: batch.column(c) for c in columns}
            line0 += n
    finally:
        source.close()


def _line_offset(path: Path, lines: int) -> int:
    """Byte offset at which line `lines` + 1 starts (just after the `lines`-th newline)."""
    pos = 0
    with open_bytes(path) as f:
        while buf := f.read(1 << 24):
            newlines = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == ord("\n"))
            if len(newlines) >= lines:
                return pos + int(newlines[lines - 1]) + 1
            lines -= len(newlines)
            pos += len(buf)
    return pos


def _has_text_from(path: Path, offset: int) -> bool:
    with arrow_stream(path, offset) as f:  # a compressed file decompresses up to here
        while buf := f.read(1 << 20):
            if buf.strip():
                return True
    return False


def _block_for_longest_line(path: Path) -> int:
    """A pyarrow block size (a power of two) that holds the file's longest line twice over."""
    longest, pos, start = 0, 0, 0
    with open_bytes(path) as f:
        while buf := f.read(1 << 24):
            ends = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == ord("\n")) + pos
            if len(ends):
                longest = max(longest, int(ends[0]) - start, int(np.diff(ends).max(initial=0)))
                start = int(ends[-1])
            pos += len(buf)
    longest = max(longest, pos - start)
    return 1 << (2 * longest + 1).bit_length()


def _parse_error(path: Path, header: list[str], exc: pa.ArrowInvalid,
                 types: dict[str, pa.DataType] | None) -> Exception:
    """What to raise for a pyarrow parse failure: a retry signal, the typed pass's own error, or a located one."""
    if "straddling" in str(exc):
        return _RowOverBlock()
    if types:
        return exc  # the typed pass falls back to text, which locates the problem
    return _locate_parse_error(path, header, exc)


def _locate_parse_error(path: Path, header: list[str], exc: Exception) -> TraceError:
    """Find the first line that is not UTF-8 or has the wrong field count (error path only)."""
    with open_bytes(path) as f, _unlimited_fields():
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as bad:
                return _not_utf8(path, header, line_no, raw, bad)
            row = next(csv.reader([text.rstrip("\r\n")]), [])
            if row and len(row) != len(header):
                return TraceError(path, line_no, None, f"expected {len(header)} comma-separated fields, got {len(row)}")
    return TraceError(path, None, None, f"unreadable CSV: {exc}")


def _not_utf8(path: Path, header: list[str], line_no: int, raw: bytes, bad: UnicodeDecodeError) -> TraceError:
    """The located error for a line with bytes that are not UTF-8, naming the field that holds them."""
    fields = _csv_row(raw.decode("utf-8", errors="surrogateescape").rstrip("\r\n"))
    hit = next((i for i, x in enumerate(fields) if re.search("[\udc80-\udcff]", x)), None)
    field = header[hit] if hit is not None and hit < len(header) else None
    return TraceError(path, line_no, field, f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at byte {bad.start + 1} "
                                            "of the line); the trace must be UTF-8 text")


def to_int(path: Path, lines: np.ndarray, values: pa.Array, field: str) -> np.ndarray:
    """Whole numbers from text ('44' and '44.0' both read as 44); anything else names its line."""
    if pa.types.is_integer(values.type):
        return values.to_numpy()
    try:
        return pc.cast(values, pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        pass
    try:
        as_float = pc.cast(values, pa.float64()).to_numpy()
        if np.all(np.abs(as_float) < _INT64_LIMIT) and np.all(as_float == np.round(as_float)):
            return as_float.astype(np.int64)
    except pa.ArrowInvalid:
        pass
    for i, text in enumerate(values.to_pylist()):
        why = int_problem(text)
        if why:
            raise TraceError(path, int(lines[i]), field, why)
    raise AssertionError("unreachable: a value failed to convert but none was found")  # pragma: no cover


_INT64_LIMIT = 2.0 ** 63
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)  # numbers as pyarrow reads them


def int_problem(text: object) -> str | None:
    """Why `text` is not a whole number of tokens, or None if it is one."""
    if text is None or text == "":
        return "missing value; expected a positive whole number of tokens"
    if isinstance(text, bool) or (isinstance(text, str) and not _DECIMAL.fullmatch(text)):
        return f"expected a whole number of tokens, got {shown(text)}"
    if isinstance(text, int):
        return None if abs(text) < 2 ** 63 else f"token count {shown(text)} is too large"
    try:
        x = float(text)
    except (TypeError, ValueError, OverflowError):
        return f"expected a whole number of tokens, got {shown(text)}"
    if x != x or x in (float("inf"), float("-inf")):
        return f"expected a whole number of tokens, got {shown(text)}"
    if abs(x) >= _INT64_LIMIT:
        return f"token count {shown(text)} is too large"
    if x != int(x):
        return f"fractional token count {shown(text)}; expected a whole number"
    return None


def to_seconds_ns(path: Path, lines: np.ndarray, values: pa.Array, field: str) -> np.ndarray:
    """Times in (float) seconds as text -> int64 ns; non-numbers, NaN and infinities name their line."""
    try:
        secs = pc.cast(values, pa.float64()).to_numpy()  # typed columns (the fast path) pass straight through
    except pa.ArrowInvalid:
        i = first_bad(values, lambda a: pc.cast(a, pa.float64()))
        raise TraceError(path, int(lines[i]), field,
                         f"unparsable time {shown(values[i].as_py())}; expected seconds as a number") from None
    bad = ~(np.abs(secs) < _INT64_LIMIT / 1e9)  # NaN, infinities, and times int64 ns cannot hold
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TraceError(path, int(lines[i]), field, f"time {shown(values[i].as_py())} is not a finite number of seconds "
                                                     "within range")
    return np.round(secs * 1e9).astype(np.int64)


def to_timestamp_ns(path: Path, lines: np.ndarray, values: pa.Array, field: str, with_zone: bool) -> np.ndarray:
    """ISO timestamps as text -> int64 ns since the epoch (UTC when the text carries a zone offset)."""
    target = timestamp_type(with_zone)
    if pa.types.is_timestamp(values.type):
        return values.cast(pa.int64()).to_numpy()
    try:
        return pc.cast(values, target).cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        i = first_bad(values, lambda a: pc.cast(a, target))
        text = values[i].as_py()
        if text == "":
            why = "missing timestamp"
        elif with_zone:
            why = f"unparsable timestamp {shown(text)}; expected like '2024-05-10 00:00:00.009930+00:00' " \
                  "(the file's first row has a time zone, so every row needs one)"
        else:
            why = f"unparsable timestamp {shown(text)}; expected like '2023-11-16 18:15:46.6805900' " \
                  "(the file's first row has no time zone, so no row may have one)"
        raise TraceError(path, int(lines[i]), field, why) from None


def timestamp_type(with_zone: bool) -> pa.DataType:
    return pa.timestamp("ns", "UTC") if with_zone else pa.timestamp("ns")


def first_value(path: Path, header: list[str], column: str) -> str:
    """The text of `column` in the first non-blank data row ('' if there is none)."""
    with open_text(path) as f, _unlimited_fields():
        rows = csv.reader(f)
        next(rows, None)
        for row in rows:
            if any(x.strip() for x in row):
                return row[header.index(column)].strip() if len(row) == len(header) else ""
    return ""


def row_ids(lines: np.ndarray, first_data_line: int = 2) -> pa.Array:
    """Request ids for sources without any: the 0-based data row ("0", "1", ...), stable under windowing."""
    return pc.cast(pa.array(lines - first_data_line), pa.string())

