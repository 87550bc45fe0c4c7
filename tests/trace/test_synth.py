"""Tests for replay.trace.synth: arrival statistics, length specs, joint resampling, seeds, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replay.trace.schema import Request, Workload
from replay.trace.synth import LengthDist, parse_length_spec, synthesize

N = 20_000
CONST = parse_length_spec("const:7")


def _gaps_s(w: Workload) -> np.ndarray:
    return np.diff(w.arrival_s)


@pytest.mark.parametrize("arrival,cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0)])
def test_arrival_rate_and_cv_match_request(arrival: str, cv: float) -> None:
    rate = 25.0
    w = synthesize(requests=N, input=CONST, output=CONST, arrival=arrival, rate_per_s=rate, cv=cv, seed=1)
    t = w.arrival_s
    assert len(w) == N and w.timed
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    n = N - 1  # gaps
    # Rate (n gaps)/(span): span is a sum of n iid gaps of mean 1/rate and CV cv -> relative SE cv/sqrt(n).
    assert abs(n / t[-1] / rate - 1) < 4 * cv / math.sqrt(n)
    # Sample CV of gamma gaps: delta-method SE is cv*sqrt((1+cv^2)/(2n)); allow 5 SE for the heavy cv=3 tail.
    g = _gaps_s(w)
    assert abs(g.std() / g.mean() - cv) < 5 * cv * math.sqrt((1 + cv**2) / (2 * n))
    # Nanosecond resolution: every arrival is a whole number of ns.
    assert np.allclose(np.round(t * 1e9), t * 1e9, rtol=0, atol=1e-3)


def test_duration_mode_bounds_and_count() -> None:
    rate, dur = 50.0, 400.0
    w = synthesize(duration_s=dur, input=CONST, output=CONST, rate_per_s=rate, seed=3)
    t = w.arrival_s
    assert t[0] == 0.0 and np.all(t < dur) and np.all(np.diff(t) >= 0)
    # Count = 1 + Poisson(rate*dur): 4 standard deviations.
    assert abs(len(w) - 1 - rate * dur) < 4 * math.sqrt(rate * dur)


def test_duration_mode_short_duration_has_first_request() -> None:
    w = synthesize(duration_s=1e-6, input=CONST, output=CONST, rate_per_s=1.0, seed=0)
    assert len(w) >= 1 and w.arrival_s[0] == 0.0


def test_same_seed_same_table_different_seed_differs() -> None:
    kw = dict(requests=500, input=parse_length_spec("lognormal:300,100"),
              output=parse_length_spec("uniform:1,50"), arrival="gamma", rate_per_s=4.0, cv=2.0, kind="chat")
    a, b, c = synthesize(seed=9, **kw), synthesize(seed=9, **kw), synthesize(seed=10, **kw)
    assert a.table.equals(b.table)
    assert not a.table.equals(c.table)
    assert not np.array_equal(a.input_tokens, c.input_tokens)
    assert not np.array_equal(a.arrival_s, c.arrival_s)


def test_ids_kind_and_source() -> None:
    w = synthesize(requests=3, input=CONST, output=CONST, rate_per_s=1.0, kind="code", source="mysynth")
    assert [r.id for r in w] == ["synth-0", "synth-1", "synth-2"]
    assert all(r.kind == "code" for r in w) and w.source == "mysynth"
    assert all(r.session_id is None and r.prefix_blocks is None for r in w)
    assert synthesize(requests=2, input=CONST, output=CONST, rate_per_s=1.0)[0].kind is None


def _correlated_source(n: int = 2000, seed: int = 5) -> Workload:
    rng = np.random.default_rng(seed)
    inp = rng.integers(100, 4000, size=n)
    out = np.maximum(1, inp // 4 + rng.integers(-150, 150, size=n))
    times = np.sort(rng.uniform(0, 100, size=n))
    times -= times[0]
    return Workload.from_requests(
        [Request(f"r{i}", float(times[i]), int(inp[i]), int(out[i])) for i in range(n)], source="src")


def test_like_resamples_joint_pairs_and_keeps_correlation() -> None:
    src = _correlated_source()
    r_src = np.corrcoef(src.input_tokens, src.output_tokens)[0, 1]
    assert r_src > 0.9
    w = synthesize(requests=N, like=src, rate_per_s=10.0, seed=2)
    pairs = set(zip(src.input_tokens.tolist(), src.output_tokens.tolist()))
    assert all(p in pairs for p in zip(w.input_tokens.tolist(), w.output_tokens.tolist()))
    r = np.corrcoef(w.input_tokens, w.output_tokens)[0, 1]
    # Normal-theory SE of r is (1-r^2)/sqrt(n) (~0.001 here); 0.02 is generous but still rejects independence.
    assert abs(r - r_src) < 0.02


def test_like_timed_supplies_rate_and_gamma_cv() -> None:
    src = synthesize(requests=N, input=CONST, output=CONST, arrival="gamma", rate_per_s=8.0, cv=2.0, seed=4)
    t = src.arrival_s
    like_rate = (len(t) - 1) / (t[-1] - t[0])
    g = np.diff(t)
    like_cv = g.std() / g.mean()
    w = synthesize(requests=N, like=src, arrival="gamma", seed=6)
    n = N - 1
    assert abs(n / w.arrival_s[-1] / like_rate - 1) < 4 * like_cv / math.sqrt(n)
    gw = _gaps_s(w)
    assert abs(gw.std() / gw.mean() - like_cv) < 5 * like_cv * math.sqrt((1 + like_cv**2) / (2 * n))
    # Poisson keeps cv=1 even when the like-trace is bursty; an explicit rate overrides the like-trace's.
    p = _gaps_s(synthesize(requests=N, like=src, arrival="poisson", rate_per_s=100.0, seed=6))
    assert abs(p.std() / p.mean() - 1.0) < 5 * math.sqrt(1 / n)
    assert abs(n / p.sum() / 100.0 - 1) < 4 / math.sqrt(n)


def test_like_untimed_needs_rate_and_empty_like_rejected() -> None:
    untimed = synthesize(requests=10, input=CONST, output=CONST, arrival="none")
    with pytest.raises(ValueError, match="rate"):
        synthesize(requests=10, like=untimed)
    assert len(synthesize(requests=10, like=untimed, arrival="none")) == 10
    empty = Workload.from_requests([], source="empty")
    with pytest.raises(ValueError, match="no requests"):
        synthesize(requests=10, like=empty, rate_per_s=1.0)


def test_const_spec_exact() -> None:
    d = parse_length_spec("const:128")
    assert d == LengthDist("const", 128)
    s = d.sample(np.random.default_rng(0), 1000)
    assert s.dtype == np.int64 and np.all(s == 128)


def test_uniform_spec_inclusive_bounds() -> None:
    s = parse_length_spec("uniform:3,9").sample(np.random.default_rng(0), 10_000)
    assert s.dtype == np.int64 and s.min() == 3 and s.max() == 9
    assert set(np.unique(s).tolist()) == set(range(3, 10))


def test_lognormal_spec_mean_and_std() -> None:
    mean, std, n = 500.0, 200.0, 50_000
    s = parse_length_spec("lognormal:500,200").sample(np.random.default_rng(0), n)
    assert s.dtype == np.int64 and s.min() >= 1
    # SE of the mean is std/sqrt(n); SE of the sample std is std*sqrt((kurtosis-1)/(4n)), lognormal kurtosis.
    sig2 = math.log1p((std / mean) ** 2)
    kurt = math.exp(4 * sig2) + 2 * math.exp(3 * sig2) + 3 * math.exp(2 * sig2) - 3
    assert abs(s.mean() - mean) < 4 * std / math.sqrt(n)
    assert abs(s.std() - std) < 4 * std * math.sqrt((kurt - 1) / (4 * n))


def test_lengths_at_least_one() -> None:
    rng = np.random.default_rng(0)
    s = parse_length_spec("lognormal:2,20").sample(rng, 10_000)  # most mass rounds to 0 before clipping
    assert s.min() == 1
    assert parse_length_spec("lognormal:10,0").sample(rng, 5).tolist() == [10] * 5


@pytest.mark.parametrize("spec", ["lognormal:5", "lognormal:5,-1", "lognormal:0,1", "uniform:9,3",
                                  "uniform:1.5,3", "uniform:0,3", "const:0", "const:abc", "const:",
                                  "const:1,2", "zipf:1",
                                  "nonsense", "lognormal:nan,1"])
def test_bad_specs_name_the_spec(spec: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_length_spec(spec)
    assert repr(spec) in str(e.value)


def test_untimed_arrival_none() -> None:
    w = synthesize(requests=50, input=CONST, output=CONST, arrival="none", seed=1)
    assert len(w) == 50 and not w.timed
    assert w.table.column("arrival_s").null_count == 50
    with pytest.raises(ValueError, match="requests"):
        synthesize(duration_s=10.0, input=CONST, output=CONST, arrival="none")


@pytest.mark.parametrize("kw,match", [
    (dict(), "exactly one"),
    (dict(requests=10, duration_s=5.0), "exactly one"),
    (dict(requests=10, cv=2.0), "poisson"),
    (dict(requests=10, rate_per_s=None), "rate"),
    (dict(requests=10, rate_per_s=0.0), "> 0"),
    (dict(requests=10, arrival="gamma", cv=0.0), "> 0"),
    (dict(requests=0), "positive"),
    (dict(requests=10, arrival="uniform"), "arrival"),
])
def test_errors(kw: dict, match: str) -> None:
    args = dict(input=CONST, output=CONST, rate_per_s=1.0)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        synthesize(**args)


def test_lengths_need_like_xor_specs() -> None:
    src = _correlated_source(50)
    for kw in (dict(), dict(input=CONST), dict(output=CONST), dict(like=src, input=CONST, output=CONST),
               dict(like=src, input=CONST)):
        with pytest.raises(ValueError, match="either like"):
            synthesize(requests=5, rate_per_s=1.0, **kw)
