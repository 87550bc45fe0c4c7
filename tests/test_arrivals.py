"""Arrival processes: exact timing, rates and burstiness within sampling error, closed-loop saturation,
[Na25] static batches, and the workload transforms (scale_rate, window) and start()'s validation."""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import numpy as np
import pytest
import simpy
from hypothesis import example, given, settings
from hypothesis import strategies as st

from replay.arrivals import (OFFLINE, ONLINE, PROCESSES, UNTIMED_MESSAGE, as_timed, closed_loop, gamma,
                             offline, poisson, scale_rate, start, static_batches, window)
from replay.trace.schema import Request, Workload


class StubServer:
    """A stand-in for the server loop, not an engine: it records every submit as (env.now, id, scheduled_s)
    and finishes each request after a fixed (or per-request) service time, each in its own SimPy process."""

    def __init__(self, env: simpy.Environment, service_s: float | Callable[[Request], float] = 1.0):
        self.env, self.service_s = env, service_s
        self.submits: list[tuple[float, str, float]] = []
        self.done_at: dict[str, float] = {}
        self.outstanding = self.max_outstanding = 0
        self._events: dict[str, simpy.Event] = {}

    def submit(self, request: Request, scheduled_s: float) -> None:
        self.submits.append((self.env.now, request.id, scheduled_s))
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        self.env.process(self._serve(request))

    def finished(self, request_id: str) -> simpy.Event:
        return self._events.setdefault(request_id, self.env.event())

    def _serve(self, request: Request):
        yield self.env.timeout(self.service_s(request) if callable(self.service_s) else self.service_s)
        self.outstanding -= 1
        self.done_at[request.id] = self.env.now
        self.finished(request.id).succeed()

    @property
    def times(self) -> np.ndarray:
        return np.array([s[0] for s in self.submits])

    @property
    def ids(self) -> list[str]:
        return [s[1] for s in self.submits]


def make(n: int, arrival_s=None, seed: int = 0) -> Workload:
    """n requests r0..r{n-1}; untimed unless arrival_s is given; lengths vary (and are kept by the processes)."""
    rng = np.random.default_rng(seed)
    return Workload.from_requests([
        Request(f"r{i}", None if arrival_s is None else float(arrival_s[i]), int(rng.integers(1, 500)),
                int(rng.integers(1, 200))) for i in range(n)])


def run(process, workload: Workload, service_s=1.0, **params) -> StubServer:
    env = simpy.Environment()
    server = StubServer(env, service_s)
    env.process(process(env, workload, server, **params))
    env.run()
    return server


def timed(n: int, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.37, n))
    t[5:8] = t[min(5, n - 1)]  # simultaneous arrivals (when n > 5)
    return make(n, t - t[0], seed)


# --- timed ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("speedup", [1.0, 0.5, 3.7, 10.0])
def test_as_timed_submits_at_arrival_over_speedup_exactly(speedup):
    wl = timed(500)
    server = run(as_timed, wl, speedup=speedup)
    expected = wl.arrival_s / speedup
    assert server.ids == [r.id for r in wl]
    assert (server.times == expected).all()
    assert (np.array([s[2] for s in server.submits]) == expected).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e7, allow_subnormal=False), min_size=1, max_size=40),
       st.floats(1e-3, 1e3))
@example([8632.386157502298, 30442.78560095261], 1.0)  # now + (t - now) != t here: the hop is needed
def test_as_timed_exact_for_any_times(times, speedup):
    wl = make(len(times), sorted(times))
    server = run(as_timed, wl, speedup=speedup)
    assert server.times.tolist() == (wl.arrival_s / speedup).tolist()
    assert Counter(server.ids) == Counter(r.id for r in wl)


def test_as_timed_times_are_offsets_from_process_start():
    wl = timed(50)
    env = simpy.Environment(initial_time=7.25)
    server = StubServer(env)
    env.process(as_timed(env, wl, server))
    env.run()
    assert server.times.tolist() == (7.25 + wl.arrival_s).tolist()


# --- poisson and gamma ---------------------------------------------------------------------------------------

N = 20_000


@pytest.mark.parametrize("process, rate, cv", [(poisson, 5.0, 1.0), (gamma, 5.0, 0.5), (gamma, 200.0, 1.0),
                                               (gamma, 5.0, 2.0), (gamma, 0.3, 3.0)])
def test_rate_and_cv_within_sampling_error(process, rate, cv):
    params = {"rate_per_s": rate} | ({} if process is poisson else {"cv": cv})
    wl = make(N)  # untimed: re-timing needs no arrival times
    server = run(process, wl, service_s=0.01, **params)
    t = server.times
    assert server.ids == [f"r{i}" for i in range(N)] and t[0] == 0.0
    gaps = np.diff(t)
    assert (gaps >= 0).all()
    m = N - 1
    # t[-1] sums m gaps of mean 1/rate and cv 'cv', so (m/t[-1])/rate has relative standard error cv/sqrt(m).
    assert abs(m / t[-1] / rate - 1) < 4 * cv / math.sqrt(m)
    # Sample CV of gamma gaps: standard error ~ cv*sqrt((1+cv^2)/(2m)) (delta method).
    assert abs(gaps.std() / gaps.mean() - cv) < 4 * cv * math.sqrt((1 + cv**2) / (2 * m))
    assert [s[2] for s in server.submits] == t.tolist()


