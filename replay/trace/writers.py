"""Canonical trace writers (JSON Lines, Parquet), streaming and atomic: a failed write leaves no file.

JSON Lines are formatted column-wise with pyarrow, so one writer serves every trace size and the output is
byte-identical whichever path produced the rows: floats in their shortest round-trip form, compact
separators, optional fields present only where set.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from replay.trace.schema import OPTIONAL, SCHEMA, Workload

_NEEDS_ESCAPE = r'["\\\x00-\x1f]'
PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
ROWS_PER_WRITE = 1 << 20  # JSON Lines are formatted this many rows at a time (a whole --sort trace is one batch)


class BatchWriter(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...
    def close(self) -> None: ...


def _quoted(arr: pa.Array) -> pa.Array:
    """JSON string literals for a string array (nulls stay null)."""
    if pc.any(pc.match_substring_regex(arr, _NEEDS_ESCAPE)).as_py():
        return pa.array([None if s is None else json.dumps(s, ensure_ascii=False) for s in arr.to_pylist()], pa.string())
    return pc.binary_join_element_wise('"', arr, '"', "")


def _blocks_text(arr: pa.Array) -> pa.Array:
    return pa.array([None if b is None else "[" + ",".join(map(str, b)) + "]" for b in arr.to_pylist()], pa.string())


def jsonl_lines(batch: pa.RecordBatch) -> pa.Array:
    """One JSON object per row, each ending in a newline, as a string array."""
    arrival = batch.column("arrival_s")
    parts = [
        '{"id":', _quoted(batch.column("id")),
        ',"arrival_s":', pc.fill_null(pc.cast(arrival, pa.string()), "null"),
        ',"input_tokens":', pc.cast(batch.column("input_tokens"), pa.string()),
        ',"output_tokens":', pc.cast(batch.column("output_tokens"), pa.string()),
    ]
    for name in OPTIONAL:
        col = batch.column(name)
        if col.null_count == len(col):
            continue
        if name == "prefix_blocks":
            text = _blocks_text(col)
        elif name == "block_tokens":
            text = pc.cast(col, pa.string())
        else:
            text = _quoted(col)
        parts.append(pc.fill_null(pc.binary_join_element_wise(f',"{name}":', text, ""), ""))
    parts.append("}\n")
    return pc.binary_join_element_wise(*parts, "")


class JsonlWriter:
    def __init__(self, path: Path):
        self._f = open(path, "wb")

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows > ROWS_PER_WRITE:  # one string array holds at most 2 GiB (int32 offsets)
            for start in range(0, batch.num_rows, ROWS_PER_WRITE):
                self.write(batch.slice(start, ROWS_PER_WRITE))
            return
        if batch.num_rows == 0:
            return
        lines = jsonl_lines(batch)
        if isinstance(lines, pa.ChunkedArray):
            lines = lines.combine_chunks()
        _, offsets, data = lines.buffers()
        offs = np.frombuffer(offsets, dtype=np.int32)[lines.offset: lines.offset + len(lines) + 1]
        self._f.write(memoryview(data)[offs[0]: offs[-1]])

    def close(self) -> None:
        self._f.close()


class ParquetWriter:
    def __init__(self, path: Path):
        self._w = pq.ParquetWriter(path, SCHEMA, compression="snappy", use_dictionary=["kind", "session_id"])

    def write(self, batch: pa.RecordBatch) -> None:
        self._w.write_batch(batch)

    def close(self) -> None:
        self._w.close()


def writer_kind(path: Path) -> str:
    """'parquet' or 'jsonl' from the destination's suffix; any other suffix is an error."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise ValueError(f"{path}: unknown output type {suffix!r}; name the file *.jsonl or *.parquet")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_parts(path: Path) -> list[str]:
    """Remove `.part` files beside `path` left by writers that died (SIGKILL, power loss); say which.

    A temporary's name carries its writer's pid (`.NAME.PID.RANDOM.part`); one whose pid is no longer alive
    can never be finished. Live writers' temporaries, and names not of this form, are left alone.
    """
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[A-Za-z0-9_]+\.part")
    removed = []
    for entry in sorted(os.listdir(path.parent)):
        match = pattern.fullmatch(entry)
        if match and not _pid_alive(int(match.group(1))):
            try:
                os.unlink(path.parent / entry)
            except FileNotFoundError:  # another writer cleaned it first
                continue
            removed.append(f"removed {path.parent / entry}, left by a writer (pid {match.group(1)}) that is gone")
    return removed


@contextmanager
def open_writer(path: str | Path, notes: list[str] | None = None) -> Iterator[BatchWriter]:
    """A writer to a temporary file beside `path`, renamed onto it only when the block completes.

    Stale temporaries of dead writers to the same `path` are removed first, each noted in `notes`.
    """
    path = Path(path)
    kind = writer_kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_parts(path)
    if notes is not None:
        notes.extend(removed)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent)
    os.close(fd)
    writer: BatchWriter | None = None
    try:
        writer = ParquetWriter(Path(tmp)) if kind == "parquet" else JsonlWriter(Path(tmp))
        yield writer
        writer.close()
        writer = None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the trace should get the usual permissions
        os.replace(tmp, path)
    finally:
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_trace(workload: Workload, path: str | Path) -> None:
    """Write a workload as JSON Lines or Parquet (by suffix), atomically."""
    with open_writer(path) as w:
        for batch in workload.table.to_batches(max_chunksize=1 << 20):
            w.write(batch)


