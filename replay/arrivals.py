"""Arrival processes: SimPy generator functions that hand a workload's requests to the server loop.

Each process takes ``(env, workload, server, ...)``, submits every request of the workload exactly once (in
workload order) through ``server.submit(request, scheduled_s)``, and returns right after its last submit;
the server loop decides when the run is over. Times are offsets from the moment the process starts (0 in a
fresh environment). Requests due at the same instant are submitted back to back with no yield between them,
so the server loop sees them together. The same code runs under ``simpy.Environment`` (simulated engine)
and ``simpy.rt.RealtimeEnvironment`` (real engine), see DESIGN.md "One server loop, two clocks".

The generator functions trust their arguments; ``start`` checks parameters and workload first and is the
entry point the CLI and the experiment runner use.
"""

from __future__ import annotations

import inspect
import math
from itertools import islice
from numbers import Integral, Real
from typing import Any, Callable, Generator, Iterable, Protocol

import numpy as np
import pyarrow as pa
import simpy

from replay.trace.schema import SCHEMA, Request, Workload
from replay.trace.synth import gamma_gaps_s

__all__ = [
    "OFFLINE", "ONLINE", "PROCESSES", "Server", "as_timed", "at_times", "check", "closed_loop", "gamma", "offline", "poisson",
    "scale_rate", "schedule_s", "start", "static_batches", "wait_until", "window",
]

ProcessGen = Generator[simpy.Event, Any, None]


class Server(Protocol):
    """What an arrival process needs from the server loop."""

    def submit(self, request: Request, scheduled_s: float) -> None:
        """Hand ``request`` over now (``env.now``); ``scheduled_s`` is when the process meant it to arrive."""

    def finished(self, request_id: str) -> simpy.Event:
        """An event that fires when that request has completed."""


# --- helpers ---------------------------------------------------------------------------------------------

def wait_until(env: simpy.Environment, t: float) -> ProcessGen:
    """Wait until ``env.now == t`` exactly (no wait when ``t`` is not in the future).

    SimPy schedules at ``now + delay``, and ``now + (t - now)`` can miss ``t`` by an ulp (when ``now`` sits
    half an ulp of ``t`` off its grid). Then hop to 3t/4 first: from there ``t - now`` is exact (Sterbenz),
    so submit times equal the trace's times bit for bit. The hop is rare (about 2% of random pairs).
    """
    now = env.now
    if t <= now:
        return
    if now >= 0 and now + (t - now) != t:
        yield env.timeout(0.75 * t - now)
    yield env.timeout(t - env.now)


def _at_offsets(env: simpy.Environment, requests: Iterable[Request], offsets_s: np.ndarray,
                server: Server) -> ProcessGen:
    """Submit request i at (process start + ``offsets_s[i]``); offsets are non-decreasing."""
    t0 = env.now
    for request, offset in zip(requests, offsets_s.tolist()):
        t = t0 + offset
        yield from wait_until(env, t)
        server.submit(request, t)


def _gamma_offsets_s(n: int, rate_per_s: float, cv: float, seed: int) -> np.ndarray:
    """n arrival times from 0 with gamma gaps, shape 1/cv^2 and scale 1/(rate*shape) (vLLM's burstiness;
    cv=1 is Poisson). The same draws as ``trace.synth`` for the same seed, before its ns rounding."""
    gaps = gamma_gaps_s(np.random.default_rng(seed), max(n - 1, 0), rate_per_s, cv)
    return np.concatenate([[0.0], np.cumsum(gaps)])[:n]


def _on_done(event: simpy.Event, callback: Callable[[simpy.Event], None]) -> None:
    """Run ``callback(event)`` when ``event`` is processed (at once if it already was)."""
    if event.callbacks is None:
        callback(event)
    else:
        event.callbacks.append(callback)


# --- the processes -----------------------------------------------------------------------------------------

def as_timed(env: simpy.Environment, workload: Workload, server: Server, speedup: float = 1.0) -> ProcessGen:
    """Online, as recorded: request i at ``arrival_s[i] / speedup``. Needs a timed workload.

    ``speedup`` compresses only the arrivals (more load), unlike a realtime environment's factor, which would
    also scale the engine's measured step times.
    """
    yield from _at_offsets(env, workload, workload.arrival_s / speedup, server)


def poisson(env: simpy.Environment, workload: Workload, server: Server, rate_per_s: float,
            seed: int = 0) -> ProcessGen:
    """Online, re-timed: exponential gaps at ``rate_per_s`` (first at 0); keeps order and lengths.

    The same as ``gamma(cv=1)`` with the same seed. Works on untimed workloads.
    """
    yield from _at_offsets(env, workload, _gamma_offsets_s(len(workload), rate_per_s, 1.0, seed), server)


