"""Reading the project's YAML and JSON Lines files with one-line errors that name the file, the line and what is
wrong (run configs, fitted parameters, sweep specs, run records), so every reader says it the same way."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

__all__ = ["plain", "read_jsonl", "read_yaml", "write_atomic"]


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file so that it is either the old one or the new one, never a part: into a temporary file
    beside it, flushed to disk, then renamed over it. A full disk (or any write error) leaves the old file, and
    the error names the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"{path}: cannot write: {exc.strerror or exc}") from None
    return path


def read_yaml(path: str | Path) -> Any:
    """The data in a YAML file; a file that cannot be read or parsed raises ValueError in one line:
    ``FILE: not valid YAML (line L, column C): PROBLEM``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None


def read_jsonl(path: str | Path, *, cut_last: bool = False, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file, blank lines skipped; a bad line (not UTF-8, not a JSON object), or one
    without a ``required`` field, raises ValueError naming ``FILE:LINE``; a file that cannot be read, one naming
    the file.

    ``cut_last``: a last line without its newline (a run interrupted mid-write) is dropped, and cut from the file
    so that appending goes on cleanly (resuming a run)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if cut_last and raw and not raw.endswith(b"\n"):
        raw = raw[:raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{number}: not UTF-8 text ({exc.reason})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(f"{path}:{number}: missing field {missing[0]!r}")
        rows.append(row)
    return rows


def plain(value: Any) -> Any:
    """``value`` as plain JSON/YAML data: numpy scalars and arrays to Python, a frame to its records, NaN and
    infinity to None, containers recursively (for the files a run, a fit or a report writes)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return [plain(r) for r in value.to_dict("records")]
    if isinstance(value, (pd.Series, np.ndarray)):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # anything else JSON cannot hold: its text
