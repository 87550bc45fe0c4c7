"""Meters: what measures (or models) the energy of a run and hands back an ``EnergyTimeline``.

Every meter has ``name``, ``label`` (what the numbers are: "measured (...)", "modelled (...)" or "not measured"),
``available() -> (ok, reason)``, ``start()`` and ``stop() -> EnergyTimeline | None``. ``METERS`` maps names to
classes (as ``replay.arrivals.PROCESSES``); ``choose_meter`` is ``--meter auto``; ``measure_idle`` measures idle
power before a run (DESIGN.md "Energy measurement notes": report energy with and without the idle share).

- ``nvml``: every GPU in use, sampled in a background thread every ``period_s`` (default 0.1 s). Primary source
  ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded); on a GPU where that raises
  NVMLError_NotSupported, ``nvmlDeviceGetPowerUsage`` (mW) samples integrated by the trapezoid rule, and the
  label says so. A counter that goes backwards (driver reload: it restarts from zero) is counted as a reset and
  the timeline continues from its last value plus the new reading. The NVML boundary is the ``nvml`` argument,
  a module-like object (default ``pynvml``, from the nvidia-ml-py package), so tests can fake it. Read-only:
  no GPU setting (clocks, power limits, persistence mode) is ever changed.
- ``rapl``: ``<root>/intel-rapl:*`` zones (package and DRAM domains, found by their ``name`` file),
  ``energy_uj`` unwrapped at ``max_energy_range_uj``. Absent on many VMs; ``available()`` says why.
- ``model``: the simulated engine's modelled step energy and idle power between steps (``model_timeline``).
- ``none``: always available; ``stop()`` returns None and everything downstream says "not measured" (never 0).

Clock: a meter stamps samples with ``clock()`` (default ``time.monotonic``). The runner passes a function that
returns seconds on the run clock (the real-time environment's ``now``), so step windows and samples line up.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from replay.energy.timeline import EnergyTimeline

__all__ = ["METERS", "Meter", "IdlePower", "MeterChoice", "ModelMeter", "NoMeter", "NvmlMeter", "RaplMeter",
           "choose_meter", "default_meters", "gpus_in_use", "measure_idle", "model_timeline"]

NOT_MEASURED = "not measured"
MODEL_LABEL = "modelled (simulated engine's power model)"
NVML_COUNTER_LABEL = "measured (nvml total-energy counter)"
NVML_POWER_LABEL = "measured (nvml power samples, integrated)"
RAPL_LABEL = "measured (rapl)"


class Meter(Protocol):
    name: str
    label: str

    def available(self) -> tuple[bool, str]:
        """Whether this meter can run here, and why (or why not)."""

    def start(self) -> None:
        """Begin measuring (take a first sample now)."""

    def stop(self) -> EnergyTimeline | None:
        """End measuring (take a last sample now); the timeline, or None when nothing was measured."""


def _period(period_s: float) -> float:
    if isinstance(period_s, bool) or not isinstance(period_s, (int, float)) or not math.isfinite(period_s) \
            or period_s <= 0:
        raise ValueError(f"meter period_s: expected a positive number of seconds, got {period_s!r}")
    return float(period_s)


class _Series:
    """One device's samples: times and cumulative joules (after unwrapping), plus what went wrong."""

    __slots__ = ("device", "times", "cum", "last_raw", "acc_j", "resets", "failures", "mode", "handle", "last_t")

    def __init__(self, device: str, handle: Any = None, mode: str = "counter"):
        self.device, self.handle, self.mode = device, handle, mode
        self.times: list[float] = []
        self.cum: list[float] = []
        self.last_raw: float | None = None
        self.last_t: float | None = None
        self.acc_j = 0.0
        self.resets = self.failures = 0

    def add(self, t: float) -> None:
        if self.times and t <= self.times[-1]:
            return  # a clock that did not move: one sample per instant
        self.times.append(t)
        self.cum.append(self.acc_j)


