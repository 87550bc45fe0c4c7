"""The server loop, the router and the records: timestamps and derived latencies, step records contiguous per
replica, token and energy totals, rejections, the records against the Steps the engine returned, fused decode
runs against single-stepping, and the routing policies."""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
import simpy
import simpy.rt

from conftest import DATA, TRACES
from replay.engines.sim.engine import SimEngine
from replay.engines.sim.perf import PerfParams
from replay.report.metrics import Energy, format_summary, summarize
from replay.run import simulate
from replay.server import STEP_FIELDS, Recorder, Router, ServerLoop
from replay.specs import hardware, model
from replay.trace import read_trace
from replay.trace.schema import Request, Workload

LLAMA, H100 = model("llama-3.1-8b"), hardware("h100-sxm")
_TRACES: dict[str, Workload] = {}


def trace_slice(name: str, n: int, start: int = 0) -> Workload:
    """Requests start..start+n-1 of a bundled trace (or a test sample), times re-based to the first of them."""
    if name not in _TRACES:
        _TRACES[name] = read_trace(TRACES / name if (TRACES / name).exists() else DATA / name)
    table = _TRACES[name].table.slice(start, n)
    t = table.column("arrival_s").to_numpy()
    table = table.set_column(1, "arrival_s", [t - t[0]])
    return Workload(table, f"{name}[{start}:{start + n}]")


def engine(**kw) -> SimEngine:
    return SimEngine(LLAMA, H100, **kw)


class SingleStep:
    """Nothing but the Engine protocol around a SimEngine, asking for one iteration at a time (no request may be
    further away than now, so no fused decode run), and keeping every Step it returned."""

    def __init__(self, inner: SimEngine):
        self.inner = inner
        self.steps: list = []

    def add(self, request: Request) -> str | None:
        return self.inner.add(request)

    def has_work(self) -> bool:
        return self.inner.has_work()

    def step(self, horizon_s: float = math.inf):
        step = self.inner.step(0.0)
        assert getattr(step, "run", None) is None
        self.steps.append(step)
        return step


def steps_frame(recorder: Recorder) -> pd.DataFrame:
    if hasattr(recorder, "steps_frame"):
        return recorder.steps_frame()
    return pd.DataFrame.from_records(recorder.steps, columns=list(STEP_FIELDS))


def serve(workload: Workload, engines: list, arrival: str = "timed", router: str = "round-robin", **params):
    """Replay ``workload`` on ``engines``: (requests frame in workload order, steps frame, server loops)."""
    recorder = Recorder()
    loops = simulate(workload, engines, arrival, params, recorder, router)
    requests = pd.DataFrame(recorder.requests)
    order = {r.id: i for i, r in enumerate(workload)}
    requests = requests.sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)
    return requests, steps_frame(recorder), loops


def runs_to_steps(token_steps) -> list[int]:
    return [k for start, count in token_steps for k in range(start, start + count)]