def test_retiming_is_seeded_and_keeps_lengths():
    wl = timed(300)
    a = run(gamma, wl, rate_per_s=3.0, cv=2.0, seed=1).times
    assert (run(gamma, wl, rate_per_s=3.0, cv=2.0, seed=1).times == a).all()
    assert not (run(gamma, wl, rate_per_s=3.0, cv=2.0, seed=2).times == a).all()
    p = run(poisson, wl, rate_per_s=3.0, seed=4).times
    assert (run(gamma, wl, rate_per_s=3.0, cv=1.0, seed=4).times == p).all()  # poisson is gamma with cv=1
    assert not (run(poisson, wl, rate_per_s=3.0, seed=5).times == p).all()
    assert not np.allclose(p, wl.arrival_s)


# --- closed loop ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, c", [(100, 7), (100, 1), (5, 8), (64, 64)])
def test_closed_loop_constant_service_time(n, c):
    server = run(closed_loop, make(n), service_s=0.5, concurrency=c)
    assert server.ids == [f"r{i}" for i in range(n)]
    assert (server.times[:min(c, n)] == 0).all()
    assert server.max_outstanding == min(c, n)
    assert max(server.done_at.values()) == pytest.approx(math.ceil(n / c) * 0.5)


@pytest.mark.parametrize("c", [1, 3, 16])
def test_closed_loop_saturated_never_over(c):
    n = 400
    service = dict(zip((f"r{i}" for i in range(n)), np.random.default_rng(c).exponential(1.0, n)))
    server = run(closed_loop, make(n), service_s=lambda r: service[r.id], concurrency=c)
    assert server.ids == [f"r{i}" for i in range(n)]
    assert server.max_outstanding <= c  # at every instant, counted in submit
    submit_t, done_t = np.sort(server.times), np.sort(list(server.done_at.values()))
    for t in np.union1d(submit_t, done_t):  # after all events at t have been processed
        submitted = np.searchsorted(submit_t, t, side="right")
        outstanding = submitted - np.searchsorted(done_t, t, side="right")
        assert outstanding <= c
        if submitted < n:
            assert outstanding == c


# --- offline -------------------------------------------------------------------------------------------------

def test_offline_all_at_zero():
    wl = timed(100)
    server = run(offline, wl)
    assert server.ids == [r.id for r in wl] and (server.times == 0).all()
    assert all(s[2] == 0 for s in server.submits)


@pytest.mark.parametrize("n, b", [(23, 5), (20, 5), (3, 10), (7, 1)])
def test_static_batches_wait_for_the_slowest(n, b):
    service = dict(zip((f"r{i}" for i in range(n)), np.random.default_rng(n).uniform(0.1, 5.0, n)))
    server = run(static_batches, make(n), service_s=lambda r: service[r.id], batch_size=b)
    assert server.ids == [f"r{i}" for i in range(n)]
    batches = [server.submits[i:i + b] for i in range(0, n, b)]
    assert [len(x) for x in batches] == [b] * (n // b) + ([n % b] if n % b else [])
    assert all(s[0] == 0 for s in batches[0])
    for before, batch in zip(batches, batches[1:]):
        slowest = max(server.done_at[s[1]] for s in before)
        assert {s[0] for s in batch} == {slowest}  # the whole batch, exactly then
        assert all(s[2] == slowest for s in batch)


# --- scale_rate and window -----------------------------------------------------------------------------------

def test_scale_rate_compress():
    wl = timed(1000)
    for k in (0.5, 2.0, 3.0):
        out = scale_rate(wl, k)
        assert [r.id for r in out] == [r.id for r in wl]
        assert (out.input_tokens == wl.input_tokens).all() and (out.output_tokens == wl.output_tokens).all()
        assert (out.arrival_s == wl.arrival_s / k).all()
        rate = lambda w: (len(w) - 1) / (w.arrival_s[-1] - w.arrival_s[0])
        assert rate(out) == pytest.approx(k * rate(wl), rel=1e-12)


@pytest.mark.parametrize("k", [0.3, 0.9, 1.0, 1.5, 2.5, 3.0])
def test_scale_rate_thin_dup(k):
    n = 5000
    wl = timed(n)
    out = scale_rate(wl, k, how="thin-dup", seed=3)
    frac = k - math.floor(k)
    assert abs(len(out) - k * n) <= 4 * math.sqrt(n * frac * (1 - frac)) + 1e-9  # exact when k is whole
    t = out.arrival_s
    ids = [r.id for r in out]
    assert (np.diff(t) >= 0).all() and len(set(ids)) == len(ids)
    src = {r.id: r for r in wl}
    t_of, t_next = dict(zip(src, wl.arrival_s)), dict(zip(src, np.append(wl.arrival_s[1:], wl.arrival_s[-1])))
    for r in out:
        base, _, copy = r.id.partition("#")
        o = src[base]
        assert (r.input_tokens, r.output_tokens) == (o.input_tokens, o.output_tokens)
        if copy:
            assert int(copy) >= 2 and t_of[base] <= r.arrival_s <= t_next[base]
        else:
            assert r.arrival_s == t_of[base]
    if k >= 1:
        assert {r.id for r in wl} <= set(ids)
    assert [r.id for r in scale_rate(wl, k, how="thin-dup", seed=3)] == ids
    assert scale_rate(wl, k, how="thin-dup", seed=3).arrival_s.tolist() == t.tolist()


def test_scale_rate_thin_dup_untimed_and_bad_args():
    out = scale_rate(make(100), 2.0, how="thin-dup")
    assert len(out) == 200 and not out.timed
    with pytest.raises(ValueError, match="no arrival times"):
        scale_rate(make(10), 2.0)
    for k in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="k"):
            scale_rate(timed(10), k)
    with pytest.raises(ValueError, match="how"):
        scale_rate(timed(10), 2.0, how="stretch")


