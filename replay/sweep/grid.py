"""A sweep's grid: its axes (``key=v1,v2`` or ``key=A..B``), its points, and ``sweep.yaml`` that records both.

An axis is either a synthetic length axis, ``n_in`` or ``n_out`` (a point replays requests of exactly that
many input or output tokens), or a RunConfig field (replay/config.py), its values typed by the field's type.
A synthetic sweep (no trace) always has both length axes: one not given takes the [SS26] values
64, 128, ..., 4096. A sweep of a trace replays that trace at every point and has no length axes.

Points are the Cartesian product of the axes, the first axis outermost; point i lives in
``OUT/<i>-<key=value,...>/`` (i zero-padded to the width of the last index).
"""

from __future__ import annotations

import itertools
import math
import re
import types
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import yaml

from replay.config import RunConfig
from replay.files import read_yaml, write_atomic

__all__ = ["DONE", "FAILED", "INTERRUPTED", "LENGTH_AXES", "PENDING", "SS26_LENGTHS", "SYNTHETIC", "Axis", "Point",
           "SweepSpec", "grid_keys", "load_sweep", "make_sweep", "parse_axis", "point_state"]

SS26_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)  # [SS26]: n_in and n_out each in these, powers of two
LENGTH_AXES = ("n_in", "n_out")
SYNTHETIC = "<synthetic>"          # the base config's trace in a synthetic sweep (each point writes its own)
POINT_TRACE = "trace.jsonl"        # a synthetic point's trace, in its directory
SPEC_FILE = "sweep.yaml"
ERROR_FILE = "error.txt"          # a failed point's error
DONE, FAILED, INTERRUPTED, PENDING = "done", "failed", "interrupted", "pending"
_NOT_AXES = ("trace", "out")       # per point, set by the sweep itself
_INT = re.compile(r"[+-]?\d+")
_NONE = ("none", "null")
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _field_types() -> dict[str, tuple[type, bool]]:
    """RunConfig field -> (its value type, whether None is allowed), read from the dataclass's annotations."""
    hints = typing.get_type_hints(RunConfig)
    out = {}
    for f in fields(RunConfig):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        concrete = [a for a in args if a is not type(None)]
        out[f.name] = (concrete[0], len(concrete) < len(args))
    return out


def grid_keys() -> tuple[str, ...]:
    """Every key an axis may have: the two length axes, then the RunConfig fields (trace and out excepted)."""
    return LENGTH_AXES + tuple(sorted(k for k in _field_types() if k not in _NOT_AXES))


@dataclass(frozen=True)
class Axis:
    """One grid axis: a key (``n_in``, ``n_out`` or a RunConfig field) and its values, in the order given."""

    key: str
    values: tuple


def _value(key: str, text: str, kind: type, optional: bool) -> Any:
    """One typed value of axis ``key``; a value of the wrong type is an error naming the key."""
    where = f"--grid {key}: value {text!r}"
    if text.lower() in _NONE:
        if not optional:
            raise ValueError(f"{where}: {key} cannot be none")
        return None
    if kind is bool:
        if text.lower() not in _BOOLS:
            raise ValueError(f"{where}: expected true or false")
        return _BOOLS[text.lower()]
    if kind is int:
        if not _INT.fullmatch(text):
            raise ValueError(f"{where}: expected a whole number")
        return int(text)
    if kind is float:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{where}: expected a finite number")
        return number
    return text


def _range(key: str, text: str, kind: type) -> tuple:
    """``A..B``: the powers of two from A to B (both ends included when they are powers of two)."""
    low_text, _, high_text = text.partition("..")
    if kind not in (int, float):
        raise ValueError(f"--grid {key}={text}: a range A..B is for numeric keys; list the values instead")
    low, high = (_value(key, t.strip(), kind, False) for t in (low_text, high_text))
    if not 0 < low <= high:
        raise ValueError(f"--grid {key}={text}: a range A..B needs 0 < A <= B")
    first, last = math.ceil(math.log2(low)), math.floor(math.log2(high))
    if kind is int:
        first = max(first, 0)
    values = tuple(kind(2.0 ** k) for k in range(first, last + 1) if low <= 2.0 ** k <= high)
    if not values:
        raise ValueError(f"--grid {key}={text}: no power of two between {low} and {high}")
    return values