def check_records(requests: pd.DataFrame, steps: pd.DataFrame, max_tokens: int = 8192, max_seqs: int = 256):
    """What every run's records must satisfy, whatever the engine did."""
    assert set(requests["status"]) <= {"finished", "rejected"}
    fin = requests[requests["status"] == "finished"]
    rej = requests[requests["status"] == "rejected"]
    # timestamps in order, latencies consistent with them
    assert (fin["arrival_s"] <= fin["submitted_s"]).all()
    assert (fin["submitted_s"] <= fin["admitted_s"]).all()
    assert (fin["admitted_s"] < fin["first_token_s"]).all()
    assert (fin["first_token_s"] <= fin["finished_s"]).all()
    for _, r in fin.iterrows():
        assert r["queue_s"] == pytest.approx(r["admitted_s"] - r["arrival_s"], abs=1e-12)
        assert r["ttft_s"] == pytest.approx(r["first_token_s"] - r["arrival_s"], abs=1e-12)
        assert r["e2e_s"] == pytest.approx(r["finished_s"] - r["arrival_s"], abs=1e-12)
        assert r["queue_s"] <= r["ttft_s"] <= r["e2e_s"]
        assert r["generated_tokens"] == r["output_tokens"] == sum(c for _, c in r["token_steps"])
        if r["generated_tokens"] > 1:
            assert r["tpot_s"] == pytest.approx((r["finished_s"] - r["first_token_s"]) / (r["generated_tokens"] - 1))
        else:
            assert r["tpot_s"] is None or np.isnan(r["tpot_s"])
        emitted = runs_to_steps(r["token_steps"])
        assert emitted == sorted(set(emitted))  # one token per step, runs in order
        assert all(b[0] > a[0] + a[1] for a, b in zip(r["token_steps"], r["token_steps"][1:]))  # maximal runs
    for _, r in rej.iterrows():
        assert isinstance(r["reason"], str) and r["reason"]
        assert r["generated_tokens"] == 0 and r["energy_j"] == 0
        for name in ("admitted_s", "first_token_s", "finished_s"):
            assert r[name] is None or np.isnan(r[name])

    # step records: contiguous per replica; a gap only while the replica was empty, until a request came
    assert (steps["prefill_tokens"] + steps["decode_tokens"] <= max_tokens).all()
    assert (steps["num_seqs"] <= max_seqs).all() and (steps["running"] <= max_seqs).all()
    assert ((0 <= steps["kv_blocks_used"]) & (steps["kv_blocks_used"] <= steps["kv_blocks_total"])).all()
    by_step = {}
    for replica, group in steps.groupby("replica"):
        group = group.sort_values("step")
        assert group["step"].tolist() == list(range(len(group)))
        start, end = group["start_s"].to_numpy(), group["end_s"].to_numpy()
        assert (end > start).all()
        assert np.allclose(group["duration_s"], end - start, rtol=1e-12, atol=0)
        assert (start[1:] >= end[:-1]).all()
        submits = set(requests.loc[requests["replica"] == replica, "submitted_s"])
        for k in np.flatnonzero(start[1:] > end[:-1]):
            row = group.iloc[k]
            assert row["running"] == 0 and row["waiting"] == 0, f"replica {replica} idle after step {k} with work"
            assert start[k + 1] in submits
        by_step[replica] = group.set_index("step")
    # each request's first and last token are at the end of the steps that emitted them
    for _, r in fin.iterrows():
        s = by_step[r["replica"]]
        emitted = runs_to_steps(r["token_steps"])
        assert s.loc[emitted[0], "end_s"] == r["first_token_s"]
        assert s.loc[emitted[-1], "end_s"] == r["finished_s"]
        assert s.loc[emitted[0], "start_s"] >= r["admitted_s"]

    # totals: every sampled token belongs to a request; energy attributed adds up to the steps' energy
    assert steps["sampled_seqs"].sum() == fin["generated_tokens"].sum()
    assert requests["energy_j"].sum() == pytest.approx(steps["energy_j"].sum(), rel=1e-9)
    if requests["preemptions"].sum() == 0:
        assert steps["prefill_tokens"].sum() == (fin["input_tokens"] - fin["cached_tokens"]).sum()
        assert steps["decode_tokens"].sum() == (fin["output_tokens"] - 1).sum()
    else:
        assert steps["prefill_tokens"].sum() + steps["decode_tokens"].sum() > \
            (fin["input_tokens"] + fin["output_tokens"] - 1 - fin["cached_tokens"]).sum()


# --- records ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kw, preempts", [
    ("chat.jsonl", dict(), False),
    ("chat.jsonl", dict(num_blocks=300, max_num_seqs=32, max_num_batched_tokens=1024), True),
    ("chat.jsonl", dict(num_blocks=2000, enable_prefix_caching=True), None),
    ("code.jsonl", dict(num_blocks=400, enable_chunked_prefill=False, max_num_batched_tokens=16384), True),
    ("code.jsonl", dict(), False),
])
def test_records_consistent(name, kw, preempts):
    wl = trace_slice(name, 200, start=3000)
    requests, steps, loops = serve(wl, [engine(**kw)])
    check_records(requests, steps, kw.get("max_num_batched_tokens", 8192), kw.get("max_num_seqs", 256))
    assert len(requests) == len(wl)
    if preempts is not None:
        assert (requests["preemptions"].sum() > 0) == preempts
    assert loops[0].steps == len(steps)
    assert loops[0].busy_s == pytest.approx(steps["duration_s"].sum(), rel=1e-9)
    if name == "code.jsonl":  # the code trace has quiet spells: the loop idles and wakes on the next arrival
        assert (steps["start_s"].to_numpy()[1:] > steps["end_s"].to_numpy()[:-1]).any()