class _Sampler:
    """A background thread calling ``sample()`` every ``period_s`` between ``start()`` and ``stop()``.
    Subclasses implement ``_open()``, ``_read(t)``, ``_close()`` and ``_timeline()``."""

    name = ""

    def __init__(self, period_s: float, clock: Callable[[], float]):
        self.period_s = _period(period_s)
        self.clock = clock
        self._lock = threading.Lock()
        self._halt: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._first_t: float | None = None
        self._last_t: float | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} meter: already started")
        self._error = None
        self._first_t = self._last_t = None
        self._open()
        self.sample()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"replay-{self.name}-meter", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        assert self._halt is not None
        while not self._halt.wait(self.period_s):
            try:
                self.sample()
            except BaseException as exc:  # kept, and raised by stop(): a meter never fails silently
                self._error = exc
                return

    def sample(self) -> None:
        """Take one sample of every device now (the thread calls this; tests may too)."""
        with self._lock:
            t = self.clock()
            if self._first_t is None:
                self._first_t = t
            self._last_t = t
            self._read(t)

    def stop(self) -> EnergyTimeline:
        if self._thread is None or self._halt is None:
            raise RuntimeError(f"{self.name} meter: stop() without start()")
        self._halt.set()
        self._thread.join()
        self._thread = None
        try:
            if self._error is None:
                self.sample()
        finally:
            self._close()
        if self._error is not None:
            raise RuntimeError(f"{self.name} meter: sampling failed: {self._error!r}") from self._error
        return self._timeline()

    def _open(self) -> None: ...

    def _read(self, t: float) -> None: ...

    def _close(self) -> None: ...

    def _timeline(self) -> EnergyTimeline: ...


def _merge(series: list[_Series], label: str, notes: list[str], span: tuple) -> EnergyTimeline:
    """The devices' series on one time axis that also holds the first and last sampling instants (``span``):
    a counter that did not change in the last samples is held flat to the end."""
    empty = [s.device for s in series if not s.times]
    if empty:
        raise RuntimeError(f"no sample could be read from {', '.join(empty)}; see the notes: {'; '.join(notes)}")
    return EnergyTimeline.merge({s.device: (s.times, s.cum) for s in series}, label, notes,
                                [t for t in span if t is not None])


# --- nvml -----------------------------------------------------------------------------------------------------


