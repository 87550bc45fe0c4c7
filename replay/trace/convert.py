"""`replay convert`: any supported trace -> canonical JSON Lines or Parquet, streamed, all or nothing."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from replay.trace.formats import ReadReport
from replay.trace.pipeline import ReadOptions, canonical_batches
from replay.trace.writers import open_writer


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM exits via SystemExit(143) so `finally` clauses remove the `.part` file.

    Left as is where a handler is already installed or off the main thread (signals go to the main thread).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def unwind(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion read, wrote and left out."""

    source: str
    destination: str
    format: str
    rows_read: int
    written: int
    excluded: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"wrote {self.written} requests to {self.destination} "
                 f"(read {self.rows_read} rows of {self.source} as {self.format})"]
        lines += [f"excluded {n}: {reason}" for reason, n in self.excluded.items()]
        return "\n".join(lines)


def convert(source: str | Path, destination: str | Path, options: ReadOptions = ReadOptions()) -> ConvertReport:
    """Convert `source` to the canonical trace at `destination` (*.jsonl or *.parquet).

    Memory stays flat for any trace size unless `options.sort` asks for reordering. On any error, and on
    SIGTERM, nothing is left under the destination name or beside it; a `.part` left by an earlier convert
    killed outright (SIGKILL) is removed, with a warning.
    """
    report = ReadReport(str(source))
    written = 0
    with _sigterm_unwinds(), open_writer(destination, report.warnings) as writer:
        for batch in canonical_batches(source, options, report):
            writer.write(batch)
            written += batch.num_rows
    return ConvertReport(str(source), str(destination), report.format, report.rows_read, written,
                         dict(report.excluded), tuple(report.warnings))
