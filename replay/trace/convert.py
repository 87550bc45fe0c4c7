"""`replay convert`: any supported trace -> canonical JSON Lines or Parquet, streamed, all or nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from replay.trace.formats import ReadReport
from replay.trace.pipeline import ReadOptions, canonical_batches
from replay.trace.writers import open_writer


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

    Memory stays flat for any trace size unless `options.sort` asks for reordering. On any error nothing
    is left under the destination name.
    """
    report = ReadReport(str(source))
    written = 0
    with open_writer(destination) as writer:
        for batch in canonical_batches(source, options, report):
            writer.write(batch)
            written += batch.num_rows
    return ConvertReport(str(source), str(destination), report.format, report.rows_read, written,
                         dict(report.excluded), tuple(report.warnings))
