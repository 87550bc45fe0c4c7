"""The trace formats replay reads, by name, and detection from a file's content."""

from __future__ import annotations

import json
from pathlib import Path

from replay.trace.formats import azure, burstgpt, jsonl, parquet, splitwise
from replay.trace.formats.base import Chunk, Format, ReadReport
from replay.trace.formats.csvfile import read_header
from replay.trace.formats.source import open_bytes
from replay.trace.schema import TraceError, shown

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (jsonl.CANONICAL, parquet.FORMAT, azure.FORMAT, burstgpt.FORMAT, jsonl.MOONCAKE,
              splitwise.SPLITWISE, splitwise.LENGTHS_ONLY)
}


def detect(path: Path) -> Format:
    """The format of `path`, told from its (decompressed) content, never its name; ambiguity is an error."""
    with open_bytes(path) as f:  # the decompressed content, whatever the file's compression
        head = f.peek(4)[:4]
        first, first_line = b"", 1
        for first_line, raw in enumerate(f, start=1):
            if raw.strip():
                first = raw
                break
    if head == b"PAR1":
        return FORMATS["parquet"]
    if not first.strip():
        raise TraceError(path, None, None, "empty file: no requests")
    text = first.decode("utf-8-sig", errors="replace").strip()
    if text.startswith("{"):
        try:
            keys = set(json.loads(text))
        except json.JSONDecodeError:
            raise TraceError(path, first_line, None, "starts like JSON Lines but its first line is not valid JSON") from None
        if "input_tokens" in keys:
            return FORMATS["jsonl"]
        if "input_length" in keys:
            return FORMATS["mooncake"]
        raise TraceError(path, first_line, None,
                         f"JSON Lines with unknown fields {sorted(keys)}; expected the canonical "
                         "form (input_tokens, ...) or Mooncake (input_length, ...); see --format")
    header = set(read_header(path))
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= header:
        return FORMATS["azure"]
    if {"Timestamp", "Request tokens", "Response tokens"} <= header:
        return FORMATS["burstgpt"]
    if {"arrived_at", "num_prefill_tokens", "num_decode_tokens"} <= header:
        return FORMATS["splitwise"]
    if {"num_prefill_tokens", "num_decode_tokens"} <= header:
        return FORMATS["lengths"]
    raise TraceError(path, 1, None, f"cannot tell the format from the header {shown(text)}; "
                                    f"use --format (one of {', '.join(FORMATS)})")


__all__ = ["FORMATS", "Chunk", "Format", "ReadReport", "detect"]