class NvmlMeter(_Sampler):
    """NVIDIA GPUs through NVML (see the module docstring). ``gpus``: NVML indices of the GPUs in use (None:
    all). ``drop_unchanged``: for the energy counter, keep only samples at which it changed (it updates every
    few tens of ms; see ``replay.energy.timeline`` on short windows)."""

    name = "nvml"

    def __init__(self, gpus: Sequence[int] | None = None, period_s: float = 0.1, nvml: Any = None,
                 clock: Callable[[], float] = time.monotonic, drop_unchanged: bool = True):
        super().__init__(period_s, clock)
        if gpus is not None:
            gpus = list(gpus)
            if any(isinstance(i, bool) or not (isinstance(i, int) and i >= 0 or isinstance(i, str) and i)
                               for i in gpus) or len(set(gpus)) != len(gpus):
                raise ValueError(f"nvml meter gpus: expected distinct GPU indices >= 0 or UUIDs, got {gpus!r}")
        self.gpus = gpus
        self._nvml = nvml
        self.drop_unchanged = drop_unchanged
        self._series: list[_Series] = []

    @property
    def nvml(self) -> Any:
        if self._nvml is None:
            self._nvml = importlib.import_module("pynvml")
        return self._nvml

    @property
    def label(self) -> str:
        modes = {s.mode for s in self._series}
        if modes == {"counter"}:
            return NVML_COUNTER_LABEL
        if modes == {"power"}:
            return NVML_POWER_LABEL
        if modes:
            parts = [f"{s.device} " + ("total-energy counter" if s.mode == "counter" else "power samples, integrated")
                     for s in self._series]
            return f"measured (nvml: {', '.join(parts)})"
        return "measured (nvml)"

    def available(self) -> tuple[bool, str]:
        try:
            nvml = self.nvml
        except ImportError as exc:
            return False, f"pynvml is not installed (package nvidia-ml-py): {exc}"
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            return False, f"NVML could not start (no NVIDIA driver or GPU?): {exc}"
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            return False, f"NVML could not count GPUs: {exc}"
        finally:
            nvml.nvmlShutdown()
        if count == 0:
            return False, "NVML found no GPU"
        if self.gpus == []:
            return False, "CUDA_VISIBLE_DEVICES hides every GPU: none in use to measure"
        missing = [i for i in (self.gpus or []) if isinstance(i, int) and i >= count]
        if missing:
            return False, f"GPU index {missing[0]} not present: NVML sees {count} GPU(s)"
        n = len(self.gpus) if self.gpus is not None else count
        return True, f"NVML sees {count} GPU(s); measuring {n}"

    def _not_supported(self, exc: BaseException) -> bool:
        cls = getattr(self.nvml, "NVMLError_NotSupported", None)
        return (cls is not None and isinstance(exc, cls)) or getattr(exc, "value", None) == 3

    def _open(self) -> None:
        nvml = self.nvml
        nvml.nvmlInit()
        try:
            gpus = self.gpus if self.gpus is not None else list(range(nvml.nvmlDeviceGetCount()))
            self._series = []
            for i in gpus:
                if isinstance(i, str):  # a UUID from CUDA_VISIBLE_DEVICES
                    handle = nvml.nvmlDeviceGetHandleByUUID(i)
                    i = nvml.nvmlDeviceGetIndex(handle)
                else:
                    handle = nvml.nvmlDeviceGetHandleByIndex(i)
                try:
                    nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                    mode = "counter"
                except nvml.NVMLError as exc:
                    if not self._not_supported(exc):
                        raise
                    mode = "power"
                self._series.append(_Series(f"gpu{i}", handle, mode))
        except BaseException:
            nvml.nvmlShutdown()
            raise

    def _read(self, t: float) -> None:
        nvml = self.nvml
        for s in self._series:
            try:
                if s.mode == "counter":
                    raw = float(nvml.nvmlDeviceGetTotalEnergyConsumption(s.handle))  # mJ
                else:
                    raw = float(nvml.nvmlDeviceGetPowerUsage(s.handle)) / 1000.0     # W
            except nvml.NVMLError:
                s.failures += 1
                continue
            if s.last_raw is None:
                s.last_raw, s.last_t = raw, t
                s.add(t)
                continue
            if s.mode == "counter":
                if raw == s.last_raw and self.drop_unchanged:
                    continue
                delta = raw - s.last_raw
                if delta < 0:       # the counter restarted (driver reload): it has counted `raw` since
                    s.resets += 1
                    delta = raw
                s.acc_j += delta / 1000.0
            else:
                if t <= s.last_t:
                    continue
                s.acc_j += 0.5 * (s.last_raw + raw) * (t - s.last_t)
            s.last_raw, s.last_t = raw, t
            s.add(t)

    def _close(self) -> None:
        self.nvml.nvmlShutdown()

    def _notes(self) -> list[str]:
        notes = []
        for s in self._series:
            if s.resets:
                notes.append(f"{s.device}: energy counter went backwards {s.resets} time(s) (reset); continued "
                             "from the last value")
            if s.failures:
                notes.append(f"{s.device}: {s.failures} sample(s) failed to read and were skipped")
            if s.mode == "power":
                notes.append(f"{s.device}: no total-energy counter (NVMLError_NotSupported); power samples "
                             "integrated by the trapezoid rule")
        return notes

    def _timeline(self) -> EnergyTimeline:
        return _merge(self._series, self.label, self._notes(), (self._first_t, self._last_t))

    @property
    def resets(self) -> dict[str, int]:
        return {s.device: s.resets for s in self._series}


# --- rapl -----------------------------------------------------------------------------------------------------

_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


@dataclass
class _Zone:
    path: Path
    device: str
    max_uj: float


