"""Power model of the simulated engine: modelled (never measured) accelerator power and energy per step.

Why: a simulated run has no meter, yet its energy must respond to what the batch does: a compute-bound prefill
drives a GPU to its power limit, a memory-bound decode draws well below it, and an idle replica still draws
idle power. The model maps the per-GPU utilisation the performance model reports for a step (fraction of peak
FLOP/s c, fraction of peak memory bandwidth m; ``PerfModel.utilisation``) to board power, linearly between
idle and max and capped at max, plus ``busy_w`` for any step that does work (a GPU running kernels draws more
than idle whatever they do; 0 by default, fitted by ``replay calibrate --power``, see power_fit.py):

    P_replica = tp * (idle_w + (max_w - idle_w) * min(1, busy_w / (max_w - idle_w) + compute_weight * c
                                                         + memory_weight * m))
    E_step    = P_replica * duration_s

Every figure this module produces is labelled ``LABEL = "modelled"``; reports must never present it as measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from replay.engines.sim.perf import PerfModel, params_from_dict
from replay.specs import Hardware

__all__ = ["LABEL", "PowerModel", "PowerParams"]

LABEL = "modelled"


@dataclass(frozen=True)
class PowerParams:
    """Per-GPU power between idle and max, driven by compute and memory-bandwidth utilisation.

    The default weights put the power of Llama-3.1-8B on an H100 SXM (with the default PerfParams, which give a
    1k-token prefill about 48% of the dense peak and a decode about 67% of peak bandwidth) at TDP for the prefill,
    ~53% of TDP (372 W) for a batch-1 decode and ~70% (489 W) for a batch-64 decode at 1k context. What they rest
    on:
    - Prefill at TDP: Splitwise (Patel et al., ISCA 2024, section III) measures the prompt phase on DGX-H100 drawing
      close to the power limit and the token phase well below it; dense bf16 GEMMs on H100 SXM are known to run
      into the 700 W limit at well under full MFU. So compute_weight 2.0: at ~50% of peak FLOP/s the GPU is at max.
    - Decode at ~50-75% of TDP: ML.ENERGY benchmark (v3) H100 SXM figures for 8B models under vLLM, as used to
      anchor the fleet-sim power model of vllm-project/semantic-router, run from about 300 W at batch 1 to about
      600 W at batch 128; decode stays under the cap (Splitwise; Ma et al., arXiv 2605.11999, measure 137-300 W
      for decode on a 700 W H200). memory_weight 0.7 at ~0.67 bandwidth utilisation gives 372 W at batch 1, and
      the compute term lifts larger batches toward 490-545 W (batch 64-128).
    The ML.ENERGY v2 rows shipped in shared/data (older vLLM, slower steps) average 245-305 W on H100 for
    Llama-3.1-8B at batch 64-1024; see tests/engines/sim/test_power.py for that comparison.
    """

    idle_w: float | None = None      # per GPU; None -> hardware.idle_w
    max_w: float | None = None       # per GPU; None -> hardware.tdp_w
    compute_weight: float = 2.0      # share of (max - idle) drawn per unit of compute utilisation
    memory_weight: float = 0.7       # share of (max - idle) drawn per unit of memory-bandwidth utilisation
    busy_w: float = 0.0              # per GPU, more than idle while a step does any work (fitted; 0: not known)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in ("idle_w", "max_w"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"PowerParams: field {f.name!r}: expected a finite number >= 0, got {value!r}")
        if self.idle_w is not None and self.max_w is not None and self.max_w < self.idle_w:
            raise ValueError(f"PowerParams: field 'max_w': {self.max_w} is below idle_w {self.idle_w}")

    def to_dict(self) -> dict[str, float | None]:
        return {k: (None if v is None else float(v)) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: Any) -> PowerParams:
        return params_from_dict(cls, raw)


class PowerModel:
    """Modelled power of one replica of ``tp`` GPUs of ``hardware``. ``idle_w`` and ``max_w`` are replica totals."""

    label = LABEL

    def __init__(self, hardware: Hardware, tp: int = 1, params: PowerParams | None = None) -> None:
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp: expected a positive integer, got {tp!r}")
        self.hardware, self.tp = hardware, tp
        self.params = params = params or PowerParams()
        gpu_idle_w = hardware.idle_w if params.idle_w is None else params.idle_w
        gpu_max_w = hardware.tdp_w if params.max_w is None else params.max_w
        if gpu_max_w < gpu_idle_w:
            raise ValueError(f"power model for {hardware.key!r}: max_w {gpu_max_w} is below idle_w {gpu_idle_w}")
        self.idle_w = tp * float(gpu_idle_w)
        self.max_w = tp * float(gpu_max_w)
        self._span_w = self.max_w - self.idle_w
        self._cw, self._mw = float(params.compute_weight), float(params.memory_weight)
        # busy_w as a share of the span (0 where the span is 0: then power is idle whatever the load)
        self._busy = float(params.busy_w) / (gpu_max_w - gpu_idle_w) if gpu_max_w > gpu_idle_w else 0.0

    def power_w(self, compute_frac: float, memory_frac: float) -> float:
        """Replica watts of a step that does work at the given per-GPU utilisations (fractions of peak, 0..1)."""
        load = self._busy + self._cw * compute_frac + self._mw * memory_frac
        return self.idle_w + self._span_w * (load if load < 1.0 else 1.0)

    def step_energy_j(self, perf: PerfModel, prefill_tokens: int, decode_tokens: int, num_seqs: int,
                      sampled_seqs: int, attn_pairs: float, kv_read_tokens: int, duration_s: float) -> float:
        """Modelled joules of one step of ``duration_s`` (the replica, all tp GPUs)."""
        if perf.tp != self.tp:
            raise ValueError(f"perf model has tp={perf.tp} but power model has tp={self.tp}")
        c, m = perf.utilisation(prefill_tokens, decode_tokens, num_seqs, sampled_seqs, attn_pairs, kv_read_tokens,
                                duration_s)
        if prefill_tokens + decode_tokens <= 0:                     # a step without work: idle
            return self.idle_w * duration_s
        return self.power_w(c, m) * duration_s

    def decode_energies_j(self, perf: PerfModel, batch: int, kv_read_tokens: np.ndarray,
                          durations_s: np.ndarray) -> np.ndarray:
        """``step_energy_j`` of decode-only steps (see ``PerfModel.decode_times_s``), the same bits."""
        if batch <= 0:
            return self.idle_w * durations_s
        flops = (perf.flops_per_token * batch + perf.flops_per_sampled * batch
                 + perf.flops_per_pair * kv_read_tokens)
        nbytes = perf.weight_bytes + perf.kv_bytes_per_token * (kv_read_tokens + batch)
        c = np.minimum(flops / (perf.peak_flops * durations_s), 1.0)
        m = np.minimum(nbytes / (perf.bandwidth_bps * durations_s), 1.0)
        load = np.minimum(self._busy + self._cw * c + self._mw * m, 1.0)
        return (self.idle_w + self._span_w * load) * durations_s

    def idle_energy_j(self, seconds: float) -> float:
        """Modelled joules of the replica sitting idle for ``seconds``."""
        return self.idle_w * seconds