@pytest.mark.parametrize("source, kw", [
    (("chat.jsonl", 150, 500), dict(num_blocks=250, max_num_batched_tokens=512, max_num_seqs=24)),
    (("mooncake_head.jsonl", 120, 0), dict(num_blocks=5000, enable_prefix_caching=True)),
])
def test_records_match_the_engine_steps(source, kw):
    """Rebuild every request's record from the Steps the engine returned (one at a time) and compare."""
    wl = trace_slice(*source)
    eng = SingleStep(engine(**kw))
    requests, steps, _ = serve(wl, [eng])
    assert len(eng.steps) == len(steps)
    times = steps.set_index("step")
    emits, energy, cached, preempted = defaultdict(list), Counter(), Counter(), Counter()
    first, finished, admitted = {}, {}, {}
    computed, lost = Counter(), Counter()
    hits_all = 0
    for k, st in enumerate(eng.steps):
        row = times.loc[k]
        assert (row["prefill_tokens"], row["decode_tokens"], row["num_seqs"]) == \
            (st.shape.prefill_tokens, st.shape.decode_tokens, st.shape.num_seqs)
        assert row["energy_j"] == st.energy_j and row["preempted"] == len(st.preempted)
        for rid in st.preempted:
            preempted[rid] += 1
            lost[rid] += computed.pop(rid, 0)
        for rid, c in zip(st.admitted, st.admitted_cached):
            if rid not in admitted:     # the record keeps the first admission's hits (issue 12, item 13)
                cached[rid] = c
            hits_all += c               # every admission's hits: what the prefills did not compute
            admitted.setdefault(rid, row["start_s"])
            computed[rid] = c
        for rid, n in st.scheduled.items():
            energy[rid] += st.energy_j * n / st.shape.tokens
            computed[rid] += n
        for rid in st.emitted:
            emits[rid].append(k)
        for rid in st.first_token:
            first[rid] = row["end_s"]
        for rid in st.finished:
            finished[rid] = row["end_s"]
    assert sum(preempted.values()) > 0
    rejected = requests[requests["status"] == "rejected"]
    assert not set(rejected["id"]) & (set(emits) | set(admitted))
    if kw.get("enable_prefix_caching"):  # cache hits on more than one admission of the same request
        assert any(sum(c > 0 for st in eng.steps for r, c in zip(st.admitted, st.admitted_cached) if r == rid) > 1
                   for rid in preempted)
    for _, r in requests[requests["status"] == "finished"].iterrows():
        rid = r["id"]
        assert runs_to_steps(r["token_steps"]) == emits[rid]
        assert (r["first_token_s"], r["finished_s"], r["admitted_s"]) == (first[rid], finished[rid], admitted[rid])
        assert (r["cached_tokens"], r["preemptions"]) == (cached[rid], preempted[rid])
        assert r["energy_j"] == pytest.approx(energy[rid], rel=1e-9)
    # prefill = input + recomputed - cached (recomputed: what preemptions threw away); decodes the rest
    fin = requests[requests["status"] == "finished"]
    processed = steps["prefill_tokens"].sum() + steps["decode_tokens"].sum()
    assert processed == (fin["input_tokens"] + fin["output_tokens"] - 1).sum() \
        + sum(lost.values()) - hits_all
    check_records(requests, steps, kw.get("max_num_batched_tokens", 8192), kw.get("max_num_seqs", 256))


FUSED_CASES = [
    (1, "timed", {}), (2, "timed", {"speedup": 3.0}), (1, "poisson", {"rate_per_s": 20.0, "seed": 3}),
    (3, "gamma", {"rate_per_s": 30.0, "cv": 2.0, "seed": 1}), (1, "offline", {}),
    (2, "static", {"batch_size": 16}), (2, "closed", {"concurrency": 6}),
]


def fused_and_single(replicas: int, arrival: str, params: dict):
    wl = trace_slice("chat.jsonl", 120, start=7000)
    kw = dict(num_blocks=900, max_num_batched_tokens=2048, max_num_seqs=64)
    fused = serve(wl, [engine(**kw) for _ in range(replicas)], arrival, **params)
    single = serve(wl, [SingleStep(engine(**kw)) for _ in range(replicas)], arrival, **params)
    order = ["replica", "step"]
    return (fused[0], fused[1].sort_values(order).reset_index(drop=True),
            single[0], single[1].sort_values(order).reset_index(drop=True))


