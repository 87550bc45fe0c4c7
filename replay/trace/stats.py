"""Summary statistics of a workload, in the form of [Na25] Table 1 (tokens as mean ± std, median, p99).

Definitions (a contract; the tests check each one):

- ``requests``: the number of rows.
- ``duration_s`` = last arrival - first arrival (the workload is ordered by arrival). ``0.0`` for a single
  timed request.
- ``rate_per_s`` = (requests - 1) / duration_s, i.e. 1 / mean inter-arrival gap. ``None`` with fewer than
  2 requests or when duration_s is not positive (all requests at the same instant).
- ``interarrival_cv`` = std / mean of the gaps ``np.diff(arrival_s)``, std with ddof=0 (population).
  ``None`` with fewer than 2 gaps (fewer than 3 requests) or when the mean gap is 0.
- For an untimed workload (``not workload.timed``: any request lacks an arrival time) ``duration_s``,
  ``rate_per_s`` and ``interarrival_cv`` are all ``None``.
- Token statistics, separately for input and output tokens: ``mean``; ``std`` the sample standard
  deviation (ddof=1; ``0.0`` for a single request); ``median`` and ``p99`` by ``numpy.percentile`` with its
  default linear interpolation (the value at rank ``q/100 * (n - 1)`` of the sorted values, interpolated
  between neighbours); ``min`` and ``max`` as ints.
- An empty workload raises ``ValueError``.

Everything is vectorized numpy, so this runs on traces of tens of millions of requests.

[Na25] Fernandez et al., "Energy Considerations of Large Language Model Inference and Efficiency
Optimizations", ACL 2025, Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replay.trace.schema import Workload

__all__ = ["TokenStats", "TraceStats", "trace_stats", "format_stats"]

_TOKEN_KEYS = ("mean", "std", "median", "p99", "min", "max")
NO_TIMING = "n/a (no timing)"


@dataclass(frozen=True)
class TokenStats:
    """Distribution of one token count (input or output) over a workload."""

    mean: float
    std: float
    median: float
    p99: float
    min: int
    max: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in _TOKEN_KEYS}


@dataclass(frozen=True)
class TraceStats:
    """Size, timing and token statistics of a workload (see the module docstring for the definitions)."""

    requests: int
    duration_s: float | None
    rate_per_s: float | None
    interarrival_cv: float | None
    input_tokens: TokenStats
    output_tokens: TokenStats

    def to_dict(self) -> dict:
        """Plain python ints, floats and None, ready for ``json.dumps``."""
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "rate_per_s": self.rate_per_s,
            "interarrival_cv": self.interarrival_cv,
            "input_tokens": self.input_tokens.to_dict(),
            "output_tokens": self.output_tokens.to_dict(),
        }


def _token_stats(values: np.ndarray) -> TokenStats:
    x = np.asarray(values)
    n = x.size
    mean = float(np.mean(x, dtype=np.float64))
    std = float(np.std(x, ddof=1, dtype=np.float64)) if n > 1 else 0.0
    median, p99 = (float(v) for v in np.percentile(x, [50.0, 99.0]))
    return TokenStats(mean=mean, std=std, median=median, p99=p99, min=int(x.min()), max=int(x.max()))


def trace_stats(workload: Workload) -> TraceStats:
    """Compute :class:`TraceStats` for ``workload``; raises ``ValueError`` if it has no requests."""
    n = len(workload)
    if n == 0:
        src = f" {workload.source}" if workload.source else ""
        raise ValueError(f"cannot compute statistics of workload{src}: no requests")

    duration = rate = cv = None
    if workload.timed:
        arrival = np.asarray(workload.arrival_s, dtype=np.float64)
        duration = float(arrival[-1] - arrival[0])
        if n >= 2 and duration > 0:
            rate = (n - 1) / duration
        if n >= 3:
            gaps = np.diff(arrival)
            mean_gap = float(gaps.mean())
            if mean_gap != 0:
                cv = float(gaps.std(ddof=0)) / mean_gap

    return TraceStats(
        requests=int(n),
        duration_s=duration,
        rate_per_s=rate,
        interarrival_cv=cv,
        input_tokens=_token_stats(workload.input_tokens),
        output_tokens=_token_stats(workload.output_tokens),
    )


def _num(x: float) -> str:
    """An integral value without decimals (as [Na25] prints medians), others with two."""
    return f"{int(x)}" if float(x).is_integer() else f"{x:.2f}"


def format_stats(stats: TraceStats, title: str = "") -> str:
    """A human-readable table in the form of [Na25] Table 1: per token kind mean ± std, median, p99, min, max,
    preceded by the request count, duration, arrival rate and inter-arrival CV."""
    timed = stats.duration_s is not None

    def timing(value: float | None, fmt: str) -> str:
        if value is not None:
            return fmt.format(value)
        # A timed workload can still lack a rate or CV (too few requests, or all at one instant).
        return "n/a" if timed else NO_TIMING

    rows = [
        ("requests", f"{stats.requests}"),
        ("duration", timing(stats.duration_s, "{:.3f} s")),
        ("rate", timing(stats.rate_per_s, "{:.3f} req/s")),
        ("inter-arrival CV", timing(stats.interarrival_cv, "{:.3f}")),
    ]

    header = ("tokens", "mean ± std", "median", "p99", "min", "max")
    table = [header]
    for name, t in (("input", stats.input_tokens), ("output", stats.output_tokens)):
        table.append((name, f"{t.mean:.2f} ± {t.std:.2f}", _num(t.median), _num(t.p99), str(t.min), str(t.max)))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    label_w = max(len(k) for k, _ in rows)
    lines = [title] if title else []
    lines += [f"{k:<{label_w}}  {v}" for k, v in rows]
    lines.append("")
    for r in table:
        lines.append("  ".join(
            (c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(r)
        ).rstrip())
    return "\n".join(lines)
