"""Opening a trace file whatever its outer compression: plain, gzip or zstd, told from the first bytes.

Public traces ship compressed (``trace.csv.gz``), so every reader opens its file through here and sees the
decompressed bytes; like the format, the compression is read from the content, never the name. pyarrow's
codecs do the work (no new dependency), for pyarrow's CSV reader and for Python-level line reading alike.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa

from replay.trace.schema import TraceError

MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}  # leading bytes -> pyarrow codec name
READ_BYTES = 1 << 20  # buffer for Python-level reading, and the step when skipping into a compressed stream


def compression(path: Path) -> str | None:
    """The codec `path` is compressed with ('gzip', 'zstd'), or None for a plain file."""
    with open(path, "rb") as f:
        head = f.read(4)
    return next((codec for magic, codec in MAGIC.items() if head.startswith(magic)), None)


def open_bytes(path: Path) -> BinaryIO:
    """The file's decompressed bytes as a buffered binary file (lines, read, readline)."""
    codec = compression(path)
    if codec is None:
        return open(path, "rb")
    return io.BufferedReader(pa.input_stream(str(path), compression=codec), buffer_size=READ_BYTES)


def open_text(path: Path) -> io.TextIOWrapper:
    """The decompressed file as text for Python's csv module: UTF-8 (BOM dropped), undecodable bytes replaced."""
    return io.TextIOWrapper(open_bytes(path), encoding="utf-8-sig", errors="replace", newline="")


def arrow_stream(path: Path, skip_bytes: int = 0) -> pa.NativeFile:
    """A pyarrow input stream of the decompressed bytes from `skip_bytes` on (compressed: read past them)."""
    codec = compression(path)
    stream = pa.input_stream(str(path), compression=codec)
    if codec is None:
        stream.seek(skip_bytes)
        return stream
    while skip_bytes > 0:
        got = len(stream.read(min(skip_bytes, READ_BYTES)))
        if not got:
            break
        skip_bytes -= got
    return stream


def decompression_checked(path: Path, items: Iterator) -> Iterator:
    """`items`, with a corrupt or truncated compressed file turned into one line naming the file."""
    codec = compression(path)
    if codec is None:
        yield from items
        return
    try:
        yield from items
    except (OSError, EOFError) as exc:
        raise TraceError(path, None, None, f"cannot decompress ({codec}): {exc}; is the file complete?") from None
