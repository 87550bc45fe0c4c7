"""The Engine protocol and the Step it returns: the one seam between the server loop and an engine.

Both engines (simulated and real vLLM) implement ``add / step / has_work``; the server loop (replay.server)
drives either on its own clock (DESIGN.md "One server loop, two clocks"). A Step says what one scheduler
iteration did, in the engine-independent terms the records, metrics, calibration and attribution need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from replay.trace.schema import Request

__all__ = ["STATUSES", "DecodeRun", "Engine", "Step", "StepShape", "capacity_rejection"]

# How a request's record ends: finished; rejected (it can never run here, or the server refused it); unfinished
# (a run stopped before it ended); failed (a server run: HTTP 5xx, a timeout, a broken stream, too few tokens).
STATUSES = ("finished", "rejected", "unfinished", "failed")


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one step computed, as the aggregates a performance model needs (one replica, before any
    tensor-parallel split). For each scheduled sequence let q be the tokens it processed in the step and c the
    tokens it already had in the KV cache before the step (prompt and output tokens, prefix-cache hits included).

    - ``prefill_tokens``: sum of q over sequences in prefill (or recompute after preemption)
    - ``decode_tokens``: sum of q over decoding sequences (q = 1 each)
    - ``num_seqs``: sequences scheduled
    - ``sampled_seqs``: sequences that produced an output token (decodes and prefills completed in the step)
    - ``attn_pairs``: sum of q * (c + (q + 1) / 2), the causal query-key pairs per layer and head
    - ``kv_read_tokens``: sum of (c + q), the KV entries each layer reads
    """

    prefill_tokens: int
    decode_tokens: int
    num_seqs: int
    sampled_seqs: int
    attn_pairs: float
    kv_read_tokens: int

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


@dataclass(frozen=True, slots=True)
class DecodeRun:
    """``count`` decode-only steps that follow a Step at once, by the same ``decoded`` requests (each emits one
    token per step), with nothing admitted, preempted or prefilled; ``finished`` finish at the last of them.

    An engine that can see such a stretch coming (the simulated one) returns it in one go so the server loop
    does not pay per-step overhead for it; the records are the same as stepping one at a time. Per-step values
    are arrays of length ``count``: for step j, decode_tokens = num_seqs = sampled_seqs = len(decoded) and
    attn_pairs = kv_read_tokens[j].
    """

    count: int
    durations_s: np.ndarray
    energies_j: np.ndarray | None
    kv_read_tokens: np.ndarray
    kv_blocks_used: np.ndarray
    finished: list[str]
    running: int
    waiting: int


@dataclass(slots=True)
class Step:
    """One scheduler iteration, split the way the records use it (decodes are most of the work, so they come
    as a bare list of ids).

    - ``decoded``: ids that processed 1 token as a decode and so emitted a token at the end of the step
    - ``prefilled`` / ``prefill_sizes``: ids that processed a prompt chunk (or a recompute chunk after a
      preemption), and how many tokens each; ``completed`` the subset whose prompt (or recompute) finished in
      this step, so they emitted a token too
    - ``first_token``: ids whose first output token came out of this step; ``finished``: ids now done
    - ``preempted``: ids evicted before the step (by recompute: they start over from the queue)
    - ``admitted``: ids taken from the queue into the running batch (first admission or after a preemption),
      with ``admitted_cached`` the prompt tokens each found in the prefix cache then
    - ``energy_j``: the engine's own (modelled) energy for the step; None where a meter must measure it
    - ``run``: decode-only steps that follow this one at once (see DecodeRun), or None
    """

    duration_s: float
    shape: StepShape
    decoded: list[str]
    prefilled: list[str]
    prefill_sizes: list[int]
    completed: list[str]
    first_token: list[str]
    finished: list[str]
    preempted: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    admitted_cached: list[int] = field(default_factory=list)
    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    energy_j: float | None = None
    run: DecodeRun | None = None

    @property
    def scheduled(self) -> dict[str, int]:
        """Every scheduled id and the tokens it processed."""
        return {**dict.fromkeys(self.decoded, 1), **dict(zip(self.prefilled, self.prefill_sizes))}

    @property
    def emitted(self) -> list[str]:
        """Every id that got an output token from this step."""
        return self.decoded + self.completed


class Engine(Protocol):
    """What the server loop needs from an engine."""

    def add(self, request: Request) -> str | None:
        """Queue ``request``; return None if accepted, or why it can never run (it is then not queued)."""

    def step(self, horizon_s: float = float("inf")) -> Step:
        """Run one scheduler iteration (only called while ``has_work()``). ``horizon_s``: seconds from now to the
        next moment a request may arrive; an engine may append a DecodeRun of steps that all start before it."""

    def has_work(self) -> bool:
        """True while any queued or running request is unfinished."""


def capacity_rejection(request: Request, max_model_len: int, block_size: int, num_blocks: int) -> str | None:
    """Why ``request`` can never run on an engine of this context length and KV cache, or None (the rules both
    engines share, so a simulated and a real run reject the same requests with the same words)."""
    total = request.input_tokens + request.output_tokens
    if total > max_model_len:
        return (f"input + output tokens ({request.input_tokens} + {request.output_tokens} = {total}) exceed "
                f"the model's max_model_len {max_model_len}")
    need = -(-total // block_size)
    if need > num_blocks:
        return f"needs {need} KV blocks of {block_size} tokens for {total} tokens; the cache holds {num_blocks}"
    return None
