"""Shared paths and small helpers for the test suite.

`DATA` holds the real samples shipped with the repository; `SHARED` is the full public data beside the
repository (``../shared/data``), which some tests need and skip without.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from replay.trace import TraceError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SHARED = REPO.parent / "shared" / "data"
TRACES = REPO / "traces"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"the full public data is not at {SHARED}")
    return SHARED


@pytest.fixture
def write(tmp_path):
    """write(name, content) -> path: text is written as is (no newline translation), bytes verbatim."""
    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path
    return _write


def assert_located(exc: TraceError, path: Path, line: int | None, field: str | None = None, unit: str = "line"):
    """The error names the file, the exact line (or Parquet row) and the field."""
    text = str(exc)
    assert str(path) in text or path.name in text, text
    if line is not None:
        where = f"{path.name}:{line}:" if unit == "line" else f"{path.name}: {unit} {line}:"
        assert where in text, f"expected {where!r} in {text!r}"
        assert exc.line == line
    if field is not None:
        assert f"'{field}'" in text, f"expected field {field!r} in {text!r}"
        assert exc.field == field


def leftovers(directory: Path) -> list[str]:
    """Every entry of `directory` (temporary .part files included)."""
    return sorted(os.listdir(directory))


# --- independent timestamp parsing (Python's datetime; the fraction by hand) ---------------------------------

EPOCH = datetime(1970, 1, 1)
EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _td_ns(td: timedelta) -> int:
    return (td.days * 86_400 + td.seconds) * 10**9 + td.microseconds * 1000


def azure2023_ns(text: str) -> int:
    """'2023-11-16 18:15:46.6805900' -> ns since the epoch, the 7-digit fraction parsed by hand."""
    whole, _, frac = text.partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    return _td_ns(dt - EPOCH) + int(frac.ljust(9, "0")[:9] or "0")


def aware_ns(text: str) -> int:
    """'2024-05-10 00:00:00.009930+00:00' (fraction optional, any offset) -> ns since the epoch, UTC."""
    dt = datetime.fromisoformat(text)
    assert dt.tzinfo is not None
    return _td_ns(dt - EPOCH_UTC)


def interrupt_after(monkeypatch, records: int, call):
    """Run ``call()`` as a user would stop it: Ctrl-C (KeyboardInterrupt) once ``records`` request records have
    been written; the run's own code is untouched, only the recorder is wrapped, and unwrapped afterwards."""
    import replay.server
    original, seen = replay.server.Recorder.request, {"n": 0}

    def request(self, record):
        if seen["n"] == records:
            raise KeyboardInterrupt
        seen["n"] += 1
        original(self, record)

    monkeypatch.setattr(replay.server.Recorder, "request", request)
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        monkeypatch.setattr(replay.server.Recorder, "request", original)


class ClockedNvml:
    """A faked NVML boundary for whole runs (this machine has no GPU): one GPU whose total-energy counter rises
    at ``idle_w`` watts of wall time plus ``per_cpu_w`` watts per second of this process's CPU time (so it reads
    more while the engine computes)."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's name)
        pass

    def __init__(self, idle_w: float, per_cpu_w: float = 0.0, name: str = "Fake GPU"):
        import time
        self.idle_w, self.per_cpu_w, self.name = idle_w, per_cpu_w, name
        self._time = time
        self.t0, self.cpu0 = time.monotonic(), time.process_time()

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, handle):
        return self.name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        t = self._time
        joules = self.idle_w * (t.monotonic() - self.t0) + self.per_cpu_w * (t.process_time() - self.cpu0)
        return int(1000 * joules)  # mJ

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(1000 * self.idle_w)  # mW