class RaplMeter(_Sampler):
    """Intel RAPL through powercap sysfs (see the module docstring). ``domains``: name prefixes to measure
    (default package and DRAM; core and uncore lie inside package and would count twice)."""

    name = "rapl"
    label = RAPL_LABEL

    def __init__(self, root: str | Path = "/sys/class/powercap", period_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, domains: Sequence[str] = ("package", "dram")):
        super().__init__(period_s, clock)
        self.root = Path(root)
        self.domains = tuple(domains)
        self._zones: list[_Zone] = []
        self._series: list[_Series] = []

    def zones(self) -> list[_Zone]:
        """The zones to read, by device name ("package-0", "dram-0", ...). Raises OSError/ValueError with why."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} does not exist: no RAPL powercap interface on this machine "
                                    "(common on VMs)")
        seen, zones = set(), []
        paths = sorted(self.root.glob("intel-rapl:*")) + sorted(self.root.glob("intel-rapl:*/intel-rapl:*"))
        for path in paths:
            m = _ZONE.match(path.name)
            if m is None or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            name = (path / "name").read_text().strip()
            if not any(name.startswith(d) for d in self.domains):
                continue
            device = name if re.search(r"-\d+$", name) else f"{name}-{m.group(1)}"
            if any(z.device == device for z in zones):
                device = f"{device}-{path.name}"
            try:
                max_uj = float((path / "max_energy_range_uj").read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path / 'max_energy_range_uj'}: expected a number of microjoules: {exc}") from None
            zones.append(_Zone(path, device, max_uj))
        if not zones:
            raise FileNotFoundError(f"{self.root}: no RAPL zone named {' or '.join(self.domains)} "
                                    "(intel-rapl:* with a name file)")
        return zones

    def available(self) -> tuple[bool, str]:
        try:
            zones = self.zones()
            for z in zones:
                float((z.path / "energy_uj").read_text())
        except PermissionError as exc:
            return False, (f"{exc.filename}: not readable by this user (energy_uj is root-only on Linux 5.10 and "
                           "newer)")
        except (OSError, ValueError) as exc:
            return False, str(exc)
        return True, f"RAPL zones {', '.join(z.device for z in zones)}"

    def _open(self) -> None:
        self._zones = self.zones()
        self._series = [_Series(z.device) for z in self._zones]

    def _read(self, t: float) -> None:
        for z, s in zip(self._zones, self._series):
            try:
                raw = float((z.path / "energy_uj").read_text())
            except (OSError, ValueError):
                s.failures += 1
                continue
            if s.last_raw is not None:
                delta = raw - s.last_raw
                if delta < 0:   # wrapped at max_energy_range_uj (one wrap at most between samples)
                    s.resets += 1
                    delta += z.max_uj
                s.acc_j += delta / 1e6
            s.last_raw, s.last_t = raw, t
            s.add(t)

    def _timeline(self) -> EnergyTimeline:
        notes = [f"{s.device}: counter wrapped {s.resets} time(s) at max_energy_range_uj" for s in self._series
                 if s.resets]
        notes += [f"{s.device}: {s.failures} sample(s) failed to read and were skipped" for s in self._series
                  if s.failures]
        return _merge(self._series, self.label, notes, (self._first_t, self._last_t))


# --- model ----------------------------------------------------------------------------------------------------


def model_timeline(steps: pd.DataFrame, idle_w: float | Sequence[float], end_s: float | None = None,
                   start_s: float = 0.0, label: str = MODEL_LABEL) -> EnergyTimeline:
    """The simulated engine's modelled energy as a timeline, one device per replica ("replica0", ...): each
    step's ``energy_j`` spread evenly over [start_s, end_s] of the step, ``idle_w`` (per replica, or one value for
    all) between steps and from ``start_s`` to ``end_s`` (default: the last step's end). Its total equals
    ``replay.run._modelled_energy``'s: step energy plus idle power over each replica's idle time."""
    replicas = sorted(int(r) for r in pd.unique(steps["replica"])) if len(steps) else []
    if isinstance(idle_w, (int, float)) and not isinstance(idle_w, bool):
        idle = {r: float(idle_w) for r in (replicas or [0])}
    else:
        idle = {i: float(w) for i, w in enumerate(idle_w)}
        extra = [r for r in replicas if r not in idle]
        if extra:
            raise ValueError(f"model meter: steps of replica {extra[0]} but idle power for {len(idle)} replica(s)")
    for r, w in idle.items():
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"model meter: replica {r} idle_w: expected a finite number >= 0, got {w!r}")
    if len(steps):
        e = steps["energy_j"].to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(e))
        if len(bad):
            row = steps.iloc[bad[0]]
            raise ValueError(f"model meter: replica {int(row['replica'])} step {int(row['step'])}: energy_j is "
                             f"missing; the model meter needs the simulated engine's modelled step energy")
    last = float(steps["end_s"].max()) if len(steps) else start_s
    end = last if end_s is None else float(end_s)
    if end < last:
        raise ValueError(f"model meter: end_s {end} is before the last step's end {last}")
    series = {}
    for r, w in idle.items():
        mine = steps[steps["replica"] == r].sort_values("step")
        st, en = mine["start_s"].to_numpy(np.float64), mine["end_s"].to_numpy(np.float64)
        ej = mine["energy_j"].to_numpy(np.float64)
        prev_end = np.concatenate(([start_s], en[:-1]))
        gap = st - prev_end
        if len(gap) and (gap.min() < -1e-9 or (en < st).any()):
            k = int(np.flatnonzero((gap < -1e-9) | (en < st))[0])
            raise ValueError(f"model meter: replica {r} step {int(mine['step'].iloc[k])} [{st[k]}, {en[k]}] overlaps "
                             f"the previous step or starts before {start_s}")
        cum_end = np.cumsum(w * np.maximum(gap, 0.0) + ej)
        cum_start = cum_end - ej
        done = cum_end[-1] if len(cum_end) else 0.0
        t = np.concatenate(([start_s], np.column_stack((st, en)).ravel(), [end]))
        c = np.concatenate(([0.0], np.column_stack((cum_start, cum_end)).ravel(),
                            [done + w * (end - (en[-1] if len(en) else start_s))]))
        same = np.diff(t) == 0
        jump = same & (np.abs(np.diff(c)) > 1e-9 * max(1.0, abs(c[-1])))
        if jump.any():
            i = int(np.flatnonzero(jump)[0])
            raise ValueError(f"model meter: replica {r}: {c[i + 1] - c[i]} J at the single instant {t[i]} s "
                             "(a step of zero duration with energy)")
        keep = np.concatenate(([True], ~same))
        series[f"replica{r}"] = (t[keep], c[keep])
    return EnergyTimeline.merge(series, label)


class ModelMeter:
    """The simulated engine's power model as a meter: ``stop()`` builds ``model_timeline`` from the step
    records. ``steps``: the DataFrame, or a function returning it at stop time (the runner's
    ``recorder.steps_frame``); ``idle_w``: per replica, or one value."""

    name = "model"
    label = MODEL_LABEL

    def __init__(self, steps: pd.DataFrame | Callable[[], pd.DataFrame] | None = None,
                 idle_w: float | Sequence[float] | None = None, end_s: float | Callable[[], float] | None = None):
        self.steps, self.idle_w, self.end_s = steps, idle_w, end_s

    def available(self) -> tuple[bool, str]:
        return True, "the simulated engine models every step's energy and its idle power"

    def start(self) -> None:
        pass

    def stop(self) -> EnergyTimeline:
        if self.steps is None or self.idle_w is None:
            raise RuntimeError("model meter: give it the step records and the idle power (steps=, idle_w=)")
        steps = self.steps() if callable(self.steps) else self.steps
        end = self.end_s() if callable(self.end_s) else self.end_s
        return model_timeline(steps, self.idle_w, end)


# --- none -----------------------------------------------------------------------------------------------------


class NoMeter:
    """Measures nothing: ``stop()`` returns None, and every energy figure downstream is null, "not measured"."""

    name = "none"
    label = NOT_MEASURED

    def __init__(self, reason: str = "no meter was chosen (--meter none)"):
        self.reason = reason

    def available(self) -> tuple[bool, str]:
        return True, f"{NOT_MEASURED}: {self.reason}"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        return None


METERS: dict[str, type] = {"nvml": NvmlMeter, "rapl": RaplMeter, "model": ModelMeter, "none": NoMeter}
ENGINES = ("sim", "vllm")


# --- auto -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterChoice:
    """``--meter auto``'s pick: the meter, why, and for every other meter why it was not used."""

    meter: Any
    reason: str
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meter.name

    def to_dict(self) -> dict[str, Any]:
        return {"meter": self.meter.name, "label": self.meter.label, "reason": self.reason,
                "not_used": dict(self.skipped)}


def gpus_in_use(tp: int, visible: str | None = None) -> list[int | str]:
    """The GPUs a real engine of ``tp`` GPUs runs on, as NVML sees them: the first ``tp`` GPUs that
    ``CUDA_VISIBLE_DEVICES`` (``visible``) makes visible (indices, or ``GPU-``/``MIG-`` UUIDs resolved when the
    meter opens; as CUDA does, the list ends at the first entry that is neither), else GPUs 0..tp-1 when it is
    unset. Empty when it hides every GPU (``""``, ``-1``): nothing to measure. Measuring only these keeps runs
    sharing a node (a Ray sweep, say) from counting each other's energy."""
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(tp))
    gpus: list[int | str] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            gpus.append(int(entry))
        elif entry.startswith(("GPU-", "MIG-")):
            gpus.append(entry)
        else:
            break
    return gpus[:tp]


