"""A model of vLLM v1's scheduler: continuous batching under a token budget, chunked prefill, paged KV blocks,
preemption by recompute, and prefix caching.

One ``step()`` is one scheduler iteration, in vLLM v1's order (``vllm/v1/core/sched/scheduler.py``):

1. Running requests, in admission order, each get what they still need (1 token for a decode, the rest of
   the prompt for a prefill in progress), capped by what is left of ``max_num_batched_tokens``. Running
   decodes therefore go first: a prefill in progress is always the most recently admitted. When a request's
   KV blocks cannot be allocated, the most recently admitted running request is preempted (its blocks freed,
   its progress dropped, put at the front of the queue to recompute prompt and output so far) until the
   allocation fits or the request itself was the one preempted.
2. If nobody was preempted, queued requests are admitted in order while the budget, ``max_num_seqs`` and
   the free blocks allow; each gets ``min(what it needs, budget left)`` tokens (with chunked prefill off, a
   prompt that does not fit the budget waits). With prefix caching, a queued request first takes the
   longest run of cached full blocks of its prompt (never the whole prompt: the last token is recomputed).
3. After the forward pass, every request whose computed tokens reached its length samples one token; a
   request with all its output tokens finishes and frees its blocks.

Prefix identity comes from the trace: ``prefix_blocks`` (ids of ``block_tokens``-token prompt blocks, equal ids
meaning equal content, as in Mooncake) map onto KV blocks of ``block_size`` tokens. Requests without them
share nothing. Cached blocks that no running request holds are free, evicted least recently used first.

Plain Python on purpose: the loops touch a few dozen objects per step and run millions of times; measured
faster than numpy for batch sizes this small (benchmarks/sim_speed.py).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from replay.engines.base import Step, StepShape, capacity_rejection
from replay.trace.schema import Request

__all__ = ["SchedulerConfig", "Scheduler", "Seq"]


@dataclass(frozen=True)
class SchedulerConfig:
    """vLLM's scheduling limits (same names as its engine arguments)."""

    num_blocks: int                     # KV cache blocks of this replica (num_gpu_blocks)
    max_model_len: int                  # longest prompt + output a request may have
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = False

    def __post_init__(self) -> None:
        for name in ("num_blocks", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class Seq:
    """A request's scheduling state (vLLM's ``Request``: num_tokens, num_computed_tokens, blocks)."""

    __slots__ = ("id", "prompt", "max_out", "out", "num_tokens", "computed", "blocks", "preemptions", "keys",
                 "held", "registering", "cached_tokens", "computed_prefill")

    def __init__(self, request: Request, keys: tuple | None):
        self.id = request.id
        self.prompt = request.input_tokens
        self.max_out = request.output_tokens
        self.out = 0                  # output tokens sampled so far
        self.num_tokens = self.prompt  # prompt + output tokens that exist
        self.computed = 0             # tokens whose KV entries are computed
        self.blocks = 0               # KV blocks held (cached ones included)
        self.preemptions = 0
        self.keys = keys              # prefix-cache key of each full prompt block, or None
        self.held: list = []          # keys of the cached blocks held, a prefix of ``keys``
        self.registering = keys is not None
        self.cached_tokens = 0        # prompt tokens taken from the prefix cache at the first admission
        self.computed_prefill = 0     # prompt and recompute tokens processed (all admissions)


def prefix_keys(request: Request, block_size: int) -> tuple | None:
    """The cache key of each full ``block_size``-token prompt block covered by the request's prefix blocks."""
    ids, block_tokens = request.prefix_blocks, request.block_tokens
    if not ids or not block_tokens:
        return None
    covered = min(request.input_tokens, len(ids) * block_tokens)
    return tuple((ids[(k * block_size) // block_tokens], (k * block_size) % block_tokens)
                 for k in range(covered // block_size))


class Scheduler:
    """The scheduler state of one replica; ``step()`` plans and applies one iteration (duration is the
    engine's business: the returned Step has ``duration_s`` 0)."""

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.free_plain = config.num_blocks     # blocks holding nothing reusable
        self.cache_ref: dict = {}               # cached block key -> holders (>= 1)
        self.evictable: OrderedDict = OrderedDict()  # cached block keys nobody holds, least recent first
        self.caching = config.enable_prefix_caching

    # --- admission ---------------------------------------------------------------------------------------

    def rejection(self, request: Request) -> str | None:
        """Why ``request`` can never run on this replica, or None."""
        c = self.config
        reason = capacity_rejection(request, c.max_model_len, c.block_size, c.num_blocks)
        if reason is not None:
            return reason
        total = request.input_tokens + request.output_tokens
        if not c.enable_chunked_prefill and total > c.max_num_batched_tokens:
            # vLLM requires max_num_batched_tokens >= max_model_len without chunked prefill; per request, the
            # bound is prompt + output: a preempted request recomputes both in one step
            return (f"input + output tokens ({total}) exceed max_num_batched_tokens {c.max_num_batched_tokens} "
                    "and chunked prefill is off (a preempted request must recompute them in one step)")
        return None

    def add(self, request: Request) -> str | None:
        reason = self.rejection(request)
        if reason is None:
            keys = prefix_keys(request, self.config.block_size) if self.caching else None
            self.waiting.append(Seq(request, keys))
        return reason

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def free_blocks(self) -> int:
        return self.free_plain + len(self.evictable)

    # --- blocks ------------------------------------------------------------------------------------------

    def _take(self, n: int) -> None:
        """Take n fresh blocks (the caller checked they are free): empty ones first, then evict cached ones."""
        plain = min(n, self.free_plain)
        self.free_plain -= plain
        for _ in range(n - plain):
            self.evictable.popitem(last=False)

    def _release(self, seq: Seq) -> None:
        """Free all of ``seq``'s blocks; cached ones stay cached, tail first so the prefix is evicted last."""
        held = seq.held
        if held:
            ref, evictable = self.cache_ref, self.evictable
            for key in reversed(held):
                n = ref[key] - 1
                if n:
                    ref[key] = n
                else:
                    del ref[key]
                    evictable[key] = None
            seq.held = []
        self.free_plain += seq.blocks - len(held)
        seq.blocks = 0

    def _cache_hits(self, seq: Seq) -> tuple[int, int]:
        """(full prompt blocks found in the cache, how many of them nobody holds now)."""
        keys = seq.keys
        if not keys:
            return 0, 0
        limit = min(len(keys), (seq.num_tokens - 1) // self.config.block_size)
        ref, evictable = self.cache_ref, self.evictable
        hits = idle = 0
        while hits < limit:
            key = keys[hits]
            if key in ref:
                pass
            elif key in evictable:
                idle += 1
            else:
                break
            hits += 1
        return hits, idle

    def _hold_hits(self, seq: Seq, hits: int) -> None:
        ref, evictable = self.cache_ref, self.evictable
        for key in seq.keys[:hits]:
            if key in ref:
                ref[key] += 1
            else:
                del evictable[key]
                ref[key] = 1
        seq.held = list(seq.keys[:hits])

    def _register(self, seq: Seq) -> None:
        """Cache the prompt blocks ``seq`` has just filled, while they extend its cached prefix."""
        keys, held, ref, evictable = seq.keys, seq.held, self.cache_ref, self.evictable
        full = min(seq.computed // self.config.block_size, len(keys))
        while len(held) < full:
            key = keys[len(held)]
            if key in ref or key in evictable:  # filled concurrently by another request: keep our own copy
                seq.registering = False
                return
            ref[key] = 1
            held.append(key)
        if full == len(keys):
            seq.registering = False

    # --- decode runs (fusing identical decode-only steps) ----------------------------------------------------

    def plan_decode_run(self, max_steps: int) -> tuple[int, int, np.ndarray] | None:
        """After a decode-only step that scheduled every running request and admitted, preempted and finished
        nothing, the following steps are the same batch decoding until the first request finishes or the free
        blocks run out (nothing queued can get in meanwhile: whatever kept it out only tightens). Returns (how
        many such steps, sum of computed tokens now, cumulative new KV blocks after each step) or None."""
        running = self.running
        if not running:
            return None
        bs = self.config.block_size
        computed = np.fromiter((s.computed for s in running), dtype=np.int64, count=len(running))
        k = min(max_steps, min(s.max_out - s.out for s in running))
        if k < 1:
            return None
        # request i needs a new block at step j (1-based) when (computed_i + j - 1) % bs == 0
        per_phase = np.bincount((-computed) % bs, minlength=bs)
        cum_blocks = np.cumsum(per_phase[np.arange(k) % bs])
        k = min(k, int(np.searchsorted(cum_blocks, self.free_blocks, side="right")))
        if k < 1:
            return None
        return k, int(computed.sum()), cum_blocks[:k]

    def advance_decodes(self, k: int) -> list[str]:
        """Apply k decode steps to every running request (as planned); returns the ids finished at the last."""
        bs = self.config.block_size
        new_blocks = 0
        finished: list[str] = []
        for seq in self.running:
            c = seq.computed + k
            seq.computed = c
            seq.out += k
            seq.num_tokens += k
            blocks = (c + bs - 1) // bs
            new_blocks += blocks - seq.blocks
            seq.blocks = blocks
            if seq.out == seq.max_out:
                finished.append(seq.id)
        self._take(new_blocks)
        if finished:
            keep = []
            for seq in self.running:
                if seq.out == seq.max_out:
                    self._release(seq)
                else:
                    keep.append(seq)
            self.running = keep
        return finished

    # --- one iteration -----------------------------------------------------------------------------------

    def _preempt(self, preempted: list[Seq]) -> Seq:
        victim = self.running.pop()
        self._release(victim)
        victim.computed = 0
        victim.preemptions += 1
        victim.registering = victim.keys is not None
        self.waiting.appendleft(victim)
        preempted.append(victim)
        return victim

    def step(self) -> Step:
        c = self.config
        bs = c.block_size
        budget = c.max_num_batched_tokens
        running = self.running
        decoded: list[str] = []
        finished: list[str] = []
        chunks: list[tuple[Seq, int]] = []  # prefill or recompute work: applied after admission
        preempted: list[Seq] = []
        admitted: list[Seq] = []
        admitted_cached: list[int] = []
        decode = kv_read = 0
        attn = 0.0
        done = False

        # 1. running requests, in order; a decode's effect is applied at once (nothing below depends on it)
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            before = seq.computed
            left = seq.num_tokens - before
            n = left if left <= budget else budget
            need = (before + n + bs - 1) // bs - seq.blocks
            if need > 0:
                fits = True
                while need > self.free_plain + len(self.evictable):
                    if self._preempt(preempted) is seq:
                        fits = False
                        break
                if not fits:
                    break
                self._take(need)
                seq.blocks += need
            if left == 1 and seq.out:  # a decode (or the last token of a recompute: the same work)
                seq.computed = before + 1
                kv_read += before + 1
                attn += before + 1
                decode += 1
                decoded.append(seq.id)
                seq.num_tokens += 1
                seq.out += 1
                if seq.out == seq.max_out:
                    finished.append(seq.id)
                    done = True
            else:
                chunks.append((seq, n))
            budget -= n
            i += 1

        # 2. queued requests, only when nothing was preempted
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < c.max_num_seqs:
                seq = waiting[0]
                hits = idle = 0
                if seq.keys is not None and seq.computed == 0:
                    hits, idle = self._cache_hits(seq)
                start = hits * bs if hits else seq.computed
                n = seq.num_tokens - start
                if n > budget:
                    if not c.enable_chunked_prefill:
                        break
                    n = budget
                need = (start + n + bs - 1) // bs - hits
                if need + idle > self.free_plain + len(self.evictable):
                    break
                waiting.popleft()
                if hits:
                    self._hold_hits(seq, hits)
                    seq.computed = start
                    if seq.preemptions == 0:     # a re-admission finds its own blocks: not a hit
                        seq.cached_tokens = start
                admitted_cached.append(hits * bs)
                self._take(need)
                seq.blocks = hits + need
                running.append(seq)
                admitted.append(seq)
                chunks.append((seq, n))
                budget -= n

        # 3. prefill and recompute chunks: computed tokens, and a sampled token where the chunk completes
        prefill = sampled = 0
        prefilled: list[str] = []
        sizes: list[int] = []
        completed: list[str] = []
        first: list[str] = []
        for seq, n in chunks:
            before = seq.computed
            after = before + n
            attn += n * (before + (n + 1) * 0.5)
            kv_read += after
            prefill += n
            seq.computed = after
            seq.computed_prefill += n
            prefilled.append(seq.id)
            sizes.append(n)
            if seq.registering:
                self._register(seq)
            if after == seq.num_tokens:
                sampled += 1
                seq.out += 1
                seq.num_tokens += 1
                completed.append(seq.id)
                if seq.out == 1:
                    first.append(seq.id)
                if seq.out == seq.max_out:
                    finished.append(seq.id)
                    done = True
        if done:
            keep = []
            for seq in running:
                if seq.out == seq.max_out:
                    self._release(seq)
                else:
                    keep.append(seq)
            self.running = keep

        return Step(
            duration_s=0.0,
            shape=StepShape(prefill, decode, decode + len(chunks), sampled + decode, attn, kv_read),
            decoded=decoded,
            prefilled=prefilled,
            prefill_sizes=sizes,
            completed=completed,
            first_token=first,
            finished=finished,
            preempted=[s.id for s in preempted],
            admitted=[s.id for s in admitted],
            admitted_cached=admitted_cached,
            running=len(self.running),
            waiting=len(self.waiting),
            kv_blocks_used=c.num_blocks - self.free_plain - len(self.evictable),
            kv_blocks_total=c.num_blocks,
        )