def parse_axis(text: str) -> Axis:
    """``key=v1,v2,...`` or ``key=A..B`` (the powers of two from A to B, e.g. ``n_in=64..4096``). Keys are the
    length axes and RunConfig fields (dashes read as underscores); values are typed by the field. Raises
    ValueError naming the key and the bad value, or listing the valid keys for an unknown one."""
    key, eq, rest = (s.strip() for s in text.partition("="))
    key = key.replace("-", "_")
    if not eq or not key:
        raise ValueError(f"--grid {text!r}: expected KEY=V1,V2,... or KEY=A..B, e.g. n_in=64..4096")
    if key not in grid_keys():
        raise ValueError(f"--grid {text!r}: unknown key {key!r}; valid keys: {', '.join(grid_keys())}")
    kind, optional = (int, False) if key in LENGTH_AXES else _field_types()[key]
    parts = [p.strip() for p in rest.split(",")]
    if not rest or any(not p for p in parts):
        raise ValueError(f"--grid {text!r}: empty value; expected KEY=V1,V2,... or KEY=A..B")
    values: list = []
    for part in parts:
        values.extend(_range(key, part, kind) if ".." in part else [_value(key, part, kind, optional)])
    if key in LENGTH_AXES and any(v < 1 for v in values):
        raise ValueError(f"--grid {text!r}: token lengths must be >= 1")
    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"--grid {text!r}: value {repeated[0]} given more than once")
    return Axis(key, tuple(values))


def _label(value: Any) -> str:
    """A value as it appears in a point's directory name (path-safe, at most 40 characters)."""
    text = "none" if value is None else repr(value) if isinstance(value, float) else str(value).lower() \
        if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)[:40]


@dataclass(frozen=True)
class Point:
    """One grid point: its index, directory name, axis values and the run it is."""

    index: int
    name: str
    values: tuple[tuple[str, Any], ...]
    config: RunConfig              # out = the point's directory; a synthetic point's trace is trace.jsonl in it

    def value(self, key: str, default: Any = None) -> Any:
        return dict(self.values).get(key, default)


