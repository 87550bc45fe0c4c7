"""The simulated engine: vLLM v1's scheduler model, timed by the roofline performance model and costed by the
power model. Implements the Engine protocol (replay.engines.base), so the server loop cannot tell it from the
real engine. Energy from here is always *modelled*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from replay.engines.base import DecodeRun, Step
from replay.engines.sim.perf import PerfModel, PerfParams
from replay.engines.sim.power import PowerModel, PowerParams
from replay.engines.sim.scheduler import Scheduler, SchedulerConfig
from replay.specs import Hardware, ModelSpec
from replay.trace.schema import Request

__all__ = ["KVBudget", "SimEngine", "kv_budget"]

NON_TORCH_BYTES = 1 << 30  # CUDA context, NCCL and CUDA-graph buffers vLLM's profiler sees (about 1 GiB)


@dataclass(frozen=True)
class KVBudget:
    """How a GPU's memory splits, per GPU, as vLLM sizes its KV cache (``determine_num_available_blocks``)."""

    memory_bytes: float
    usable_bytes: float        # memory x gpu_memory_utilization
    weight_bytes: float        # this GPU's share of the weights
    activation_bytes: float    # peak activations of a full-budget step (estimated, not profiled)
    non_torch_bytes: float
    kv_bytes_per_block: float  # this GPU's share of one block
    num_blocks: int


def kv_budget(model: ModelSpec, hardware: Hardware, tp: int = 1, gpu_memory_utilization: float = 0.9,
              block_size: int = 16, max_num_batched_tokens: int = 8192, max_num_seqs: int = 256) -> KVBudget:
    """KV blocks that fit: (memory x utilisation - weights/tp - activations - non-torch) / bytes per block.

    Activations are estimated for a step of ``max_num_batched_tokens`` tokens (hidden states, the MLP's
    intermediate, QKV) plus fp32 logits for ``max_num_seqs`` sequences; vLLM profiles them instead, so pass
    ``--kv-blocks`` where the real count is known. KV heads split across tp (replicated when fewer than tp).
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    b = model.dtype_bytes
    usable = hardware.memory_bytes * gpu_memory_utilization
    weights = model.weight_bytes / tp
    qkv = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim
    act = (max_num_batched_tokens * (2 * model.hidden_size + (2 * model.intermediate_size + qkv) / tp) * b
           + max_num_seqs * model.vocab_size * 4)
    kv_heads = max(1.0, model.num_kv_heads / tp)
    per_block = 2 * model.num_layers * kv_heads * model.head_dim * b * block_size
    free = usable - weights - act - NON_TORCH_BYTES
    blocks = int(free // per_block) if free > 0 else 0
    if blocks < 1:
        raise ValueError(
            f"{model.key} does not fit on {tp} x {hardware.key} at gpu_memory_utilization "
            f"{gpu_memory_utilization}: {usable / 1e9:.1f} GB usable per GPU, {weights / 1e9:.1f} GB of weights, "
            f"{(act + NON_TORCH_BYTES) / 1e9:.1f} GB of activations and runtime; raise --tp or pick a larger GPU")
    return KVBudget(hardware.memory_bytes, usable, weights, act, NON_TORCH_BYTES, per_block, blocks)


class SimEngine:
    """One replica (``tp`` GPUs) of a vLLM deployment, simulated."""

    energy_label = "modelled"
    calibration = None      # replay.engines.sim.calibration.Calibration the run chose, for its records

    def __init__(self, model: ModelSpec, hardware: Hardware, *, tp: int = 1, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, block_size: int = 16, gpu_memory_utilization: float = 0.9,
                 num_blocks: int | None = None, max_model_len: int | None = None,
                 enable_chunked_prefill: bool = True, enable_prefix_caching: bool = False,
                 perf: PerfParams | None = None, power: PowerParams | None = None, dtype: str | None = None,
                 fuse_decodes: bool = True, max_fused_steps: int = 4096):
        self.model, self.hardware, self.tp = model, hardware, tp
        self.budget = None
        if num_blocks is None:
            self.budget = kv_budget(model, hardware, tp, gpu_memory_utilization, block_size,
                                    max_num_batched_tokens, max_num_seqs)
            num_blocks = self.budget.num_blocks
        self.config = SchedulerConfig(
            num_blocks=num_blocks, max_model_len=max_model_len or model.max_context, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, block_size=block_size,
            enable_chunked_prefill=enable_chunked_prefill, enable_prefix_caching=enable_prefix_caching)
        self.scheduler = Scheduler(self.config)
        self.perf = PerfModel(model, hardware, tp, perf, dtype)
        self.power = PowerModel(hardware, tp, power)
        self.idle_w = self.power.idle_w
        self.fuse_decodes, self.max_fused_steps = fuse_decodes, max_fused_steps

    def add(self, request: Request) -> str | None:
        return self.scheduler.add(request)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self, horizon_s: float = math.inf) -> Step:
        """One iteration; then, when it was decode-only and nothing can change before ``horizon_s`` (the next
        arrival), the identical decode steps that follow, as one DecodeRun (records are the same either way)."""
        scheduler = self.scheduler
        step = scheduler.step()
        s = step.shape
        args = (s.prefill_tokens, s.decode_tokens, s.num_seqs, s.sampled_seqs, s.attn_pairs, s.kv_read_tokens)
        duration = self.perf.step_time_s(*args)
        step.duration_s = duration
        step.energy_j = self.power.step_energy_j(self.perf, *args, duration)
        if (self.fuse_decodes and horizon_s > duration and not step.prefilled and not step.finished
                and not step.preempted and len(step.decoded) == len(scheduler.running)):
            step.run = self._decode_run(len(step.decoded), duration, horizon_s, step.kv_blocks_used)
        return step

    def _decode_run(self, batch: int, first_s: float, horizon_s: float, used_blocks: int) -> DecodeRun | None:
        plan = self.scheduler.plan_decode_run(self.max_fused_steps)
        if plan is None:
            return None
        k, computed, cum_blocks = plan
        kv_read = computed + batch * np.arange(1, k + 1, dtype=np.int64)
        durations = self.perf.decode_times_s(batch, kv_read)
        starts = first_s + np.cumsum(durations) - durations  # from the start of the step before the run
        k = int(np.searchsorted(starts, horizon_s, side="left"))  # steps that start before the next arrival
        if k < 1:
            return None
        durations, kv_read = durations[:k], kv_read[:k]
        energies = self.power.decode_energies_j(self.perf, batch, kv_read, durations)
        used = used_blocks + cum_blocks[:k]
        finished = self.scheduler.advance_decodes(k)
        used[-1] = self.config.num_blocks - self.scheduler.free_blocks
        return DecodeRun(k, durations, energies, kv_read, used, finished, len(self.scheduler.running),
                         len(self.scheduler.waiting))
