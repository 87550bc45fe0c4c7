"""Tests for replay.trace.stats: hand-worked values, an independent pure-Python check, untimed and edge cases."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from replay.trace.schema import Request, Workload
from replay.trace.stats import TokenStats, TraceStats, format_stats, trace_stats


def wl(arrivals, inputs, outputs) -> Workload:
    return Workload.from_requests(
        [Request(str(n), a, i, o) for n, (a, i, o) in enumerate(zip(arrivals, inputs, outputs))]
    )


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


# --- hand-worked example -------------------------------------------------------------------------------

HAND = wl([0.0, 1.0, 3.0, 6.0, 10.0], [10, 20, 30, 40, 100], [5, 1, 3, 2, 4])


def test_hand_worked_input_tokens():
    s = trace_stats(HAND).input_tokens
    # mean = (10 + 20 + 30 + 40 + 100) / 5 = 40
    assert s.mean == approx(40.0)
    # deviations -30, -20, -10, 0, 60: squares sum 900 + 400 + 100 + 0 + 3600 = 5000; ddof=1 -> 5000 / 4
    assert s.std == approx(math.sqrt(1250.0))
    assert s.median == approx(30.0)
    # linear interpolation: rank h = 0.99 * (n - 1) = 3.96 over sorted [10, 20, 30, 40, 100]
    # p99 = x[3] + (h - 3) * (x[4] - x[3]) = 40 + 0.96 * 60 = 97.6
    assert s.p99 == approx(97.6)
    assert (s.min, s.max) == (10, 100)
    assert isinstance(s.min, int) and isinstance(s.max, int)


def test_hand_worked_output_tokens():
    s = trace_stats(HAND).output_tokens
    # values 5, 1, 3, 2, 4: mean 3; deviations 2, -2, 0, -1, 1 -> squares sum 10; ddof=1 -> 10 / 4
    assert s.mean == approx(3.0)
    assert s.std == approx(math.sqrt(2.5))
    assert s.median == approx(3.0)
    # sorted [1, 2, 3, 4, 5]: h = 3.96 -> 4 + 0.96 * (5 - 4) = 4.96
    assert s.p99 == approx(4.96)
    assert (s.min, s.max) == (1, 5)


def test_hand_worked_timing():
    s = trace_stats(HAND)
    assert s.requests == 5
    assert s.duration_s == approx(10.0)  # 10 - 0
    assert s.rate_per_s == approx(0.4)  # (5 - 1) / 10
    # gaps 1, 2, 3, 4: mean 2.5; population variance (1.5^2 + 0.5^2 + 0.5^2 + 1.5^2) / 4 = 1.25
    assert s.interarrival_cv == approx(math.sqrt(1.25) / 2.5)


def test_duration_counts_from_first_arrival_not_zero():
    s = trace_stats(wl([5.0, 6.0, 9.0], [1, 1, 1], [1, 1, 1]))
    assert s.duration_s == approx(4.0)
    assert s.rate_per_s == approx(2 / 4.0)
    # gaps 1, 3: mean 2, pstdev 1
    assert s.interarrival_cv == approx(0.5)


def test_even_count_median_interpolates():
    s = trace_stats(wl([0.0, 1.0, 2.0, 3.0], [1, 2, 3, 10], [7, 7, 7, 7]))
    assert s.input_tokens.median == approx(2.5)
    # h = 0.99 * 3 = 2.97 -> 3 + 0.97 * (10 - 3)
    assert s.input_tokens.p99 == approx(3 + 0.97 * 7)
    assert s.output_tokens.std == 0.0
    assert s.output_tokens.p99 == approx(7.0)


# --- independent pure-Python check on random workloads --------------------------------------------------


def py_percentile(values, q):
    xs = sorted(values)
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@pytest.mark.parametrize("seed", range(5))
def test_random_workload_matches_pure_python(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 400)
    t, arrivals = rng.uniform(0, 100), []
    for _ in range(n):
        t += rng.expovariate(2.0) if rng.random() < 0.9 else 0.0
        arrivals.append(t)
    inputs = [rng.randint(1, 20000) for _ in range(n)]
    outputs = [max(1, int(rng.lognormvariate(3, 1.5))) for _ in range(n)]
    s = trace_stats(wl(arrivals, inputs, outputs))

    assert s.requests == n
    duration = arrivals[-1] - arrivals[0]
    assert s.duration_s == pytest.approx(duration, rel=1e-12)
    assert s.rate_per_s == pytest.approx((n - 1) / duration, rel=1e-12)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert s.rate_per_s == pytest.approx(1 / statistics.fmean(gaps), rel=1e-9)
    assert s.interarrival_cv == pytest.approx(statistics.pstdev(gaps) / statistics.fmean(gaps), rel=1e-9)

    for got, values in ((s.input_tokens, inputs), (s.output_tokens, outputs)):
        assert got.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert got.std == pytest.approx(statistics.stdev(values), rel=1e-9)
        assert got.median == pytest.approx(statistics.median(values), rel=1e-12)
        assert got.p99 == pytest.approx(py_percentile(values, 99), rel=1e-12)
        assert got.min == min(values) and got.max == max(values)


# --- untimed and degenerate cases ----------------------------------------------------------------------


def test_untimed_workload_has_no_timing_fields():
    s = trace_stats(wl([None] * 4, [1, 2, 3, 4], [4, 3, 2, 1]))
    assert (s.duration_s, s.rate_per_s, s.interarrival_cv) == (None, None, None)
    assert s.requests == 4
    assert s.input_tokens.mean == approx(2.5)


def test_partly_timed_workload_counts_as_untimed():
    s = trace_stats(wl([0.0, None, 2.0], [1, 2, 3], [1, 1, 1]))
    assert (s.duration_s, s.rate_per_s, s.interarrival_cv) == (None, None, None)


def test_single_request():
    s = trace_stats(wl([3.0], [7], [9]))
    assert s.duration_s == 0.0
    assert s.rate_per_s is None and s.interarrival_cv is None
    assert s.input_tokens == TokenStats(7.0, 0.0, 7.0, 7.0, 7, 7)


def test_two_requests_have_rate_but_no_cv():
    s = trace_stats(wl([1.0, 3.0], [1, 1], [1, 1]))
    assert s.rate_per_s == approx(0.5)
    assert s.interarrival_cv is None


def test_simultaneous_arrivals_have_no_rate_or_cv():
    s = trace_stats(wl([2.0, 2.0, 2.0], [1, 2, 3], [1, 2, 3]))
    assert s.duration_s == 0.0
    assert s.rate_per_s is None and s.interarrival_cv is None


def test_empty_workload_raises():
    with pytest.raises(ValueError, match="no requests"):
        trace_stats(Workload.from_requests([]))


# --- to_dict and format_stats --------------------------------------------------------------------------


def test_to_dict_keys_types_and_json():
    d = trace_stats(HAND).to_dict()
    assert set(d) == {"requests", "duration_s", "rate_per_s", "interarrival_cv", "input_tokens", "output_tokens"}
    for kind in ("input_tokens", "output_tokens"):
        assert set(d[kind]) == {"mean", "std", "median", "p99", "min", "max"}
        assert type(d[kind]["min"]) is int and type(d[kind]["max"]) is int
        for k in ("mean", "std", "median", "p99"):
            assert type(d[kind][k]) is float
    assert type(d["requests"]) is int
    for k in ("duration_s", "rate_per_s", "interarrival_cv"):
        assert type(d[k]) is float
    back = json.loads(json.dumps(d))
    assert back == d
    assert back["input_tokens"]["p99"] == approx(97.6)


def test_to_dict_untimed_is_json_null():
    d = trace_stats(wl([None, None], [1, 2], [3, 4])).to_dict()
    assert json.loads(json.dumps(d))["rate_per_s"] is None
    assert d["duration_s"] is None and d["interarrival_cv"] is None


def test_format_stats_timed():
    text = format_stats(trace_stats(HAND), title="hand")
    assert text.splitlines()[0] == "hand"
    assert "40.00 ± 35.36" in text  # input mean ± sample std
    assert "97.60" in text  # input p99
    assert "3.00 ± 1.58" in text  # output
    assert "0.400 req/s" in text
    assert "10.000 s" in text
    assert "0.447" in text  # CV
    assert "n/a" not in text
    input_line = next(line for line in text.splitlines() if line.startswith("input"))
    assert input_line.split()[-5:] == ["35.36", "30", "97.60", "10", "100"]


def test_format_stats_untimed():
    text = format_stats(trace_stats(wl([None] * 3, [1, 2, 3], [1, 2, 3])))
    assert text.count("n/a (no timing)") == 3
    for label in ("duration", "rate", "CV"):
        line = next(line for line in text.splitlines() if label in line)
        assert line.endswith("n/a (no timing)")


def test_format_stats_timed_but_too_few_requests():
    text = format_stats(trace_stats(wl([1.0], [1], [1])))
    assert "no timing" not in text
    assert "n/a" in text


def test_tracestats_is_frozen():
    s = trace_stats(HAND)
    assert isinstance(s, TraceStats)
    with pytest.raises(Exception):
        s.requests = 3  # type: ignore[misc]
