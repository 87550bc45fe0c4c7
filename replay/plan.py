"""Capacity planning: the fewest replicas (and so GPUs) that serve a trace within latency targets.

``plan_replicas`` answers "how many GPUs does this trace need at this p99 TTFT?" with the simulated engine:
it runs the same configuration at 1, 2, 4, ... replicas until the targets are met, then bisects between the
last count that missed and the first that met them. That assumes more replicas never make the tail worse,
which holds for these routers in practice but is not guaranteed; every count tried is reported, so a
non-monotone case shows. Each point is a normal run (its own run directory when ``out`` is given).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from replay.config import RunConfig
from replay.report.metrics import Summary

__all__ = ["Plan", "PlanPoint", "Target", "format_plan", "parse_target", "plan_replicas"]

_METRICS = ("ttft", "tpot", "itl", "e2el", "queue")
_PERCENTILES = ("mean", "median", "p90", "p99")
_TERM = re.compile(r"^(mean|median|p90|p99)_(ttft|tpot|itl|e2el|e2e|queue)\s*(?:<=|=)\s*"
                   r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?$")


@dataclass(frozen=True)
class Target:
    """Latency bounds, each ``(statistic, metric, seconds)``, e.g. ("p99", "ttft", 1.0); all must hold."""

    bounds: tuple[tuple[str, str, float], ...]

    def met_by(self, summary: Summary) -> bool:
        return all(self.value(summary, stat, metric) is not None and self.value(summary, stat, metric) <= bound
                   for stat, metric, bound in self.bounds)

    @staticmethod
    def value(summary: Summary, stat: str, metric: str) -> float | None:
        return getattr(getattr(summary, metric), f"{stat}_s")

    def __str__(self) -> str:
        return ", ".join(f"{stat} {metric.upper()} <= {bound * 1e3:g} ms" for stat, metric, bound in self.bounds)


def parse_target(text: str) -> Target:
    """``"p99_ttft=1s,p99_tpot=50ms"``: statistic (mean, median, p90, p99) _ metric (ttft, tpot, itl, e2el or
    e2e, queue) = bound in s or ms (bare number: seconds)."""
    bounds = []
    for part in (p.strip() for p in text.split(",")):
        m = _TERM.match(part.lower())
        if not m:
            raise ValueError(f"target {part!r}: expected STAT_METRIC=VALUE with STAT one of "
                             f"{', '.join(_PERCENTILES)}, METRIC one of ttft, tpot, itl, e2el, queue and VALUE "
                             "in s or ms, e.g. p99_ttft=1s")
        stat, metric, number, unit = m.groups()
        bound = float(number) / (1000.0 if unit == "ms" else 1.0)
        if bound <= 0:
            raise ValueError(f"target {part!r}: the bound must be > 0")
        bounds.append((stat, "e2el" if metric == "e2e" else metric, bound))
    if not bounds:
        raise ValueError("target: give at least one bound, e.g. p99_ttft=1s")
    return Target(tuple(bounds))


@dataclass(frozen=True)
class PlanPoint:
    replicas: int
    gpus: int
    meets: bool
    summary: Summary
    out: str | None


@dataclass(frozen=True)
class Plan:
    target: Target
    points: tuple[PlanPoint, ...]   # every replica count tried, ascending
    replicas: int | None            # the fewest that met the target; None if none up to max_replicas did
    max_replicas: int

    def to_dict(self) -> dict:
        return {"target": str(self.target), "replicas": self.replicas, "max_replicas": self.max_replicas,
                "gpus": None if self.replicas is None else next(p.gpus for p in self.points
                                                                  if p.replicas == self.replicas),
                "points": [{"replicas": p.replicas, "gpus": p.gpus, "meets": p.meets, "out": p.out,
                            **p.summary.to_dict()} for p in self.points]}


def plan_replicas(config: RunConfig, target: Target, max_replicas: int = 64,
                  run: Callable[[RunConfig], Summary] | None = None) -> Plan:
    """The fewest replicas of ``config`` (its tp, GPU, model and scheduler limits) meeting ``target``.

    ``run(config) -> Summary`` runs one point (default: ``replay.run.execute`` without a progress bar); with
    ``config.out`` set, point N writes ``<out>/replicas-N``.
    """
    if not isinstance(max_replicas, int) or max_replicas < 1:
        raise ValueError(f"max_replicas must be an integer >= 1, got {max_replicas!r}")
    if config.engine == "vllm":
        raise ValueError("plan runs many replicas on the simulated engine; the real one runs one replica per "
                         "process (drop --engine vllm)")
    config = replace(config, engine="sim")  # auto: always the simulated engine here
    if run is None:
        from replay.run import execute

        def run(c: RunConfig) -> Summary:
            return execute(c, progress=False).summary
    tried: dict[int, PlanPoint] = {}

    def point(n: int) -> PlanPoint:
        if n not in tried:
            out = str(Path(config.out) / f"replicas-{n}") if config.out else None
            summary = run(replace(config, replicas=n, out=out))
            tried[n] = PlanPoint(n, n * config.tp, target.met_by(summary), summary, out)
        return tried[n]

    low, high = 0, None  # low: most replicas known to miss; high: fewest known to meet
    n = 1
    while n <= max_replicas:
        if point(n).meets:
            high = n
            break
        low = n
        if n == max_replicas:
            break
        n = min(2 * n, max_replicas)
    if high is not None:
        while high - low > 1:
            mid = (low + high) // 2
            if point(mid).meets:
                high = mid
            else:
                low = mid
    points = tuple(tried[k] for k in sorted(tried))
    return Plan(target, points, high, max_replicas)


def format_plan(plan: Plan) -> str:
    """The points tried as a table, then the answer."""
    metrics = sorted({(stat, metric) for stat, metric, _ in plan.target.bounds}, key=str)
    head = f"{'replicas':>8} {'GPUs':>5} " + " ".join(f"{stat + ' ' + metric.upper() + ' ms':>15}"
                                                      for stat, metric in metrics)
    head += f" {'J/request':>10} {'req/s':>8}  meets"
    lines = [f"target: {plan.target}", head]
    for p in plan.points:
        cells = []
        for stat, metric in metrics:
            v = Target.value(p.summary, stat, metric)
            cells.append(f"{'-' if v is None else f'{v * 1e3:,.1f}':>15}")
        jpr = p.summary.energy_per_request_j
        rps = p.summary.request_throughput
        lines.append(f"{p.replicas:>8} {p.gpus:>5} " + " ".join(cells)
                     + f" {'-' if jpr is None else f'{jpr:,.1f}':>10} {'-' if rps is None else f'{rps:,.2f}':>8}"
                     + f"  {'yes' if p.meets else 'no'}")
    if plan.replicas is None:
        lines.append(f"no count up to {plan.max_replicas} replicas meets the target; raise --max-replicas, "
                     "or the target may be out of reach for this model and GPU (the prefill alone may exceed it)")
    else:
        best = next(p for p in plan.points if p.replicas == plan.replicas)
        lines.append(f"answer: {best.replicas} replica(s) of {best.gpus // best.replicas} GPU(s) = {best.gpus} "
                     f"GPU(s) meet {plan.target}")
    return "\n".join(lines)
