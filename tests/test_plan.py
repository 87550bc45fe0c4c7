"""Capacity planning (replay.plan) on real simulated runs: the answer meets the target and one replica fewer
does not; the search reports every count it tried."""

from __future__ import annotations

import json

import pytest

from conftest import TRACES
from replay.config import RunConfig
from replay.plan import Target, format_plan, parse_target, plan_replicas
from replay.run import execute

# an overloaded slice: the first 400 chat requests at 12x their load on an A100 40GB
BASE = RunConfig(trace=str(TRACES / "chat.jsonl"), limit=400, rate_scale=12.0, gpu="a100-40gb",
                 router="least-outstanding")


def p99_ttft(replicas: int) -> float:
    from dataclasses import replace
    return execute(replace(BASE, replicas=replicas), progress=False).summary.ttft.p99_s


def test_the_answer_meets_the_target_and_one_fewer_does_not():
    target_s = 0.5 * p99_ttft(2)
    plan = plan_replicas(BASE, Target((("p99", "ttft", target_s),)), max_replicas=16)
    assert plan.replicas is not None and plan.replicas > 2
    tried = {p.replicas: p for p in plan.points}
    assert tried[plan.replicas].meets and tried[plan.replicas].summary.ttft.p99_s <= target_s
    assert not tried[plan.replicas - 1].meets  # the search pinned it down from below
    assert p99_ttft(plan.replicas - 1) > target_s   # and an independent run agrees
    assert [p.replicas for p in plan.points] == sorted(tried)
    assert all(p.gpus == p.replicas for p in plan.points)
    text = format_plan(plan)
    assert f"answer: {plan.replicas} replica(s)" in text
    json.dumps(plan.to_dict(), allow_nan=False)


def test_tensor_parallel_replicas_count_their_gpus():
    from dataclasses import replace
    plan = plan_replicas(replace(BASE, tp=2), parse_target("p99_ttft=1000s"), max_replicas=4)
    assert plan.replicas == 1 and plan.points[0].gpus == 2


def test_an_unreachable_target_says_so(tmp_path):
    from dataclasses import replace
    plan = plan_replicas(replace(BASE, limit=100, out=str(tmp_path / "plan")), parse_target("p99_ttft=0.1ms"),
                         max_replicas=3)
    assert plan.replicas is None and [p.replicas for p in plan.points] == [1, 2, 3]
    assert "no count up to 3 replicas" in format_plan(plan)
    for n in (1, 2, 3):  # every point is a normal run directory
        assert (tmp_path / "plan" / f"replicas-{n}" / "summary.json").exists()


@pytest.mark.parametrize("text, needle", [
    ("p99_ttft", "STAT_METRIC=VALUE"), ("p95_ttft=1s", "STAT_METRIC=VALUE"), ("p99_ttft=0", "> 0"),
    ("p99_ttft=1h", "STAT_METRIC=VALUE"), ("", "STAT_METRIC=VALUE"),
])
def test_bad_targets(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_target(text)


def test_target_forms():
    t = parse_target("p99_ttft=1s, median_tpot=50ms,p90_e2e=20")
    assert t.bounds == (("p99", "ttft", 1.0), ("median", "tpot", 0.05), ("p90", "e2el", 20.0))