def gamma(env: simpy.Environment, workload: Workload, server: Server, rate_per_s: float, cv: float,
          seed: int = 0) -> ProcessGen:
    """Online, re-timed with burstiness: gamma gaps with mean ``1/rate_per_s`` and coefficient of variation
    ``cv`` (shape 1/cv^2, as vLLM's benchmark defines it; cv > 1 is burstier than Poisson), first at 0."""
    yield from _at_offsets(env, workload, _gamma_offsets_s(len(workload), rate_per_s, cv, seed), server)


def closed_loop(env: simpy.Environment, workload: Workload, server: Server, concurrency: int) -> ProcessGen:
    """Online, closed: ``concurrency`` requests outstanding (clients that send again once answered).

    The first ``min(concurrency, n)`` go at start; each completion frees a slot (a ``simpy.Resource``) and
    the next request in workload order goes at that instant.
    """
    slots = simpy.Resource(env, capacity=concurrency)
    for request in workload:
        slot = slots.request()
        if not slot.triggered:  # a free slot is taken without yielding, so a start burst is one burst
            yield slot
        server.submit(request, env.now)
        _on_done(server.finished(request.id), lambda _event, slot=slot: slots.release(slot))


def offline(env: simpy.Environment, workload: Workload, server: Server) -> ProcessGen:
    """Offline: every request at once; continuous batching drains the queue."""
    now = env.now
    for request in workload:
        server.submit(request, now)
    yield from ()


def static_batches(env: simpy.Environment, workload: Workload, server: Server, batch_size: int) -> ProcessGen:
    """Offline in static batches as in [Na25]: ``batch_size`` requests at once, the next batch only when
    every request of the previous one has finished (the last batch may be smaller)."""
    requests = iter(workload)
    batch = list(islice(requests, batch_size))
    while batch:
        for request in batch:
            server.submit(request, env.now)
        following = list(islice(requests, batch_size))
        if following:
            yield env.all_of([server.finished(r.id) for r in batch])
        batch = following


def at_times(env: simpy.Environment, workload: Workload, server: Server, times_s: np.ndarray) -> ProcessGen:
    """Submit request i at ``times_s[i]`` on the run clock (absolute, not from the process start), or at once
    when that is already past, with ``times_s[i]`` as its scheduled time. For resuming an interrupted run: the
    requests keep the arrival times they had, those already due arrive when the run picks up again."""
    for request, t in zip(workload, times_s.tolist()):
        yield from wait_until(env, t)
        server.submit(request, t)


PROCESSES: dict[str, Callable[..., ProcessGen]] = {
    "timed": as_timed, "poisson": poisson, "gamma": gamma,
    "closed": closed_loop, "offline": offline, "static": static_batches,
}
ONLINE = {"timed", "poisson", "gamma", "closed"}
OFFLINE = {"offline", "static"}

UNTIMED_MESSAGE = ("the trace has no arrival times (a length-only source): use --arrival poisson|gamma with "
                   "--rate, or --offline")


