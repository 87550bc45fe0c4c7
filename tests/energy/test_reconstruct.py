"""Steps reconstructed from token times (replay.energy.reconstruct), checked against runs whose steps are known:
the simulated engine's records give every token's step, so the reconstruction from their times alone must
find the same steps; jitter, late tokens, merged chunks, long prompts and idle gaps are built by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import TRACES
from replay.config import RunConfig
from replay.energy.reconstruct import reconstruct_steps, spread_times
from replay.run import execute


def seen_by_a_client(requests: pd.DataFrame, steps: pd.DataFrame, jitter_s: float = 0.0, seed: int = 0):
    """The records a server client would have: send times and token times (the end of each step a request
    emitted in, plus a uniform delay up to ``jitter_s``), and nothing of the steps."""
    end = {(int(r), int(k)): e for r, k, e in zip(steps["replica"], steps["step"], steps["end_s"])}
    rng = np.random.default_rng(seed)
    out = requests[["id", "replica", "status", "input_tokens", "output_tokens", "cached_tokens",
                    "submitted_s", "finished_s", "token_steps"]].copy()
    times = []
    for replica, runs in zip(out["replica"], out["token_steps"]):
        t = np.array([end[(int(replica), f + j)] for f, c in runs for j in range(c)])
        times.append(np.maximum.accumulate(t + rng.uniform(0, jitter_s, t.size)).tolist())
    out["token_times_s"] = times
    out["sent_s"] = out["submitted_s"]
    return out.drop(columns=["token_steps"])


@pytest.fixture(scope="module")
def sim_run():
    r = execute(RunConfig(trace=str(TRACES / "chat.jsonl"), engine="sim", duration_s=120.0, max_num_batched_tokens=2048),
                progress=False)
    return r.requests, r.steps


def partition(token_steps: list) -> list[tuple[int, int]]:
    """(request index, step) of every token."""
    return [(i, f + j) for i, runs in enumerate(token_steps) for f, c in runs for j in range(c)]


def same_grouping(exact: list, rebuilt: list) -> bool:
    """True when the tokens fall into the same groups in both (steps renumbered: emitting steps only)."""
    a, b = partition(exact), partition(rebuilt)
    if sorted(t for t, _ in a) != sorted(t for t, _ in b):
        return False
    mapping: dict[int, int] = {}
    for (i, s), (j, t) in zip(sorted(a), sorted(b)):
        if mapping.setdefault(s, t) != t:
            return False
    return len(set(mapping.values())) == len(mapping)


def test_exact_token_times_give_back_the_emitting_steps(sim_run):
    requests, steps = sim_run
    rebuilt = reconstruct_steps(seen_by_a_client(requests, steps), token_budget=2048)
    emitting = {(r, f + j) for r, runs in zip(requests["replica"], requests["token_steps"]) for f, c in runs
                for j in range(c)}
    assert len(rebuilt.steps) == len(emitting)
    assert same_grouping(requests["token_steps"].tolist(), rebuilt.token_steps)
    assert rebuilt.steps["decode_tokens"].sum() == (requests["generated_tokens"] - 1).sum()
    assert rebuilt.steps["prefill_tokens"].sum() == (requests["input_tokens"] - requests["cached_tokens"]).sum()


def test_jitter_within_the_window_keeps_the_steps(sim_run):
    requests, steps = sim_run
    tpot = float(requests["tpot_s"].median())
    rebuilt = reconstruct_steps(seen_by_a_client(requests, steps, jitter_s=0.1 * tpot, seed=1))
    assert same_grouping(requests["token_steps"].tolist(), rebuilt.token_steps)
    spread = rebuilt.replicas[0]["delivery_spread_p99_s"]
    assert 0 < spread <= 0.1 * tpot


def record(rid, sent, times, n_in=10, cached=0, replica=0):
    return {"id": rid, "replica": replica, "status": "finished", "input_tokens": n_in, "output_tokens": len(times),
            "cached_tokens": cached, "sent_s": sent, "finished_s": times[-1], "token_times_s": times}


def test_a_token_delivered_after_the_next_steps_first_goes_back_to_its_own_step():
    # steps end at 1.00, 1.10, 1.20; b's second token (step 2) is seen at 1.115, after a's third (1.101)
    a = record("a", 0.9, [1.00, 1.10, 1.20])
    b = record("b", 0.9, [1.001, 1.115, 1.201])
    rebuilt = reconstruct_steps([a, b])
    assert rebuilt.token_steps == [[[0, 3]], [[0, 3]]]
    assert rebuilt.steps["end_s"].tolist() == [1.00, 1.10, 1.20]


def test_a_chunk_of_several_tokens_is_spread_back_to_the_token_before():
    assert spread_times([1.0, 1.4, 1.4, 1.4]).tolist() == pytest.approx([1.0, 1.1333333, 1.2666667, 1.4])
    assert spread_times([2.0, 2.0]).tolist() == [2.0, 2.0]   # a first chunk has nothing before it


def test_a_long_prompt_is_chunked_back_over_the_steps_before_its_first_token_within_the_budget():
    decoding = record("d", 0.0, [0.1 * k for k in range(1, 11)], n_in=50)       # steps end at 0.1 .. 1.0
    long = record("p", 0.45, [0.8, 0.9, 1.0], n_in=5000, cached=1000)           # sent mid-run, 4000 to compute
    rebuilt = reconstruct_steps([decoding, long], token_budget=2048)
    chunks = rebuilt.prefill_steps[1]
    assert sum(q for _, q, _ in chunks) == 4000 and chunks[-1][0] == rebuilt.token_steps[1][0][0] == 7
    assert [c for _, _, c in chunks] == [1000 + sum(q for _, q, _ in chunks[:i]) for i in range(len(chunks))]
    steps = rebuilt.steps.set_index("step")
    assert all(steps.loc[k, "end_s"] > 0.45 for k, _, _ in chunks)               # never before it was sent
    assert (steps["prefill_tokens"] + steps["decode_tokens"] <= 2048).all()
    whole = reconstruct_steps([decoding, long])                                  # no budget: all at the first token
    assert whole.prefill_steps[1] == [[7, 4000, 1000]]


def test_idle_time_between_requests_stays_outside_every_step():
    a = record("a", 0.0, [0.2, 0.3])
    b = record("b", 5.0, [5.3, 5.4])
    steps = reconstruct_steps([a, b]).steps
    assert steps["start_s"].tolist() == [0.0, 0.2, 5.0, 5.3]
    assert steps["end_s"].tolist() == [0.2, 0.3, 5.3, 5.4]


def test_the_servers_own_step_count_calibrates_the_window(sim_run):
    requests, steps = sim_run
    seen = seen_by_a_client(requests, steps, jitter_s=float(requests["tpot_s"].median()), seed=2)
    plain = reconstruct_steps(seen)
    truth = len(reconstruct_steps(seen_by_a_client(requests, steps)).steps)
    calibrated = reconstruct_steps(seen, steps_known={0: truth})
    assert abs(len(calibrated.steps) - truth) <= abs(len(plain.steps) - truth)
    assert calibrated.replicas[0]["server_steps"] == truth


def test_token_times_out_of_order_name_the_request():
    with pytest.raises(ValueError, match=r"request 'x': field 'token_times_s'"):
        reconstruct_steps([record("x", 0.0, [1.0, 0.5])])