@pytest.mark.parametrize("replicas, arrival, params", FUSED_CASES)
def test_fused_decode_runs_record_what_single_steps_do(replicas, arrival, params):
    """Whatever the engine fuses, the records are those of stepping one iteration at a time: the same steps,
    the same batches and tokens, the same request outcomes (times and energies up to float rounding)."""
    fused_req, fused_steps, single_req, single_steps = fused_and_single(replicas, arrival, params)
    check_records(single_req, single_steps, 2048, 64)
    for name in ("replica", "step", "prefill_tokens", "decode_tokens", "num_seqs", "sampled_seqs", "kv_read_tokens",
                 "running", "waiting", "kv_blocks_used", "kv_blocks_total", "preempted"):
        assert fused_steps[name].tolist() == single_steps[name].tolist(), name
    for name in ("start_s", "end_s", "duration_s", "energy_j", "attn_pairs"):
        np.testing.assert_allclose(fused_steps[name], single_steps[name], rtol=1e-9, atol=1e-12, err_msg=name)
    for name in ("id", "replica", "status", "generated_tokens", "cached_tokens", "preemptions", "token_steps"):
        assert fused_req[name].tolist() == single_req[name].tolist(), name
    for name in ("arrival_s", "submitted_s", "admitted_s", "first_token_s", "finished_s", "queue_s", "ttft_s",
                 "tpot_s", "e2e_s", "energy_j"):
        np.testing.assert_allclose(fused_req[name].astype(float), single_req[name].astype(float), rtol=1e-9,
                                   atol=1e-12, err_msg=name)


def test_fused_decode_runs_are_bit_identical_to_single_steps():
    fused_req, fused_steps, single_req, single_steps = fused_and_single(1, "timed", {})
    pd.testing.assert_frame_equal(fused_steps, single_steps, check_exact=True)
    pd.testing.assert_frame_equal(fused_req, single_req, check_exact=True)


def test_rejected_requests_are_recorded_and_the_run_goes_on():
    wl = trace_slice("chat.jsonl", 150, start=100)
    limit = 2048
    requests, steps, _ = serve(wl, [engine(max_model_len=limit, num_blocks=2000)])
    too_long = requests["input_tokens"] + requests["output_tokens"] > limit
    assert too_long.sum() >= 3 and (~too_long).sum() >= 100
    rej = requests[too_long]
    assert (rej["status"] == "rejected").all() and (requests.loc[~too_long, "status"] == "finished").all()
    for _, r in rej.iterrows():
        total = r["input_tokens"] + r["output_tokens"]
        for number in (r["input_tokens"], r["output_tokens"], total, limit):
            assert str(number) in r["reason"]
    # requests after the first rejection were still served
    first_rejected = rej["arrival_s"].min()
    assert (requests.loc[~too_long, "arrival_s"] > first_rejected).sum() > 10
    check_records(requests, steps)


def test_submitting_an_id_twice_is_an_error():
    env = simpy.Environment()
    loop = ServerLoop(env, engine(num_blocks=100), Recorder())
    r = Request("a", 0.0, 10, 2)
    loop.submit(r, 0.0)
    with pytest.raises(ValueError, match="submitted twice"):
        loop.submit(r, 0.0)


def test_recorder_files_hold_what_it_kept(tmp_path):
    recorder = Recorder(tmp_path, flush_s=0.0)
    simulate(trace_slice("code.jsonl", 60), [engine(num_blocks=3000)], "timed", {}, recorder)
    recorder.close()
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert steps == steps_frame(recorder).to_dict("records")  # floats written exactly (repr round-trips)
    requests = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert requests == recorder.requests and len(requests) == 60


# --- the router -------------------------------------------------------------------------------------------------

def test_router_rejects_bad_setups():
    env = simpy.Environment()
    loop = ServerLoop(env, engine(num_blocks=100), Recorder())
    with pytest.raises(ValueError, match="unknown router 'random'"):
        Router([loop], "random")
    with pytest.raises(ValueError, match="at least one replica"):
        Router([], "round-robin")


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("arrival", ["timed", "offline"])
def test_round_robin_takes_turns(replicas, arrival):
    wl = trace_slice("chat.jsonl", 90, start=200)
    requests, steps, _ = serve(wl, [engine(num_blocks=3000) for _ in range(replicas)], arrival)
    assert requests["replica"].tolist() == [i % replicas for i in range(len(wl))]
    assert sorted(steps["replica"].unique()) == list(range(replicas))
    check_records(requests, steps)