def _positive(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _count(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _seed(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 0


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "speedup": (_positive, "a finite number > 0"),
    "rate_per_s": (_positive, "a finite number > 0 (requests per second)"),
    "cv": (_positive, "a finite number > 0"),
    "concurrency": (_count, "an integer >= 1"),
    "batch_size": (_count, "an integer >= 1"),
    "seed": (_seed, "an integer >= 0"),
}


def start(env: simpy.Environment, name: str, workload: Workload, server: Server, **params: Any) -> simpy.Process:
    """Check ``params`` and ``workload`` for the process ``name`` (a key of PROCESSES), then start it.

    Raises ValueError naming the bad parameter, or saying why the workload does not fit.
    """
    check(name, workload, **params)
    return env.process(PROCESSES[name](env, workload, server, **params))


def check(name: str, workload: Workload, **params: Any) -> None:
    """What ``start`` checks, without starting anything: a run can fail before it writes a file."""
    if name not in PROCESSES:
        raise ValueError(f"unknown arrival process {name!r}: expected one of {', '.join(PROCESSES)}")
    process = PROCESSES[name]
    accepted = list(inspect.signature(process).parameters.values())[3:]
    names = {p.name for p in accepted}
    for key in params:
        if key not in names:
            takes = ", ".join(sorted(names)) or "no parameters"
            raise ValueError(f"unknown parameter {key!r} for arrival process {name!r} (it takes {takes})")
    for p in accepted:
        if p.name not in params:
            if p.default is inspect.Parameter.empty:
                raise ValueError(f"arrival process {name!r} needs the parameter {p.name!r}")
            continue
        ok, expected = _CHECKS[p.name]
        if not ok(params[p.name]):
            raise ValueError(f"{p.name} must be {expected}, got {params[p.name]!r}")
    if len(workload) == 0:
        raise ValueError("the workload has no requests: nothing to replay")
    if name == "timed":
        if not workload.timed:
            raise ValueError(UNTIMED_MESSAGE)
        t = workload.arrival_s
        if not (np.isfinite(t).all() and t.min() >= 0):
            raise ValueError("arrival_s must be finite and >= 0 for --arrival timed")
        if (np.diff(t) < 0).any():
            i = int(np.argmax(np.diff(t) < 0)) + 1
            raise ValueError(f"arrival_s goes backwards at request {i} (id {workload[i].id!r}): "
                             "the workload must be in time order")


def schedule_s(name: str, workload: Workload, **params: Any) -> np.ndarray | None:
    """The times (from the process start) at which process ``name`` will submit, in order, when they do not
    depend on the server (open-loop processes); None for closed-loop and static batches. Lets a simulated
    server know how long it may run undisturbed."""
    if name == "timed":
        return workload.arrival_s / params.get("speedup", 1.0)
    if name in ("poisson", "gamma"):
        return _gamma_offsets_s(len(workload), params["rate_per_s"], params.get("cv", 1.0), params.get("seed", 0))
    if name == "offline":
        return np.zeros(len(workload))
    return None


# --- workload transforms ---------------------------------------------------------------------------------

def _with(table: pa.Table, column: str, values: Any) -> pa.Table:
    field = SCHEMA.field(column)
    return table.set_column(table.schema.get_field_index(column), field, pa.array(values, field.type))


def _require_timed(workload: Workload, what: str) -> np.ndarray:
    if workload.table.column("arrival_s").null_count:
        raise ValueError(f"{what} needs arrival times; {UNTIMED_MESSAGE}")
    return workload.arrival_s


def scale_rate(workload: Workload, k: float, how: str = "compress", seed: int = 0) -> Workload:
    """The same trace at ``k`` times its load.

    ``compress`` (default): ``arrival_s / k``; the same requests, the timeline (and duration) divided by k.
    It keeps the exact request set and the trace's burst structure (every gap scales alike), so a run at
    k=2 differs from k=1 only in load. ``thin-dup``: the timeline is kept and the count changes: each
    request appears ``floor(k)`` times plus once more with probability ``frac(k)`` (for k < 1: kept with
    probability k). Copies get ids ``<id>#2``, ``#3``, ... and the original's time plus a seeded jitter,
    uniform within the gap to the next request (0 for the last), so time order is kept. Use it to keep a
    trace's diurnal timeline at another load; it changes the request mix by sampling and duplicates whole
    bursts. Untimed workloads work with ``thin-dup`` only.
    """
    if not _positive(k):
        raise ValueError(f"k (the rate scale) must be a finite number > 0, got {k!r}")
    if not _seed(seed):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    source = f"{workload.source} (rate x{k:g}, {how})"
    if how == "compress":
        t = _require_timed(workload, "scale_rate how='compress'")
        return Workload(_with(workload.table, "arrival_s", t / k), source)
    if how != "thin-dup":
        raise ValueError(f"how must be 'compress' or 'thin-dup', got {how!r}")
    rng = np.random.default_rng(seed)
    n, whole = len(workload), math.floor(k)
    copies = whole + (rng.random(n) < k - whole)
    idx = np.repeat(np.arange(n), copies)
    copy_no = np.arange(len(idx)) - (np.cumsum(copies) - copies)[idx] + 1
    ids = workload.table.column("id").to_pylist()
    new_ids = [ids[i] if c == 1 else f"{ids[i]}#{c}" for i, c in zip(idx.tolist(), copy_no.tolist())]
    if len(set(new_ids)) != len(new_ids):
        raise ValueError("thin-dup copy ids ('<id>#N') collide with ids already in the trace")
    table = _with(workload.table.take(pa.array(idx)), "id", new_ids)
    if n and not workload.table.column("arrival_s").null_count:
        t = workload.arrival_s
        t_next = np.append(t[1:], t[-1])
        jitter = np.where(copy_no > 1, rng.random(len(idx)) * (t_next - t)[idx], 0.0)
        jitter = jitter[np.lexsort((jitter, idx))]  # ascending within each request's group: #2 before #3
        table = _with(table, "arrival_s", np.minimum(t[idx] + jitter, t_next[idx]))
    return Workload(table, source)


def window(workload: Workload, start_s: float | None = None, duration_s: float | None = None) -> Workload:
    """The requests arriving in ``[start_s, start_s + duration_s)`` (defaults: 0 and to the end), re-based
    so the window start is 0.

    Re-based to the window start, not to the first request in it (unlike ``read_trace``'s --start-s), so a
    quiet opening stays quiet, count/duration is the window's true rate, and consecutive windows tile.
    """
    t = _require_timed(workload, "window")
    start_s = 0.0 if start_s is None else start_s
    if not (isinstance(start_s, Real) and math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start_s must be a finite number >= 0, got {start_s!r}")
    if duration_s is not None and not _positive(duration_s):
        raise ValueError(f"duration_s must be a finite number > 0, got {duration_s!r}")
    keep = t >= start_s
    if duration_s is not None:
        keep &= t < start_s + duration_s
    table = workload.table.filter(pa.array(keep))
    return Workload(_with(table, "arrival_s", t[keep] - start_s), workload.source)
