"""The vLLM v1 scheduler model, driven step by step: invariants checked on every step against an independent
mirror of what each Step reports, an independent FCFS reference with unlimited KV blocks, preemption by
recompute, chunked prefill, rejections, and prefix caching (synthetic prefixes and the Mooncake sample)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict, deque
from functools import cache

import pytest

from conftest import DATA, TRACES
from replay.engines.base import Step
from replay.engines.sim.scheduler import Scheduler, SchedulerConfig
from replay.trace import read_trace
from replay.trace.schema import Request


def req(rid: str, inp: int, out: int, prefix: tuple[int, ...] | None = None, block_tokens: int | None = None,
        ) -> Request:
    return Request(rid, 0.0, inp, out, prefix_blocks=prefix, block_tokens=block_tokens)


@cache
def _trace(path: str) -> tuple[Request, ...]:
    return tuple(read_trace(path))


def trace_slice(name: str, n: int, start: int = 0) -> list[Request]:
    """Requests start..start+n-1 of a bundled trace (traces/chat.jsonl, traces/code.jsonl) or a test sample."""
    path = TRACES / name if (TRACES / name).exists() else DATA / name
    return list(_trace(str(path))[start:start + n])


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Mirror:
    """A Scheduler plus independent bookkeeping of vLLM v1's semantics, rebuilt from what each Step reports
    (never from the scheduler's own counters), and every invariant checked after every step.

    Per request the mirror holds the prompt, the target output length, the output tokens so far and the tokens
    whose KV entries are computed: a scheduled chunk adds to ``computed``; a request emits a token exactly when
    ``computed`` reaches prompt + output so far; a preemption drops ``computed`` to 0 (recompute); an admission
    starts from the prefix-cache hit it reports.
    """

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.sched = Scheduler(config)
        self.state: dict[str, list[int]] = {}          # id -> [prompt, target, out, computed]
        self.rejected: dict[str, str] = {}
        self.steps: list[Step] = []
        self.processed: Counter = Counter()             # tokens scheduled per request, all admissions
        self.cached: Counter = Counter()                # prompt tokens taken from the cache, all admissions
        self.lost: Counter = Counter()                  # computed tokens thrown away by preemptions
        self.preemptions: Counter = Counter()
        self.emits: dict[str, list[int]] = defaultdict(list)   # steps in which each request got a token
        self.first_step: dict[str, int] = {}
        self.finish_step: dict[str, int] = {}
        self.chunks: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # (step, tokens, out before)
        self.cut_recomputes = 0                          # recompute chunks the budget cut short

    def add(self, request: Request) -> str | None:
        reason = self.sched.add(request)
        if reason is None:
            self.state[request.id] = [request.input_tokens, request.output_tokens, 0, 0]
        else:
            self.rejected[request.id] = reason
        return reason

    def tokens(self, rid: str) -> int:
        prompt, _, out, _ = self.state[rid]
        return prompt + out

    def step(self) -> Step:
        c, sched = self.config, self.sched
        k = len(self.steps)
        before_running = [s.id for s in sched.running]
        before_waiting = [s.id for s in sched.waiting]
        need = {rid: self.tokens(rid) - self.state[rid][3] for rid in before_running}
        st = sched.step()
        self.steps.append(st)
        where = f"step {k}"
        scheduled = st.scheduled
        preempted, admitted = st.preempted, st.admitted

        # token budget and batch size
        assert not set(st.decoded) & set(st.prefilled), where
        assert all(n > 0 for n in scheduled.values()), where
        assert st.shape.tokens == sum(scheduled.values()) <= c.max_num_batched_tokens, where
        assert st.shape.prefill_tokens == sum(st.prefill_sizes) and st.shape.decode_tokens == len(st.decoded), where
        assert st.shape.num_seqs == len(scheduled) <= c.max_num_seqs, where
        assert st.shape.sampled_seqs == len(st.emitted), where
        assert len(sched.running) <= c.max_num_seqs, where
        assert (st.running, st.waiting) == (len(sched.running), len(sched.waiting)), where

        # preemption (vLLM v1): newest running request first, to the front of the queue, nothing admitted
        assert preempted == before_running[::-1][:len(preempted)], where
        assert not set(preempted) & set(scheduled), where
        if preempted:
            assert admitted == [], f"{where}: admitted {admitted} in a step that preempted {preempted}"
            assert [s.id for s in sched.waiting] == preempted[::-1] + before_waiting, where
        for rid in preempted:
            self.lost[rid] += self.state[rid][3]
            self.state[rid][3] = 0
            self.preemptions[rid] += 1

        # running requests first, in admission order, each min(what it needs, budget left): decodes before
        # any new prefill, and a chunk cut exactly at the budget
        left = c.max_num_batched_tokens
        for rid in before_running:
            if rid in preempted:
                break
            if left == 0:
                assert rid not in scheduled, f"{where}: {rid} scheduled with no budget left"
                continue
            expect = min(need[rid], left)
            assert scheduled.get(rid) == expect, f"{where}: running {rid} got {scheduled.get(rid)}, expected {expect}"
            left -= expect

        # admissions: queue order, after all running requests, each min(need after cache hits, budget left)
        assert admitted == before_waiting[:len(admitted)], where
        assert len(st.admitted_cached) == len(admitted), where
        for rid, cached in zip(admitted, st.admitted_cached):
            tokens = self.tokens(rid)
            assert cached % c.block_size == 0 and 0 <= cached < min(tokens, self.state[rid][0] + 1), where
            if not c.enable_prefix_caching:
                assert cached == 0, where
            self.state[rid][3] = cached
            self.cached[rid] += cached
            expect = tokens - cached if not c.enable_chunked_prefill else min(tokens - cached, left)
            assert scheduled.get(rid) == expect, f"{where}: admitted {rid} got {scheduled.get(rid)}, expected {expect}"
            left -= expect
        assert set(scheduled) <= set(before_running) | set(admitted), where

        # the forward pass: a token exactly when a request's computed tokens reach its length
        emitted = set(st.emitted)
        assert len(emitted) == len(st.emitted) and set(st.completed) <= set(st.prefilled), where
        for rid, n in scheduled.items():
            s = self.state[rid]
            if rid in st.prefilled:
                self.chunks[rid].append((k, n, s[2]))
                self.cut_recomputes += s[2] > 0 and n < s[0] + s[2] - s[3]
            s[3] += n
            self.processed[rid] += n
            assert s[3] <= s[0] + s[2], f"{where}: {rid} computed {s[3]} of {s[0] + s[2]} tokens"
            if s[3] == s[0] + s[2]:
                assert rid in emitted, f"{where}: {rid} computed all {s[3]} tokens but got no token"
                s[2] += 1
                self.emits[rid].append(k)
                if s[2] == 1:
                    self.first_step[rid] = k
                if s[2] == s[1]:
                    self.finish_step[rid] = k
            else:
                assert rid not in emitted, (f"{where}: {rid} got a token with {s[3]} of {s[0] + s[2]} tokens "
                                            f"computed ({n} scheduled)")
            if not c.enable_chunked_prefill:
                assert rid in emitted, f"{where}: {rid} split ({n} tokens) with chunked prefill off"
        assert set(st.first_token) == {r for r in scheduled if self.first_step.get(r) == k}, where
        assert set(st.finished) == {r for r in scheduled if self.finish_step.get(r) == k}, where

        # the scheduler's own state agrees with the mirror; KV blocks within capacity and exactly accounted
        running_ids = [s.id for s in sched.running]
        assert running_ids == [r for r in before_running if r not in preempted and r not in st.finished] + \
            [r for r in admitted if r not in st.finished], where
        for seq in sched.running:
            prompt, _, out, computed = self.state[seq.id]
            assert (seq.computed, seq.out, seq.num_tokens) == (computed, out, prompt + out), where
            assert seq.blocks == cdiv(seq.computed, c.block_size), where
        for seq in sched.waiting:
            assert seq.computed == 0 and seq.blocks == 0, where
        assert st.kv_blocks_total == c.num_blocks and 0 <= st.kv_blocks_used <= c.num_blocks, where
        assert sched.free_blocks >= 0 and st.kv_blocks_used == c.num_blocks - sched.free_blocks, where
        if c.enable_prefix_caching:
            shared = set().union(*(s.held for s in sched.running)) if sched.running else set()
            assert st.kv_blocks_used == sum(s.blocks - len(s.held) for s in sched.running) + len(shared), where
        else:
            assert st.kv_blocks_used == sum(cdiv(s.computed, c.block_size) for s in sched.running), where
        return st

    def check_done(self) -> None:
        """Every accepted request got exactly its output tokens; tokens processed add up; all blocks free."""
        assert not self.sched.has_work()
        for rid, (prompt, target, out, _) in self.state.items():
            assert out == target == len(self.emits[rid]), rid
            # its final KV holds prompt + output - 1 tokens; what a preemption threw away was computed again
            assert self.processed[rid] == prompt + target - 1 + self.lost[rid] - self.cached[rid], rid
        total = sum(st.shape.tokens for st in self.steps)
        assert total == sum(p + t - 1 for p, t, _, _ in self.state.values()) + sum(self.lost.values()) \
            - sum(self.cached.values())
        if self.steps:
            assert self.steps[-1].kv_blocks_used == 0
        assert self.sched.free_blocks == self.config.num_blocks


def drive(config: SchedulerConfig, requests: list[Request], per_tick: int | None = None,
          max_steps: int = 200_000) -> Mirror:
    """Add the requests (all at once, or ``per_tick`` of them before each tick), step while there is work,
    checking every step; fails if the queue does not drain within ``max_steps`` steps."""
    mirror = Mirror(config)
    pending = deque(requests)
    while pending or mirror.sched.has_work():
        for _ in range(per_tick or len(pending)):
            if pending:
                mirror.add(pending.popleft())
        if mirror.sched.has_work():
            mirror.step()
        assert len(mirror.steps) <= max_steps, f"did not drain in {max_steps} steps"
    mirror.check_done()
    return mirror


def config(**kw) -> SchedulerConfig:
    return SchedulerConfig(**{"num_blocks": 10_000, "max_model_len": 1 << 20, **kw})


def fcfs_reference(requests: list[Request], per_tick: int | None, budget: int, max_seqs: int,
                   chunked: bool) -> list[tuple[dict[str, int], set[str]]]:
    """vLLM v1's order with unlimited KV blocks, written out plainly: each step, running requests in order get
    what they need up to the budget left, then queued ones are admitted in order. Returns, per step, the tokens
    each request processed and the requests that got a token."""
    pending, waiting, running = deque(requests), deque(), []
    state = {r.id: [r.input_tokens, r.output_tokens, 0, 0] for r in requests}  # prompt, target, out, computed
    steps = []
    while pending or waiting or running:
        for _ in range(per_tick or len(pending)):
            if pending:
                waiting.append(pending.popleft().id)
        if not (waiting or running):
            continue
        left, sched = budget, {}
        for rid in running:
            p, _, out, comp = state[rid]
            if left == 0:
                break
            sched[rid] = min(p + out - comp, left)
            left -= sched[rid]
        while waiting and left > 0 and len(running) < max_seqs:
            p, _, out, comp = state[waiting[0]]
            n = p + out - comp
            if n > left and not chunked:
                break
            rid = waiting.popleft()
            running.append(rid)
            sched[rid] = min(n, left)
            left -= sched[rid]
        emitted = set()
        for rid, n in sched.items():
            s = state[rid]
            s[3] += n
            if s[3] == s[0] + s[2]:
                s[2] += 1
                emitted.add(rid)
        running = [r for r in running if state[r][2] < state[r][1]]
        steps.append((sched, emitted))
    return steps


def random_requests(rng: random.Random, n: int, max_in: int, max_out: int) -> list[Request]:
    return [req(f"r{i}", rng.randint(1, max_in), rng.randint(1, max_out)) for i in range(n)]


# --- config -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["num_blocks", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
                                   "block_size"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_config_rejects_bad_limits(field, value):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


# --- invariants on every step ---------------------------------------------------------------------------------

TRACE_CASES = {
    # trace slice, requests, added per tick, scheduler limits, whether the cache is small enough to preempt
    "chat-tiny-cache": ("chat.jsonl", 120, 3, dict(num_blocks=400, max_num_batched_tokens=512, max_num_seqs=16), True),
    "chat-few-seqs": ("chat.jsonl", 100, 2, dict(num_blocks=150, max_num_batched_tokens=2048, max_num_seqs=4,
                                                 block_size=32), True),
    "code-tiny-cache": ("code.jsonl", 80, 4, dict(num_blocks=500, max_num_batched_tokens=1024, max_num_seqs=32), True),
    "code-no-chunking": ("code.jsonl", 80, 4, dict(num_blocks=600, max_num_batched_tokens=16384, max_num_seqs=32,
                                                   enable_chunked_prefill=False), True),
    "chat-caching-on": ("chat.jsonl", 100, 3, dict(num_blocks=300, max_num_batched_tokens=512,
                                                   enable_prefix_caching=True), True),
    "chat-ample": ("chat.jsonl", 150, 5, dict(num_blocks=100_000), False),
}


@pytest.mark.parametrize("case", list(TRACE_CASES))
def test_invariants_every_step_on_trace_slices(case):
    name, n, per_tick, limits, preempts = TRACE_CASES[case]
    cfg = config(**limits)
    requests = trace_slice(name, n, start=200)
    mirror = drive(cfg, requests, per_tick=per_tick)
    assert set(mirror.state) | set(mirror.rejected) == {r.id for r in requests}
    for r in requests:  # only requests that could never fit are turned away
        too_big = cdiv(r.input_tokens + r.output_tokens, cfg.block_size) > cfg.num_blocks
        assert (r.id in mirror.rejected) == too_big, mirror.rejected.get(r.id)
    assert len(mirror.state) >= 0.8 * n
    assert (sum(mirror.preemptions.values()) > 0) == preempts
    if cfg.enable_chunked_prefill and cfg.max_num_batched_tokens <= 1024:
        assert any(len([c for c in ch if c[2] == 0]) > 1 for ch in mirror.chunks.values()), "no prompt was split"


@pytest.mark.parametrize("seed", range(12))
def test_invariants_every_step_random_small_configs(seed):
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 4, 16])
    max_seqs = rng.randint(1, 12)
    budget = rng.randint(max_seqs + 1, 96)  # (budget <= max_num_seqs: test_invariants_random_configs_with_tight_...)
    largest = cdiv(80 + 40, bs)  # blocks of the largest request drawn: a cache of 1 to 3 of those
    cfg = config(num_blocks=rng.randint(largest, 3 * largest), max_num_batched_tokens=budget, max_num_seqs=max_seqs,
                 block_size=bs, enable_chunked_prefill=rng.random() < 0.8)
    chunked = cfg.enable_chunked_prefill  # without chunking, prompt + output must fit the budget
    requests = random_requests(rng, 30, 80 if chunked else budget // 2 + 1, 40 if chunked else budget // 2)
    mirror = drive(cfg, requests, per_tick=rng.randint(1, 4))
    assert len(mirror.state) >= 10


# --- an independent reference: FCFS with unlimited KV blocks ----------------------------------------------------

@pytest.mark.parametrize("budget, max_seqs, chunked, per_tick", [
    (8192, 256, True, 4), (256, 8, True, 2), (64, 3, True, 1), (100, 5, False, 3), (2048, 64, True, None),
    (8, 16, True, 3), (20, 40, True, 5),  # more sequences than tokens: decodes alone can use up the budget
])
def test_matches_plain_fcfs_with_ample_kv(budget, max_seqs, chunked, per_tick):
    requests = [r for r in trace_slice("chat.jsonl", 60, start=1000) if chunked or r.input_tokens <= budget]
    if budget < 1000:  # scale prompts down so small budgets still see whole prompts as well as chunks
        requests = [Request(r.id, r.arrival_s, 1 + r.input_tokens // 16, 1 + r.output_tokens // 8)
                    for r in requests]
    cfg = config(num_blocks=1_000_000, max_num_batched_tokens=budget, max_num_seqs=max_seqs,
                 enable_chunked_prefill=chunked)
    mirror = drive(cfg, requests, per_tick=per_tick)
    ours = [(st.scheduled, set(st.emitted)) for st in mirror.steps]
    ref = fcfs_reference(requests, per_tick, budget, max_seqs, chunked)
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert a == b, f"step {k}"
    assert not any(st.preempted for st in mirror.steps)


# --- preemption ------------------------------------------------------------------------------------------------

def test_preemption_evicts_newest_to_queue_front_and_recomputes():
    """A, B, C decode in a cache too small for all three; D waits (max_num_seqs). C, the newest, is evicted
    first, goes ahead of D, nothing is admitted that step, and C later recomputes prompt + output so far."""
    bs = 4
    cfg = config(num_blocks=10, max_num_batched_tokens=64, max_num_seqs=3, block_size=bs)
    requests = [req("A", 4, 12), req("B", 4, 12), req("C", 4, 12), req("D", 4, 3)]
    mirror = drive(cfg, requests)
    steps = mirror.steps
    first = next(k for k, st in enumerate(steps) if st.preempted)
    assert steps[first].preempted[0] == "C" and steps[first].admitted == []
    assert steps[first].running < cfg.max_num_seqs  # D had a seat, and still was not admitted that step
    out_at_eviction = len([k for k in mirror.emits["C"] if k < first])  # its first token came with its prompt
    assert out_at_eviction >= 1
    readmit = next(k for k in range(first + 1, len(steps)) if "C" in steps[k].admitted)
    d_in = next(k for k, st in enumerate(steps) if "D" in st.admitted)  # C kept its place ahead of D
    assert d_in > readmit or steps[d_in].admitted.index("D") > steps[d_in].admitted.index("C")
    next_token = min(k for k in mirror.emits["C"] if k >= readmit)
    assert not any("C" in st.preempted for st in steps[readmit:next_token + 1])
    recompute = sum(n for k, n, _ in mirror.chunks["C"] if readmit <= k <= next_token)
    assert recompute == 4 + out_at_eviction  # prompt + output so far, then the next token
    assert mirror.preemptions["C"] >= 1 and mirror.preemptions["A"] == 0
    assert mirror.state["D"][2] == 3


def test_preempted_requests_still_finish_under_a_tiny_cache():
    cfg = config(num_blocks=64, max_num_batched_tokens=256, max_num_seqs=8, block_size=16)
    requests = [Request(r.id, 0.0, min(r.input_tokens, 600), min(r.output_tokens, 300))
                for r in trace_slice("chat.jsonl", 60)]
    mirror = drive(cfg, requests, per_tick=3)
    assert sum(mirror.preemptions.values()) >= 5
    assert max(mirror.preemptions.values()) >= 2  # some were evicted more than once and still finished


def test_recompute_capped_to_one_token_is_not_a_decode():
    """Regression: A and B decode together; B is preempted, readmitted with a 1-token chunk, and next step gets
    exactly the 1 token of budget A leaves. That token is a recompute chunk (B has 5 tokens to recompute), not a
    decode: B must not get a token (or finish) before its recompute is done."""
    cfg = config(num_blocks=3, max_num_batched_tokens=2, block_size=4)
    mirror = drive(cfg, [req("A", 1, 7), req("B", 1, 5)])
    assert mirror.preemptions["B"] >= 1 and mirror.cut_recomputes >= 1


def test_invariants_random_configs_with_tight_budgets():
    """Token budgets no larger than max_num_seqs: decodes alone can leave a running recompute 1 token."""
    capped = 0
    for seed in range(150):
        rng = random.Random(seed)
        bs = rng.choice([1, 2, 4])
        cfg = config(num_blocks=rng.randint(6, 30), max_num_batched_tokens=rng.randint(2, 6),
                     max_num_seqs=rng.randint(6, 10), block_size=bs)
        mirror = drive(cfg, random_requests(rng, 10, 30, 20), per_tick=2)
        capped += mirror.cut_recomputes
    assert capped > 10  # recompute chunks cut by the budget did happen


@pytest.mark.parametrize("seed", range(40))
def test_no_chunking_never_stalls(seed):
    """Regression: with chunked prefill off, a preempted request recomputes prompt + output so far in one step;
    the scheduler must never accept a request it could then not readmit (the queue would stall forever)."""
    rng = random.Random(seed)
    bs = rng.choice([2, 4, 8])
    cfg = config(num_blocks=rng.randint(4, 24), max_num_batched_tokens=rng.randint(8, 48), block_size=bs,
                 max_num_seqs=rng.randint(2, 8), enable_chunked_prefill=False)
    mirror = drive(cfg, random_requests(rng, 12, 40, 30), per_tick=2, max_steps=5000)
    for rid, reason in mirror.rejected.items():
        assert "max_num_batched_tokens" in reason or "KV blocks" in reason, reason


def test_no_chunking_with_preemption_finishes():
    cfg = config(num_blocks=4, max_num_batched_tokens=16, block_size=4, enable_chunked_prefill=False)
    mirror = drive(cfg, [req("A", 4, 8), req("B", 4, 8)], max_steps=1000)
    assert not mirror.rejected and mirror.preemptions["B"] >= 1


# --- chunked prefill ---------------------------------------------------------------------------------------------

def test_chunked_prefill_splits_at_the_budget_and_first_token_comes_last():
    budget, prompt = 256, 1000
    cfg = config(max_num_batched_tokens=budget)
    mirror = drive(cfg, [req("X", 10, 40), req("L", prompt, 3)], per_tick=1)
    # step 0: X's prompt; from step 1 on, X's decode (1 token) goes first and L gets the rest of the budget
    sizes = [n for _, n, _ in mirror.chunks["L"]]
    expect, left = [], prompt
    while left:
        expect.append(min(left, budget - 1))
        left -= expect[-1]
    assert sizes == expect and len(sizes) == cdiv(prompt, budget - 1)
    chunk_steps = [k for k, _, _ in mirror.chunks["L"]]
    assert chunk_steps == list(range(1, 1 + len(sizes)))
    assert mirror.first_step["L"] == chunk_steps[-1]  # the first token only when the prompt is complete
    assert all("L" not in st.emitted for st in mirror.steps[:chunk_steps[-1]])
    assert all(st.shape.tokens == budget for st in mirror.steps[1:chunk_steps[-1]])
    assert all("X" in st.decoded for st in mirror.steps[1:chunk_steps[-1] + 1])


def test_no_chunking_rejects_prompts_over_the_budget_and_never_splits():
    budget = 512
    cfg = config(max_num_batched_tokens=budget, enable_chunked_prefill=False, max_num_seqs=8)
    sched = Scheduler(cfg)
    reason = sched.add(req("big", budget + 1, 5))
    assert reason is not None and "chunked" in reason and str(budget) in reason
    assert str(budget + 1) in reason or str(budget + 1 + 5) in reason  # names the tokens it has
    assert not sched.has_work()
    assert sched.add(req("edge", budget - 5, 5)) is None  # prompt + output = the budget
    assert Scheduler(config(max_num_batched_tokens=budget)).add(req("big", budget + 1, 5)) is None  # chunking on
    mirror = drive(cfg, trace_slice("chat.jsonl", 60, start=50), per_tick=4)
    assert len(mirror.state) >= 20
    for rid, chunks in mirror.chunks.items():
        for _, n, out_before in chunks:
            assert out_before > 0 or n == mirror.state[rid][0]  # a first prefill is always the whole prompt
    assert any(st.waiting and st.shape.tokens < budget for st in mirror.steps)  # prompts did wait for budget


# --- rejections ----------------------------------------------------------------------------------------------

def test_rejections_name_the_numbers():
    sched = Scheduler(config(num_blocks=40, max_model_len=2048, block_size=16))
    reason = sched.add(req("long", 2000, 60))
    assert reason is not None
    for number in ("2000", "60", "2060", "2048", "max_model_len"):
        assert number in reason, reason
    reason = sched.add(req("wide", 600, 50))  # 650 tokens need 41 blocks of 16; the cache has 40
    assert reason is not None
    for number in ("41", "16", "650", "40"):
        assert number in reason, reason
    assert not sched.has_work()
    assert sched.add(req("fits", 600, 40)) is None  # exactly 40 blocks
    assert sched.has_work()
    assert Scheduler(config(num_blocks=128, max_model_len=2048)).add(req("max", 2000, 48)) is None  # exactly 2048


# --- prefix caching ---------------------------------------------------------------------------------------------

def prefixed(rid: str, inp: int, blocks: tuple[int, ...], out: int = 2, block_tokens: int = 32) -> Request:
    return req(rid, inp, out, prefix=blocks, block_tokens=block_tokens)


def cached_at_admission(mirror: Mirror) -> dict[str, int]:
    return {rid: c for st in mirror.steps for rid, c in zip(st.admitted, st.admitted_cached)}


def test_prefix_cache_hits_but_never_the_whole_prompt():
    bs, bt = 16, 32
    cfg = config(block_size=bs, enable_prefix_caching=True)
    a = prefixed("A", 100, (1, 2, 3))  # three 32-token prefix blocks cover 96 tokens: six 16-token KV blocks
    later = [
        prefixed("B", 100, (1, 2, 3)),      # same prefix: all 6 full blocks
        prefixed("C", 96, (1, 2, 3)),       # the prompt is exactly the prefix: the last block is recomputed
        prefixed("D", 100, (1, 2, 9)),      # shares the first two prefix blocks: 4 KV blocks
        prefixed("E", 100, (7, 2, 3)),      # differs in the first block: nothing (a prefix, not a set)
        req("F", 100, 2),                   # no prefix ids: shares nothing
    ]
    mirror = drive(cfg, [a] + later, per_tick=1)  # one per tick: A's blocks are cached before B arrives
    cached = cached_at_admission(mirror)
    assert cached["A"] == 0
    assert cached["B"] == (96 // bs) * bs
    assert cached["C"] == ((96 - 1) // bs) * bs < 96
    assert cached["D"] == 2 * bt
    assert cached["E"] == 0 and cached["F"] == 0
    for r in [a] + later:  # fewer prefill tokens: only what the cache did not hold
        assert mirror.processed[r.id] == r.input_tokens + r.output_tokens - 1 - cached[r.id]


def test_prefix_cache_off_caches_nothing():
    cfg = config(enable_prefix_caching=False)
    requests = [prefixed(f"r{i}", 100, (1, 2, 3)) for i in range(5)]
    mirror = drive(cfg, requests, per_tick=1)
    assert all(c == 0 for c in cached_at_admission(mirror).values())
    assert sum(st.shape.prefill_tokens for st in mirror.steps) == 5 * 100


def test_prefix_cache_evicts_least_recent_and_tail_first():
    bs = 16
    cfg = config(num_blocks=10, block_size=bs, enable_prefix_caching=True)
    a = prefixed("A", 100, (1, 2, 3))  # holds 7 blocks while running: 6 cacheable prefix blocks + 1
    # F (no prefix) needs 6 blocks; after A only 10 - 6 cached = 4 are empty: 2 cached blocks are evicted
    f = req("F", 90, 1)
    mirror = drive(cfg, [a, f, prefixed("B", 100, (1, 2, 3))], per_tick=1)
    evicted = cdiv(90, bs) - (10 - 6)
    assert cached_at_admission(mirror)["B"] == (6 - evicted) * bs  # the tail went first: the prefix stayed
    big = req("G", 159, 1)  # needs all 10 blocks: nothing of A's prefix survives
    mirror = drive(cfg, [a, big, prefixed("B", 100, (1, 2, 3))], per_tick=1)
    assert cached_at_admission(mirror)["B"] == 0


def test_prefix_block_cached_meanwhile_is_not_cached_twice():
    """S1 and S2 share a prefix and start together; S2 gets only 8 tokens in the first step (no full block), S1
    finishes and leaves its blocks cached; S2 then fills the same prefix blocks itself. The blocks are accounted
    once (checked every step), and a later request still finds S1's copy."""
    bs = 16
    cfg = config(num_blocks=40, block_size=bs, max_num_batched_tokens=108, enable_prefix_caching=True)
    mirror = Mirror(cfg)
    for r in (prefixed("S1", 100, (1, 2, 3), out=1), prefixed("S2", 100, (1, 2, 3), out=3), None,
              prefixed("S3", 100, (1, 2, 3))):
        if r is None:  # S3 comes once S1 and S2 are done
            while mirror.sched.has_work():
                mirror.step()
        else:
            mirror.add(r)
    while mirror.sched.has_work():
        mirror.step()
    mirror.check_done()
    assert mirror.chunks["S2"][0][:2] == (0, 8) and mirror.finish_step["S1"] == 0
    cached = cached_at_admission(mirror)
    assert cached["S1"] == cached["S2"] == 0 and cached["S3"] == 96


def test_prefix_cache_fewer_prefill_tokens_than_without():
    rng = random.Random(5)
    requests = [prefixed(f"r{i}", rng.randint(40, 400), tuple(rng.choice([(1, 2, 3, 4), (1, 2, 5), (6,)])) +
                         (100 + i,), out=rng.randint(1, 20)) for i in range(80)]
    on = drive(config(enable_prefix_caching=True, max_num_batched_tokens=1024), requests, per_tick=2)
    off = drive(config(enable_prefix_caching=False, max_num_batched_tokens=1024), requests, per_tick=2)
    saved = sum(on.cached.values())
    assert saved > 0
    prefill = lambda m: sum(st.shape.prefill_tokens for st in m.steps)
    assert prefill(off) == sum(r.input_tokens for r in requests)
    assert prefill(on) == prefill(off) - saved


def test_prefix_cache_with_preemption_keeps_invariants():
    rng = random.Random(9)
    requests = [prefixed(f"r{i}", rng.randint(40, 300), (1, 2, rng.randint(3, 5), 10 + i),
                         out=rng.randint(5, 60)) for i in range(60)]
    mirror = drive(config(num_blocks=80, block_size=16, max_num_batched_tokens=256, enable_prefix_caching=True),
                   requests, per_tick=3)
    assert sum(mirror.preemptions.values()) > 0 and sum(mirror.cached.values()) > 0


def test_mooncake_sample_shows_prefix_hits():
    requests = trace_slice("mooncake_head.jsonl", 200)
    assert requests and all(r.prefix_blocks and r.block_tokens == 512 for r in requests)
    cfg = config(num_blocks=20_000, max_num_batched_tokens=8192, enable_prefix_caching=True)
    on = drive(cfg, requests, per_tick=4)
    hits = [c for c in cached_at_admission(on).values() if c]
    assert len(hits) >= 10
    assert sum(on.cached.values()) > 0.1 * sum(r.input_tokens for r in requests)
    off = drive(config(num_blocks=20_000, max_num_batched_tokens=8192), requests, per_tick=4)
    assert sum(off.cached.values()) == 0
    assert sum(st.shape.prefill_tokens for st in on.steps) < sum(st.shape.prefill_tokens for st in off.steps)