def least_outstanding_choices(requests: pd.DataFrame, replicas: int) -> tuple[list[int], int, int]:
    """The replica each request should have gone to (fewest submitted-and-unfinished, lowest index on ties),
    rebuilt from the records; also how many choices were skipped (a finish at the very same instant) and how
    many were not ties at zero."""
    expected, skipped, informative = [], 0, 0
    submitted = requests["submitted_s"].to_numpy()
    finished = requests["finished_s"].to_numpy()
    chosen = requests["replica"].to_numpy()
    for j in range(len(requests)):
        t = submitted[j]
        if (finished[:j] == t).any():
            expected.append(int(chosen[j]))  # the order of same-instant events is SimPy's business
            skipped += 1
            continue
        counts = [int(((chosen[:j] == r) & (finished[:j] > t)).sum()) for r in range(replicas)]
        informative += len(set(counts)) > 1
        expected.append(int(np.argmin(counts)))
    return expected, skipped, informative


@pytest.mark.parametrize("replicas", [2, 3])
def test_least_outstanding_picks_the_emptiest(replicas):
    wl = trace_slice("chat.jsonl", 300, start=4000)
    requests, steps, _ = serve(wl, [engine(num_blocks=3000) for _ in range(replicas)], "poisson",
                               router="least-outstanding", rate_per_s=15.0 * replicas, seed=2)
    assert (requests["status"] == "finished").all()
    expected, skipped, informative = least_outstanding_choices(requests, replicas)
    assert requests["replica"].tolist() == expected
    assert skipped < 5 and informative > 50
    assert requests["replica"].tolist() != [i % replicas for i in range(len(wl))]
    check_records(requests, steps)


def test_more_replicas_lower_p99_ttft_when_overloaded():
    wl = trace_slice("chat.jsonl", 300, start=9000)
    p99 = {}
    for replicas in (1, 2, 3):
        requests, steps, _ = serve(wl, [engine() for _ in range(replicas)], "timed", speedup=8.0)
        check_records(requests, steps)
        p99[replicas] = float(np.quantile(requests["ttft_s"], 0.99))
    assert p99[1] > 5 * p99[3]  # one replica was overloaded: requests queued
    assert p99[1] > p99[2] > p99[3]


class BlockingSimEngine(SimEngine):
    """The simulated engine, but each step blocks for its modelled duration x ``factor`` of wall time, as the
    real engine's step does: what the real-time clock has to cope with (no DecodeRuns: a real engine has none)."""

    def __init__(self, *args, factor: float, **kwargs):
        super().__init__(*args, fuse_decodes=False, **kwargs)
        self.factor = factor

    def step(self, horizon_s=float("inf")):
        step = super().step(horizon_s)
        time.sleep(step.duration_s * self.factor)
        return step


def test_realtime_clock_records_arrival_lag():
    """On simpy.rt, a request due while a step blocks reaches the server when the step returns: submitted_s
    records that (wall clock on the run clock), arrival_s the due time, and the summary reports the lag."""
    factor = 0.02
    wl = Workload.from_requests([Request(str(i), 0.5 * i, 2000, 3) for i in range(6)])
    env = simpy.rt.RealtimeEnvironment(factor=factor, strict=False)
    eng = BlockingSimEngine(model("llama-3.1-8b"), hardware("a100-40gb"), num_blocks=4000, factor=factor,
                            perf=PerfParams(overhead_s=0.6))  # every step 0.6 s+: arrivals land inside steps
    recorder = Recorder()
    simulate(wl, [eng], "timed", {}, recorder, env=env)
    requests = pd.DataFrame(recorder.requests)
    lag = requests["submitted_s"] - requests["arrival_s"]
    assert (lag >= 0).all() and (lag.iloc[1:] > 0.05).all()        # due during a step: handed over after it
    assert (requests["admitted_s"] >= requests["submitted_s"] - 1e-9).all()
    summary = summarize(requests, recorder.steps_frame(), Energy(source=None, reason="test"))
    assert summary.arrival_lag_max_s == pytest.approx(lag.max())
    assert "arrival lag" in format_summary(summary)


def test_simulated_clock_has_no_arrival_lag():
    recorder = Recorder()
    simulate(trace_slice("chat.jsonl", 50), [engine(num_blocks=3000)], "timed", {}, recorder)
    requests = pd.DataFrame(recorder.requests)
    assert (requests["submitted_s"] == requests["arrival_s"]).all()
    summary = summarize(requests, recorder.steps_frame(), Energy(source=None, reason="test"))
    assert summary.arrival_lag_max_s == 0.0 and "arrival lag" not in format_summary(summary)
