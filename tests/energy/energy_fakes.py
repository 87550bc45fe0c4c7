"""Fake hardware boundaries for the meter tests: this machine has neither an NVIDIA GPU nor RAPL, so NVML is
replaced by ``FakeNvml`` (the pynvml function names the meter calls, with scripted readings) and powercap sysfs
by a directory tree under tmp_path (``fake_rapl``)."""

from __future__ import annotations

from pathlib import Path


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's name)
    value = 3


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    pass


class ScriptedClock:
    """Returns the scripted times one per call, then keeps returning the last (a clock that stopped)."""

    def __init__(self, times):
        self.times = list(times)
        self.i = 0

    def __call__(self) -> float:
        t = self.times[min(self.i, len(self.times) - 1)]
        self.i += 1
        return t


class FakeNvml:
    """``energy[i]``: scripted mJ readings of GPU i's total-energy counter, one per read (the last repeats), or
    None: the GPU lacks the counter (NVMLError_NotSupported). ``power[i]``: scripted mW readings likewise.
    ``energy_of``/``power_of``: a function of the GPU index instead (for threads, where the read count varies)."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, energy=None, power=None, names=None, count=None, init_error=None, energy_of=None):
        self.energy = {i: (None if v is None else list(v)) for i, v in (energy or {}).items()}
        self.power = {i: list(v) for i, v in (power or {}).items()}
        self.count = count if count is not None else max(len(self.energy), len(self.power), 1)
        self.names = names or {}
        self.init_error = init_error
        self.energy_of = energy_of
        self.reads = {}
        self.inits = self.shutdowns = 0
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self):
        self.calls.append("shutdown")
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < self.count:
            raise NVMLError(f"invalid index {i}")
        return ("handle", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        i = int(uuid.removeprefix("GPU-fake-"))
        return self.nvmlDeviceGetHandleByIndex(i)

    def nvmlDeviceGetIndex(self, handle):
        return handle[1]

    def nvmlDeviceGetName(self, handle):
        return self.names.get(handle[1], "Fake GPU")

    def _next(self, table, key, handle):
        seq = table[handle[1]]
        n = self.reads.get((key, handle[1]), 0)
        self.reads[(key, handle[1])] = n + 1
        return seq[min(n, len(seq) - 1)]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.energy_of is not None:
            return self.energy_of(handle[1])
        if self.energy.get(handle[1]) is None:
            raise NVMLError_NotSupported("Not Supported")
        return self._next(self.energy, "energy", handle)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._next(self.power, "power", handle)


def fake_rapl(root: Path, zones: dict[str, tuple[str, int, int]], nested: bool = False) -> Path:
    """A powercap tree: ``zones[zone_id] = (name, energy_uj, max_energy_range_uj)``, e.g.
    ``{"intel-rapl:0": ("package-0", 100, 1000), "intel-rapl:0:1": ("dram", 5, 1000)}``; flat (as
    /sys/class/powercap lists them) or nested (sub-zones inside their package directory)."""
    root.mkdir(parents=True, exist_ok=True)
    for zone, (name, energy, max_uj) in zones.items():
        parts = zone.split(":")
        path = root / zone
        if nested and len(parts) == 3:
            path = root / ":".join(parts[:2]) / zone
        path.mkdir(parents=True, exist_ok=True)
        (path / "name").write_text(name + "\n")
        (path / "energy_uj").write_text(f"{energy}\n")
        (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root


def set_energy(root: Path, zone: str, energy_uj: int, nested: bool = False) -> None:
    parts = zone.split(":")
    path = root / zone if not (nested and len(parts) == 3) else root / ":".join(parts[:2]) / zone
    (path / "energy_uj").write_text(f"{energy_uj}\n")
