"""What makes a run directory trustworthy: one writer at a time, and a resume that goes on with the run it
started, not an edited one.

- ``RunLock``: an exclusive lock (``flock`` on ``DIR/.lock``) held for the life of a run or resume. A second
  ``replay run --resume DIR`` while one is running fails in one line naming the holder (its pid, command and
  start time, written into the lock file). The kernel releases the lock when the holder dies, SIGKILL included,
  so a stale lock never blocks a resume.
- ``fingerprint`` / ``check_fingerprint``: config.yaml keeps a hash of every run option and of the trace file's
  bytes; ``--resume`` recomputes them and refuses a run whose config.yaml or trace changed, naming the keys (or
  the trace) that differ, unless told to go on (``--force``). The trace's absolute path is kept too, so a resume
  from another directory finds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "RunLock", "check_fingerprint", "fingerprint", "trace_path"]

LOCK_FILE = ".lock"
_CHUNK_BYTES = 1 << 20


class RunLock:
    """``with RunLock(out):`` holds ``out/.lock`` exclusively, or raises ValueError naming who holds it."""

    def __init__(self, out: str | Path, what: str = "run") -> None:
        self.path = Path(out) / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise ValueError(f"{self.path.parent}: in use by {holder}; wait for it to end or stop it, then go on "
                             f"with: replay run --resume {self.path.parent}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "command": " ".join(sys.argv)[:500], "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)          # closing releases the lock; the file stays (removing it would race)
            self._fd = None


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the file (a holder that has just taken it writes a moment
    later: read again for up to 0.5 s)."""
    info: dict[str, Any] = {}
    for _ in range(25):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        except (OSError, ValueError):
            info = {}
        if info:
            break
        time.sleep(0.02)
    if not info:
        return "another replay process"
    return (f"another replay {info.get('what', 'run')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('since', '?')}: {info.get('command', '?')})")


# --- fingerprint ---------------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(options: dict[str, Any], trace: str | None) -> dict[str, Any]:
    """Per option a short hash of its value, and the trace file's absolute path, size and sha256 (``options``:
    the RunConfig's fields as config.yaml keeps them; ``out`` is left out: a moved directory is the same run)."""
    doc: dict[str, Any] = {"options": {k: _digest(v) for k, v in sorted(options.items()) if k != "out"}}
    if trace is not None and Path(trace).is_file():
        path = Path(trace).resolve()
        doc["trace"] = {"path": str(path), "bytes": path.stat().st_size, "sha256": _file_digest(path)}
    return doc


def trace_path(typed: str | None, kept: dict[str, Any] | None) -> str | None:
    """The trace a resume reads: the path as typed where it names a file from here, else the absolute path the
    run kept (a resume from another directory)."""
    if typed is not None and Path(typed).is_file():
        return typed
    if kept and kept.get("trace") and Path(kept["trace"]["path"]).is_file():
        return kept["trace"]["path"]
    return typed


def check_fingerprint(where: Path, options: dict[str, Any], trace: str | None, kept: dict[str, Any] | None) -> list[str]:
    """What changed since the run started (empty: nothing), as phrases naming the keys and the trace; a run
    written before fingerprints existed has nothing to compare (empty)."""
    if not kept:
        return []
    now = fingerprint(options, None)["options"]
    was = kept.get("options") or {}
    keys = sorted(k for k in set(now) | set(was) if now.get(k) != was.get(k))
    changes = [f"{where}: key {k!r} changed" for k in keys] if len(keys) <= 5 else [
        f"{where}: keys {', '.join(map(repr, keys))} changed"]
    old = kept.get("trace")
    if old:
        path = Path(trace) if trace is not None else None
        if path is None or not path.is_file():
            changes.append(f"the trace {old['path']} is gone")
        elif path.stat().st_size != old["bytes"] or _file_digest(path) != old["sha256"]:
            changes.append(f"the trace {path} is not the file the run started with (its bytes differ)")
    return changes