def point_state(point_dir: str | Path) -> str:
    """A point's state from what its directory holds: summary.json: done; error.txt: failed (to run again);
    config.yaml alone: interrupted (to resume); else pending."""
    where = Path(point_dir)
    if (where / "summary.json").exists():
        return DONE
    if (where / ERROR_FILE).exists():
        return FAILED
    if (where / "config.yaml").exists():
        return INTERRUPTED
    return PENDING


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep is: where it lives, its trace (None: synthetic), requests per synthetic point, its axes and
    the configuration every point starts from (``base``; its trace and out are replaced per point)."""

    out: str
    trace: str | None
    requests: int | None
    axes: tuple[Axis, ...]
    base: RunConfig

    @property
    def synthetic(self) -> bool:
        return self.trace is None

    def points(self) -> tuple[Point, ...]:
        """Every point, the first axis outermost; a value RunConfig refuses is a ValueError naming the point."""
        combos = list(itertools.product(*(a.values for a in self.axes)))
        width = len(str(max(len(combos) - 1, 0)))
        points = []
        for index, combo in enumerate(combos):
            values = tuple(zip((a.key for a in self.axes), combo))
            name = f"{index:0{width}d}-" + ",".join(f"{k}={_label(v)}" for k, v in values)
            run = {k: v for k, v in values if k not in LENGTH_AXES}
            where = Path(self.out) / name
            trace = str(where / POINT_TRACE) if self.synthetic else self.trace
            try:
                config = replace(self.base, trace=trace, out=str(where), **run)  # RunConfig checks each value
            except ValueError as exc:
                raise ValueError(f"grid point {name}: {exc}") from None
            points.append(Point(index, name, values, config))
        return tuple(points)

    def to_dict(self) -> dict[str, Any]:
        """What sweep.yaml holds (the base config without its per-point trace and out)."""
        base = {k: v for k, v in self.base.to_dict().items() if k not in _NOT_AXES}
        return {"trace": self.trace, "requests": self.requests,
                "grid": {a.key: list(a.values) for a in self.axes}, "base": base}


def make_sweep(base: RunConfig, grid: Sequence[str | Axis], requests: int | None = None) -> SweepSpec:
    """The sweep of ``base`` over ``grid`` (``key=...`` texts or Axis values), into ``base.out``.

    ``base.trace`` is the trace to replay at every point, or ``SYNTHETIC``: then each point replays
    ``requests`` (default 1,000, as [SS26]) requests of exactly ``n_in`` input and ``n_out`` output tokens, and
    a length axis not in ``grid`` takes the [SS26] values. Every point's configuration is checked here, so a
    bad value stops the sweep before anything runs (the error names the point)."""
    if not base.out:
        raise ValueError("a sweep needs an output directory (--out)")
    axes = [a if isinstance(a, Axis) else parse_axis(a) for a in grid]
    for axis in axes:
        if axis.key not in grid_keys():
            raise ValueError(f"grid: unknown key {axis.key!r}; valid keys: {', '.join(grid_keys())}")
        if axis.key in LENGTH_AXES and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                               for v in axis.values):
            raise ValueError(f"grid {axis.key}: token lengths must be whole numbers >= 1, got {list(axis.values)}")
        if not axis.values:
            raise ValueError(f"grid {axis.key}: no values")
    keys = [a.key for a in axes]
    if len(set(keys)) < len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"--grid {twice}: given more than once; give all its values in one --grid")
    synthetic = base.trace == SYNTHETIC
    if synthetic:
        requests = 1000 if requests is None else requests
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
            raise ValueError(f"--requests: expected an integer >= 1, got {requests!r}")
        missing = [Axis(k, SS26_LENGTHS) for k in LENGTH_AXES if k not in keys]
        axes = missing + axes
    else:
        if requests is not None:
            raise ValueError("--requests sets the synthetic points' size; a sweep of a trace takes --limit")
        lengths = [k for k in keys if k in LENGTH_AXES]
        if lengths:
            raise ValueError(f"--grid {lengths[0]}: the length axes n_in and n_out make synthetic requests; "
                             "they cannot be combined with a TRACE")
    if not axes:
        raise ValueError("a sweep of a trace needs at least one --grid axis, e.g. --grid max_num_seqs=8,64,256")
    spec = SweepSpec(str(base.out), None if synthetic else base.trace, requests if synthetic else None,
                     tuple(axes), base)
    spec.points()  # every point's RunConfig is made, so a bad value stops here, naming the point
    return spec


def spec_from_dict(data: Any, out: str | Path, where: str) -> SweepSpec:
    """The sweep recorded in a sweep.yaml mapping (``where`` names the file in errors)."""
    if not isinstance(data, dict) or not {"trace", "requests", "grid", "base"} <= set(data):
        raise ValueError(f"{where}: expected a mapping with keys trace, requests, grid and base")
    if not isinstance(data["grid"], dict) or not isinstance(data["base"], dict):
        raise ValueError(f"{where}: grid and base must be mappings")
    trace = data["trace"]
    base = RunConfig.from_dict({**data["base"], "trace": SYNTHETIC if trace is None else trace, "out": str(out)},
                               where=f"{where}: base")
    axes = []
    for key, values in data["grid"].items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: grid {key}: expected a list of values")
        axes.append(Axis(str(key), tuple(values)))
    return make_sweep(base, axes, data["requests"])


def load_sweep(out: str | Path) -> SweepSpec:
    """The sweep whose directory is ``out`` (from its sweep.yaml)."""
    path = Path(out) / SPEC_FILE
    if not path.exists():
        raise ValueError(f"{out}: no {SPEC_FILE}: not a sweep directory")
    return spec_from_dict(read_yaml(path), out, str(path))


def save_or_check(spec: SweepSpec) -> None:
    """Write sweep.yaml for a new sweep; for an existing one, check it is the same sweep (else an error saying
    what differs), so points of two different grids never mix in one directory."""
    out = Path(spec.out)
    path = out / SPEC_FILE
    wanted = yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))  # as it reads back
    if path.exists():
        old = read_yaml(path)
        old = old if isinstance(old, dict) else {}
        if old != wanted or list(old.get("grid") or {}) != list(wanted["grid"]):
            raise ValueError(f"{path} records another sweep ({_difference(old, wanted)}); choose another --out, "
                             f"or go on with that sweep: replay sweep --resume {out}")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no {SPEC_FILE}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(wanted, sort_keys=False))


def _difference(old: dict, new: dict) -> str:
    """The first differences between two sweep.yaml mappings, as 'key: X there, Y here'."""
    diffs = []
    for section in ("trace", "requests", "grid", "base"):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(dict.fromkeys([*a, *b])):
                if a.get(key) != b.get(key):
                    diffs.append(f"{section} {key}: {a.get(key)!r} there, {b.get(key)!r} here")
        elif a != b:
            diffs.append(f"{section}: {a!r} there, {b!r} here")
    return "; ".join(diffs[:3]) or "the same axes in another order"
