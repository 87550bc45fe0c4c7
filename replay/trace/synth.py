"""Synthetic workloads: seeded, reproducible arrivals and token lengths, or lengths resampled from a trace.

Inter-arrival gaps follow vLLM's benchmark definition: gamma with shape ``k = 1/cv**2`` (its "burstiness")
and scale ``1/(rate_per_s*k)``, so ``cv=1`` is a Poisson process (exponential gaps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from replay.trace.schema import SCHEMA, Workload

ARRIVALS = ("poisson", "gamma", "none")


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A token-length distribution: ``const`` (a=N), ``uniform`` (a=LO, b=HI, inclusive) or ``lognormal``
    (a=MEAN, b=STD in tokens)."""

    kind: str
    a: float
    b: float = 0.0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` token counts (int64, each at least 1) using ``rng``."""
        if self.kind == "const":
            out = np.full(n, self.a)
        elif self.kind == "uniform":
            out = rng.integers(int(self.a), int(self.b), size=n, endpoint=True)
        else:  # lognormal with the asked mean and std in tokens (moment-matched)
            sigma2 = math.log1p((self.b / self.a) ** 2)
            out = np.rint(rng.lognormal(math.log(self.a) - sigma2 / 2, math.sqrt(sigma2), size=n))
        return np.maximum(out, 1).astype(np.int64)


def parse_length_spec(spec: str) -> LengthDist:
    """Parse ``const:N``, ``uniform:LO,HI`` or ``lognormal:MEAN,STD`` (tokens); bad specs raise ValueError."""
    name, _, args = spec.strip().partition(":")
    need = {"const": "const needs one integer N>=1",
            "uniform": "uniform needs integers LO,HI with 1<=LO<=HI",
            "lognormal": "lognormal needs MEAN,STD with MEAN>0 and STD>=0"}
    if name not in need:
        raise ValueError(f"unknown length spec {spec!r}: expected const:N, uniform:LO,HI or "
                         "lognormal:MEAN,STD")
    try:
        vals = [float(v) for v in args.split(",")] if args.strip() else []
    except ValueError:
        vals = None
    ok = vals is not None and all(math.isfinite(v) for v in vals)
    if ok and name == "const":
        ok = len(vals) == 1 and vals[0].is_integer() and vals[0] >= 1
    elif ok and name == "uniform":
        ok = len(vals) == 2 and all(v.is_integer() for v in vals) and 1 <= vals[0] <= vals[1]
    elif ok:
        ok = len(vals) == 2 and vals[0] > 0 and vals[1] >= 0
    if not ok:
        raise ValueError(f"{need[name]}, got {spec!r}")
    return LengthDist(name, *vals)


def _like_timing(like: Workload) -> tuple[float | None, float | None]:
    """The (rate_per_s, inter-arrival CV) of a timed trace, None where it cannot be estimated."""
    if not like.timed or len(like) < 2:
        return None, None
    t = np.sort(like.arrival_s)
    span_s, gaps_s = t[-1] - t[0], np.diff(t)
    rate = (len(t) - 1) / span_s if span_s > 0 else None
    cv = float(gaps_s.std() / gaps_s.mean()) if gaps_s.mean() > 0 and gaps_s.std() > 0 else None
    return rate, cv


def gamma_gaps_s(rng: np.random.Generator, n: int, rate_per_s: float, cv: float) -> np.ndarray:
    """n inter-arrival gaps, gamma with shape 1/cv^2 and scale 1/(rate*shape): mean 1/rate, CV cv.

    This is vLLM's benchmark burstiness (burstiness = 1/cv^2); cv=1 gives Poisson arrivals.
    """
    k = 1.0 / cv**2
    return rng.gamma(k, 1.0 / (rate_per_s * k), size=n)


def _arrivals_s(rng: np.random.Generator, rate_per_s: float, cv: float,
                requests: int | None, duration_s: float | None) -> np.ndarray:
    """Arrival times from 0.0 with gamma gaps (shape 1/cv^2, mean 1/rate), ``requests`` of them or all
    before ``duration_s``; rounded to whole ns."""
    if requests is not None:
        t = np.concatenate([[0.0], np.cumsum(gamma_gaps_s(rng, max(requests - 1, 0), rate_per_s, cv))])
    else:
        chunk, parts, end = int(rate_per_s * duration_s * 1.1) + 16, [np.zeros(1)], 0.0
        while end < duration_s:  # draw chunks until an arrival lands at or beyond duration_s
            parts.append(end + np.cumsum(gamma_gaps_s(rng, chunk, rate_per_s, cv)))
            end = parts[-1][-1]
        t = np.concatenate(parts)
        t = t[t < duration_s]
    return np.round(t * 1e9) / 1e9


def synthesize(*, requests: int | None = None, duration_s: float | None = None,
               like: Workload | None = None,
               input: LengthDist | None = None, output: LengthDist | None = None,
               arrival: str = "poisson", rate_per_s: float | None = None, cv: float = 1.0,
               seed: int = 0, kind: str | None = None, source: str = "synth") -> Workload:
    """Build a seeded synthetic workload of ``requests`` requests, or of all arrivals before ``duration_s``.

    Lengths come from ``like`` (its joint (input, output) pairs resampled with replacement, keeping their
    correlation) or from independent ``input``/``output`` distributions. Arrivals are ``poisson`` (cv=1),
    ``gamma`` (gaps with the given cv) or ``none`` (untimed). When ``like`` is timed and ``rate_per_s`` is
    None, its rate (n-1)/(last-first arrival) is used, and for ``gamma`` with cv left at 1.0 also its
    inter-arrival CV (population std / mean of the gaps). The same arguments and seed give the same table.
    """
    if (requests is None) == (duration_s is None):
        raise ValueError("give exactly one of requests or duration_s")
    if requests is not None and (isinstance(requests, bool) or int(requests) != requests or requests < 1):
        raise ValueError(f"requests must be a positive integer, got {requests!r}")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive finite number, got {duration_s!r}")
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    specs = (input is not None) + (output is not None)
    if (like is None and specs != 2) or (like is not None and specs):
        raise ValueError("give either like (a workload to resample lengths from) or both input and output")
    if like is not None and len(like) == 0:
        raise ValueError("like workload has no requests to resample lengths from")
    if arrival == "poisson" and cv != 1.0:
        raise ValueError(f"poisson arrivals have cv=1, got cv={cv}; use arrival='gamma' for another cv")
    if arrival == "none" and requests is None:
        raise ValueError("untimed arrivals (arrival='none') need requests, not duration_s")
    rng = np.random.default_rng(seed)
    if arrival == "none":
        n, arrival_s = int(requests), pa.nulls(int(requests), pa.float64())
    else:
        if rate_per_s is None and like is not None:
            like_rate, like_cv = _like_timing(like)
            rate_per_s = like_rate
            if arrival == "gamma" and cv == 1.0 and like_cv is not None:
                cv = like_cv
        if rate_per_s is None:
            raise ValueError("timed synthesis needs --rate (rate_per_s): none given and no timed 'like' "
                             "trace to take it from")
        if not (math.isfinite(rate_per_s) and rate_per_s > 0) or not (math.isfinite(cv) and cv > 0):
            raise ValueError(f"rate_per_s and cv must be > 0, got rate_per_s={rate_per_s}, cv={cv}")
        times = _arrivals_s(rng, rate_per_s, cv, None if requests is None else int(requests), duration_s)
        n, arrival_s = len(times), pa.array(times, pa.float64())
    if like is not None:
        pick = rng.integers(0, len(like), size=n)
        inp, out = like.input_tokens[pick], like.output_tokens[pick]
    else:
        inp, out = input.sample(rng, n), output.sample(rng, n)
    cols = {"id": pa.array([f"synth-{i}" for i in range(n)], pa.string()), "arrival_s": arrival_s,
            "input_tokens": pa.array(inp, pa.int64()), "output_tokens": pa.array(out, pa.int64()),
            "kind": pa.array([kind] * n, pa.string())}
    for f in SCHEMA:
        cols.setdefault(f.name, pa.nulls(n, f.type))
    return Workload(pa.Table.from_arrays([cols[f.name] for f in SCHEMA], schema=SCHEMA), source)