def test_window_rebases_to_window_start():
    wl = make(6, [0.0, 1.0, 2.5, 4.0, 4.5, 9.0])
    out = window(wl, start_s=2.0, duration_s=2.5)
    assert [r.id for r in out] == ["r2", "r3"] and out.arrival_s.tolist() == [0.5, 2.0]
    assert [r.id for r in window(wl, start_s=4.0)] == ["r3", "r4", "r5"]
    assert window(wl, start_s=4.0).arrival_s.tolist() == [0.0, 0.5, 5.0]
    assert window(wl, duration_s=1.0).arrival_s.tolist() == [0.0]
    assert len(window(wl, start_s=10.0)) == 0
    with pytest.raises(ValueError, match="no arrival times"):
        window(make(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="duration_s"):
        window(wl, 0.0, 0.0)
    with pytest.raises(ValueError, match="start_s"):
        window(wl, -1.0)


# --- registry and start() ------------------------------------------------------------------------------------

def test_registry():
    assert set(PROCESSES) == ONLINE | OFFLINE and not ONLINE & OFFLINE
    assert PROCESSES["timed"] is as_timed and PROCESSES["static"] is static_batches


@pytest.mark.parametrize("name, params", [("timed", {"speedup": 2.0}), ("poisson", {"rate_per_s": 2.0}),
                                          ("gamma", {"rate_per_s": 2.0, "cv": 3.0, "seed": 1}),
                                          ("closed", {"concurrency": 4}), ("offline", {}),
                                          ("static", {"batch_size": 4})])
def test_start_runs_every_process(name, params):
    wl = timed(30)
    env = simpy.Environment()
    server = StubServer(env)
    proc = start(env, name, wl, server, **params)
    assert isinstance(proc, simpy.Process)
    env.run()
    assert sorted(server.ids) == sorted(r.id for r in wl)


def test_start_untimed_workload_with_timed():
    env = simpy.Environment()
    with pytest.raises(ValueError) as e:
        start(env, "timed", make(5), StubServer(env))
    assert str(e.value) == UNTIMED_MESSAGE
    assert "use --arrival poisson|gamma with --rate, or --offline" in UNTIMED_MESSAGE
    start(env, "poisson", make(5), StubServer(env), rate_per_s=1.0)  # fine untimed


@pytest.mark.parametrize("name, params, word", [
    ("poisson", {"rate_per_s": 0}, "rate_per_s"), ("poisson", {"rate_per_s": -2.0}, "rate_per_s"),
    ("gamma", {"rate_per_s": math.nan, "cv": 1.0}, "rate_per_s"), ("poisson", {}, "rate_per_s"),
    ("gamma", {"rate_per_s": 1.0, "cv": 0.0}, "cv"), ("gamma", {"rate_per_s": 1.0}, "cv"),
    ("gamma", {"rate_per_s": 1.0, "cv": 1.0, "seed": -1}, "seed"),
    ("closed", {"concurrency": 0}, "concurrency"), ("closed", {"concurrency": 2.5}, "concurrency"),
    ("static", {"batch_size": 0}, "batch_size"), ("static", {"batch_size": True}, "batch_size"),
    ("timed", {"speedup": 0.0}, "speedup"), ("timed", {"speedup": -1}, "speedup"),
    ("timed", {"rate_per_s": 1.0}, "rate_per_s"), ("offline", {"concurrency": 2}, "concurrency"),
    ("burst", {}, "burst"),
])
def test_start_bad_params(name, params, word):
    env = simpy.Environment()
    with pytest.raises(ValueError, match=word):
        start(env, name, timed(5), StubServer(env), **params)


def test_start_bad_workloads():
    env = simpy.Environment()
    with pytest.raises(ValueError, match="no requests"):
        start(env, "offline", Workload.from_requests([]), StubServer(env))
    with pytest.raises(ValueError, match="backwards at request 2 .*'r2'"):
        start(env, "timed", make(3, [0.0, 2.0, 1.0]), StubServer(env))