def default_meters(gpus: Sequence[int] | None = None, period_s: float = 0.1, nvml: Any = None,
                   rapl_root: str | Path = "/sys/class/powercap",
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """One meter of each kind, as ``choose_meter`` considers them."""
    return {"nvml": NvmlMeter(gpus, period_s, nvml, clock), "rapl": RaplMeter(rapl_root, period_s, clock),
            "model": ModelMeter(), "none": NoMeter("no meter is available here")}


def choose_meter(engine: str, meters: Mapping[str, Any] | None = None) -> MeterChoice:
    """The best meter for ``engine``: for the simulated engine ("sim") its power model; for a real one
    ("vllm") nvml, else rapl, else none. ``meters``: candidates by name (default ``default_meters()``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    meters = dict(meters) if meters is not None else default_meters()
    skipped: dict[str, str] = {}
    if engine == "sim":
        order = ["model"]
        for name in ("nvml", "rapl"):
            skipped[name] = "the simulated engine runs on no hardware: its energy is modelled, not measured"
    else:
        order = ["nvml", "rapl"]
        skipped["model"] = "the power model belongs to the simulated engine; a real engine is measured"
    for name in order:
        meter = meters.get(name)
        if meter is None:
            skipped[name] = "not offered"
            continue
        ok, why = meter.available()
        if ok:
            for rest in order[order.index(name) + 1:]:
                skipped.setdefault(rest, f"{name} was available and is preferred")
            skipped["none"] = f"{name} was available"
            return MeterChoice(meter, why, skipped)
        skipped[name] = why
    none = meters.get("none") or NoMeter()
    reasons = "; ".join(f"{n}: {skipped[n]}" for n in order)
    return MeterChoice(none, f"{NOT_MEASURED}: no meter is available ({reasons})", skipped)


# --- idle power -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdlePower:
    """Mean watts per device measured while nothing ran, over ``seconds``."""

    watts: dict[str, float]
    seconds: float
    label: str

    @property
    def total_w(self) -> float:
        return float(sum(self.watts.values()))

    def energy_j(self, seconds: float, devices: Sequence[str] | None = None) -> float:
        """Idle joules over ``seconds`` (devices: those; None: all)."""
        names = self.watts if devices is None else devices
        return float(sum(self.watts[d] for d in names)) * seconds

    def to_dict(self) -> dict[str, Any]:
        return {"idle_w": dict(self.watts), "idle_total_w": self.total_w, "seconds": self.seconds,
                "label": self.label}


def measure_idle(meter: Any, seconds: float = 3.0, sleep: Callable[[float], None] = time.sleep) -> IdlePower | None:
    """Run ``meter`` for ``seconds`` with nothing else running; mean watts per device. None when the meter
    measures nothing (``none``). Do this before the engine starts its work."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0 \
            or not math.isfinite(seconds):
        raise ValueError(f"idle measurement seconds: expected a positive number, got {seconds!r}")
    meter.start()
    try:
        sleep(seconds)
    finally:
        timeline = meter.stop()
    if timeline is None:
        return None
    span = timeline.end_s - timeline.start_s
    if span <= 0:
        raise RuntimeError(f"{meter.name} meter: idle measurement covered no time (one sample)")
    return IdlePower({d: _mean_w(timeline, d, meter.name) for d in timeline.devices}, span, timeline.label)


def _mean_w(timeline: EnergyTimeline, device: str, meter: str) -> float:
    """Mean watts of ``device``: between the first and the last sample at which its cumulative energy rose when
    there are two such (a counter that updates every few tens of ms then covers whole update periods, not a
    partial one at either end), else over the whole span."""
    t, c = timeline.times_s, timeline.cumulative_j[device]
    rose = np.flatnonzero(np.diff(c) > 0) + 1
    if len(rose) == 0:
        raise RuntimeError(f"{meter} meter: {device}'s energy did not change during the idle measurement "
                           f"({timeline.end_s - timeline.start_s:.3g} s); measure for longer")
    if len(rose) >= 2:
        a, b = rose[0], rose[-1]
        return float((c[b] - c[a]) / (t[b] - t[a]))
    return float((c[-1] - c[0]) / (t[-1] - t[0]))
