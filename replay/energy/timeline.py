"""The energy timeline: sample times on the run clock and cumulative joules per device.

Every meter produces one (DESIGN.md "Key types"); everything else asks it for windows. Between two samples the
cumulative energy is taken as linear in time, so the energy of a window [t0, t1] is
``C(t1) - C(t0)`` with ``C`` the piecewise-linear interpolant of the samples (``np.interp``). Outside the sampled
span ``C`` is held at its first / last value: energy before the first or after the last sample is not counted
(``start_s`` / ``end_s`` say what is covered).

Limitation: a window is only as fine as the samples around it. A window that lies between two samples gets the
average power of that sample interval times its length; it cannot see what happened inside the interval. A
counter that updates more slowly than it is sampled (NVML's total-energy counter updates every few tens of ms)
looks flat between updates; the NVML meter keeps only the samples at which the counter changed, so the energy
of one update is spread over the interval since the previous update rather than read as zero-then-a-jump.

``power.csv`` (``to_csv``): ``time_s``, then per device ``<device>_cumulative_j`` and ``<device>_w`` (mean watts
over the interval ending at that row; empty on the first row, never a made-up zero).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from replay.files import write_atomic

__all__ = ["EnergyTimeline"]

_CUM, _W = "_cumulative_j", "_w"


class EnergyTimeline:
    """Sample times (seconds, run clock, strictly increasing) and, per named device, cumulative joules at those
    times (non-decreasing; a meter unwraps counter wrap-arounds and resets before building one).

    ``label`` says where the numbers come from ("measured (nvml total-energy counter)", "modelled (...)");
    ``notes`` are facts worth reporting (counter resets seen, failed samples)."""

    def __init__(self, times_s: Sequence[float] | np.ndarray, cumulative_j: Mapping[str, Sequence[float] | np.ndarray],
                 label: str = "", notes: Sequence[str] = ()):
        times = np.asarray(times_s, dtype=np.float64)
        if times.ndim != 1 or len(times) == 0:
            raise ValueError(f"energy timeline: times_s: expected a non-empty 1-D sequence, got shape {times.shape}")
        bad = np.flatnonzero(~np.isfinite(times))
        if len(bad):
            raise ValueError(f"energy timeline: times_s[{bad[0]}]: expected a finite number, got {times[bad[0]]}")
        back = np.flatnonzero(np.diff(times) <= 0)
        if len(back):
            i = int(back[0]) + 1
            raise ValueError(f"energy timeline: times_s[{i}] = {float(times[i])!r} is not after times_s[{i - 1}] = "
                             f"{float(times[i - 1])!r}; expected strictly increasing sample times")
        if not cumulative_j:
            raise ValueError("energy timeline: no devices; expected at least one device's cumulative joules")
        cum: dict[str, np.ndarray] = {}
        for device, values in cumulative_j.items():
            if not isinstance(device, str) or not device or "," in device:
                raise ValueError(f"energy timeline: device name {device!r}: expected a non-empty name without commas")
            c = np.asarray(values, dtype=np.float64)
            if c.shape != times.shape:
                raise ValueError(f"energy timeline: device {device!r}: {c.shape[0] if c.ndim == 1 else c.shape} "
                                 f"values for {len(times)} sample times; expected one per sample")
            bad = np.flatnonzero(~np.isfinite(c))
            if len(bad):
                raise ValueError(f"energy timeline: device {device!r}, sample {bad[0]}: expected a finite number of "
                                 f"joules, got {c[bad[0]]}")
            down = np.flatnonzero(np.diff(c) < 0)
            if len(down):
                i = int(down[0]) + 1
                raise ValueError(f"energy timeline: device {device!r}, sample {i}: cumulative energy goes down from "
                                 f"{float(c[i - 1])!r} to {float(c[i])!r} J; expected non-decreasing (unwrap "
                                 "counter resets and wrap-arounds first)")
            c.setflags(write=False)
            cum[device] = c
        times.setflags(write=False)
        self.times_s = times
        self.cumulative_j = cum
        self.label = label
        self.notes = tuple(notes)

    # --- construction ----------------------------------------------------------------------------------------

    @classmethod
    def merge(cls, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], label: str = "",
              notes: Sequence[str] = (), extra_times_s: Sequence[float] = ()) -> EnergyTimeline:
        """One timeline from per-device samples taken at different times: ``series[device] = (times_s,
        cumulative_j)``. The time axis is the union of all sample times (and ``extra_times_s``); each device is
        interpolated linearly onto it (held at its first / last value outside its own samples)."""
        parts = []
        for device, (t, c) in series.items():
            t, c = np.asarray(t, dtype=np.float64), np.asarray(c, dtype=np.float64)
            cls(t, {device: c})  # validates this device's own series, errors naming it
            parts.append(t)
        axis = np.unique(np.concatenate(parts + [np.asarray(extra_times_s, dtype=np.float64)]))
        return cls(axis, {d: np.interp(axis, np.asarray(t, np.float64), np.asarray(c, np.float64))
                          for d, (t, c) in series.items()}, label, notes)

    # --- queries ---------------------------------------------------------------------------------------------

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.cumulative_j)

    @property
    def start_s(self) -> float:
        return float(self.times_s[0])

    @property
    def end_s(self) -> float:
        return float(self.times_s[-1])

    def _curve(self, device: str | Sequence[str] | None) -> np.ndarray:
        if device is None:
            names: Sequence[str] = self.devices
        elif isinstance(device, str):
            names = [device]
        else:
            names = list(device)
        for name in names:
            if name not in self.cumulative_j:
                raise ValueError(f"energy timeline: no device {name!r}; devices: {', '.join(self.devices)}")
        if len(names) == 1:
            return self.cumulative_j[names[0]]
        return np.sum([self.cumulative_j[n] for n in names], axis=0)

    def total_j(self, device: str | Sequence[str] | None = None) -> float:
        """Energy over the whole sampled span (None: all devices summed)."""
        c = self._curve(device)
        return float(c[-1] - c[0])

    def energy_j(self, t0: float, t1: float, device: str | Sequence[str] | None = None) -> float:
        """Joules in [t0, t1] (None: all devices summed; a name or a list of names: those)."""
        if not (math.isfinite(t0) and math.isfinite(t1)) or t1 < t0:
            raise ValueError(f"energy timeline: window [{t0}, {t1}]: expected finite bounds with t0 <= t1")
        c = self._curve(device)
        a, b = np.interp([t0, t1], self.times_s, c)
        return float(b - a)

    def window_energies_j(self, starts_s: Sequence[float] | np.ndarray, ends_s: Sequence[float] | np.ndarray,
                          device: str | Sequence[str] | None = None) -> np.ndarray:
        """Joules of many windows at once ([starts_s[i], ends_s[i]], e.g. every step)."""
        s = np.asarray(starts_s, dtype=np.float64)
        e = np.asarray(ends_s, dtype=np.float64)
        if s.shape != e.shape:
            raise ValueError(f"energy timeline: {s.shape} window starts but {e.shape} ends")
        bad = np.flatnonzero(~(np.isfinite(s) & np.isfinite(e) & (e >= s)))
        if len(bad):
            i = bad[0]
            raise ValueError(f"energy timeline: window {i} [{s[i]}, {e[i]}]: expected finite bounds with start <= end")
        c = self._curve(device)
        return np.interp(e, self.times_s, c) - np.interp(s, self.times_s, c)

    def power_w(self, device: str | Sequence[str] | None = None) -> np.ndarray:
        """Mean watts over each sample interval (len(times_s) - 1 values; None: all devices summed)."""
        return np.diff(self._curve(device)) / np.diff(self.times_s)

    def mean_power_w(self, device: str | Sequence[str] | None = None) -> float | None:
        """Mean watts over the whole span; None with a single sample (no interval)."""
        span = self.end_s - self.start_s
        return self.total_j(device) / span if span > 0 else None

    # --- power.csv -------------------------------------------------------------------------------------------

    def frame(self) -> pd.DataFrame:
        """``time_s``, then per device ``<device>_cumulative_j`` and ``<device>_w`` (NaN on the first row)."""
        cols: dict[str, np.ndarray] = {"time_s": np.asarray(self.times_s)}
        for d in self.devices:
            cols[d + _CUM] = np.asarray(self.cumulative_j[d])
            cols[d + _W] = np.concatenate(([np.nan], self.power_w(d)))
        return pd.DataFrame(cols)

    def to_csv(self, path: str | Path) -> Path:
        """Write ``power.csv`` (see the module docstring); floats written exactly (repr round-trips)."""
        path = Path(path)
        return write_atomic(path, self.frame().to_csv(index=False, float_format="%.17g"))

    @classmethod
    def from_csv(cls, path: str | Path, label: str = "") -> EnergyTimeline:
        """Read a ``power.csv`` written by ``to_csv``; errors name the file, the row and the column."""
        path = Path(path)
        try:
            df = pd.read_csv(path, dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"{path}: expected numbers in every column of a power.csv: {exc}") from None
        if "time_s" not in df.columns:
            raise ValueError(f"{path}: no 'time_s' column; expected time_s then <device>_cumulative_j columns")
        devices = [c[: -len(_CUM)] for c in df.columns if c.endswith(_CUM)]
        if not devices:
            raise ValueError(f"{path}: no '<device>_cumulative_j' column; expected at least one device")
        for column in ["time_s"] + [d + _CUM for d in devices]:
            bad = np.flatnonzero(df[column].isna().to_numpy())
            if len(bad):
                raise ValueError(f"{path}: row {bad[0] + 2} (line), column {column!r}: empty; expected a number")
        try:
            return cls(df["time_s"].to_numpy(), {d: df[d + _CUM].to_numpy() for d in devices}, label)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
