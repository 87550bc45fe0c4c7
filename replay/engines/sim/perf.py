"""Performance model of the simulated engine: how long one scheduler step takes, from a roofline.

Why: the simulated engine (DESIGN.md, "One server loop, two clocks") needs a step duration for every batch its
scheduler forms, millions of times per run, and it must follow the two regimes of LLM serving: prefill is
compute-bound (time grows with tokens) and decode is memory-bound (time is the weight read, nearly flat in batch
size, plus the KV-cache read, which grows with context). A roofline over FLOPs and bytes gives both from the
model's shapes and the accelerator's datasheet, with six parameters, five of them fitted to measured steps.

The model (one replica of ``tp`` GPUs; FLOPs and bytes are per GPU, i.e. the replica's total / tp). With d =
hidden, V = vocab, L = layers, h = heads, k = KV heads, e = head_dim, b = bytes per element of the run dtype,
T = prefill_tokens + decode_tokens, and the StepShape fields as in replay.engines.base:

    F_lin  = 2 N_body T + 2 d V sampled_seqs        N_body: parameters outside the input embedding and LM head;
                                                     the LM head runs only for sequences that sample a token
    B_w    = (N_body + V d) b                       weights read once per step: the body and the LM head; the
                                                     input embedding is only gathered (T rows), so not counted
    F_attn = 4 L h e attn_pairs                     QK^T and PV, 2 FLOPs per multiply-add each
    B_kv   = 2 L k e b (kv_read_tokens + T)         K and V read for the context, written for the new tokens;
                                                     per GPU k/tp heads, at least 1 (vLLM replicates KV heads
                                                     when tp > k)
    time   = overhead_s + per_seq_s num_seqs + [prefill_tokens > 0] prefill_overhead_s
             + max(F_lin / (P ce), B_w / (W me))     linear layers: compute- or weight-bandwidth-bound
             + max(F_attn / (P ce), B_kv / (W me))   attention: compute- or KV-bandwidth-bound
             + [tp > 1] 2 L (2 (tp-1)/tp T d b / I + allreduce_latency_s)

The FLOP and byte coefficients are ``replay.estimate.counting.coefficients`` (the one copy of the counting,
shared with the estimators) divided by tp. P is the hardware's dense peak FLOP/s for the dtype, W its peak
memory bandwidth, ce and me the achieved fractions (``compute_efficiency``, ``memory_efficiency``). Tensor
parallelism (Megatron-style, as vLLM does it) costs two all-reduces of the activations (T x d elements) per
layer, after attention and after the MLP, each a ring all-reduce that moves 2 (tp-1)/tp of the buffer through
each GPU's link. I is ONE direction of the
interconnect: ``Hardware.interconnect_gbs`` is the total of both directions (hardware.yaml header), and a ring
sends and receives at the same time, so I = interconnect_gbs / 2 (450 GB/s on an H100 SXM). A step with no
tokens costs ``overhead_s`` only.

``fit_perf`` fits the parameters to measured step records (durations with their StepShape columns; all but the
all-reduce latency): the two efficiencies by a log-grid search then a local refinement, and for each efficiency
pair the step, per-sequence and prefill-step overheads by non-negative linear least squares. The objective is the mean squared RELATIVE error of
step time, so short decode steps and long prefill steps weigh alike. ``save_perf`` / ``load_perf`` keep fitted
parameters as YAML.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from replay.engines.base import StepShape
from replay.estimate.counting import coefficients, kv_bytes_per_token
from replay.files import read_yaml, write_atomic

if TYPE_CHECKING:
    import pandas as pd

    from replay.specs import Hardware, ModelSpec

__all__ = ["SHAPE_COLUMNS", "PerfFit", "PerfModel", "PerfParams", "fit_perf", "load_perf", "save_perf"]

SHAPE_COLUMNS = ("prefill_tokens", "decode_tokens", "num_seqs", "sampled_seqs", "attn_pairs", "kv_read_tokens")
OBJECTIVE = "mean squared relative error of step time"
MIN_STEPS = 5


@dataclass(frozen=True)
class PerfParams:
    """The six numbers of the roofline step-time model; defaults are for vLLM v1 on a datacenter GPU with CUDA
    graphs. With them Llama-3.1-8B on an H100 SXM takes about 6.7 ms for a batch-1 decode step at 1k context,
    10.5 ms for a batch-64 decode step and 30 ms for a 1k-token prefill (tests/engines/sim/test_perf.py)."""

    # Whole-forward model FLOP utilisation (MFU) of a prefill: large bf16 GEMMs reach 60-75% of the dense peak on
    # Hopper/Ampere, but norms, rotary, activation, attention kernels and launch gaps pull a full forward to about
    # 40-55%. 0.5 puts a 1k-token Llama-3.1-8B prefill on an H100 at ~30 ms.
    compute_efficiency: float = 0.5
    # Achieved fraction of peak HBM bandwidth: streaming kernels reach ~85-90% on H100/A100, decode GEMVs and
    # paged-attention reads somewhat less; 0.8 gives ~5.6 ms to read Llama-3.1-8B's 15 GB on an H100.
    memory_efficiency: float = 0.8
    # Fixed cost per step that the GPU work does not hide: scheduling, input preparation, sampling and output
    # processing on the CPU, graph launch. vLLM v1 with CUDA graphs spends on the order of 1 ms here.
    overhead_s: float = 1.0e-3
    # Per scheduled sequence: block-table and input-batch updates, sampler and output bookkeeping (~5-20 us).
    per_seq_s: float = 10.0e-6
    # Extra fixed cost of a step that holds a prompt chunk: the prefill attention path and its metadata (with
    # CUDA graphs, decode-only batches replay a captured graph and mixed ones do not). 0 by default (no published
    # figure to rest a default on); ``fit_perf`` fits it. On vLLM's CPU build it is about 1 ms (0.85 ms fitted in
    # benchmarks/results/sim_fidelity.json).
    prefill_overhead_s: float = 0.0
    # Latency of one small all-reduce on NVLink (vLLM's custom all-reduce / NCCL LL protocol, inside a CUDA
    # graph): about 5-15 us.
    allreduce_latency_s: float = 10.0e-6

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            positive = f.name.endswith("efficiency")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (positive and value == 0):
                raise ValueError(f"PerfParams: field {f.name!r}: expected a finite number "
                                 f"{'> 0' if positive else '>= 0'}, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: Any) -> PerfParams:
        return params_from_dict(cls, raw)


def params_from_dict(cls: type, raw: Any) -> Any:
    """A parameter dataclass from a mapping; keys left out take the defaults; an unknown key or bad value
    raises ValueError naming it (PerfParams, PowerParams)."""
    known = [f.name for f in fields(cls)]
    if not isinstance(raw, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping of {', '.join(known)}, got {type(raw).__name__}")
    for key in raw:
        if key not in known:
            raise ValueError(f"{cls.__name__}: unknown key {key!r}; expected keys: {', '.join(known)}")
    return cls(**raw)


class PerfModel:
    """Step time of one replica (``tp`` GPUs) of ``model`` on ``hardware``; see the module docstring."""

    def __init__(self, model: ModelSpec, hardware: Hardware, tp: int = 1, params: PerfParams | None = None,
                 dtype: str | None = None) -> None:
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp: expected a positive integer, got {tp!r}")
        if model.num_heads % tp:
            raise ValueError(f"tp={tp} does not divide {model.key}'s {model.num_heads} attention heads")
        self.model, self.hardware, self.tp = model, hardware, tp
        self.params = params = params or PerfParams()
        counts = coefficients(model, dtype)                      # the model's whole work (replay.estimate.counting)
        self.dtype, b = counts.dtype, counts.dtype_bytes
        d, L = model.hidden_size, model.num_layers
        self.peak_flops = hardware.peak_flops(self.dtype)        # per GPU, FLOP/s
        self.bandwidth_bps = hardware.memory_bandwidth_bps       # per GPU, bytes/s
        # Per-GPU work coefficients (FLOPs or bytes per unit of each StepShape field): the model's / tp (exact:
        # tp divides the heads), KV heads at least 1 per GPU.
        self.flops_per_token = counts.flops_per_token / tp
        self.flops_per_sampled = counts.flops_per_sampled / tp
        self.flops_per_pair = counts.flops_per_pair / tp
        self.weight_bytes = counts.weight_bytes / tp
        self.kv_bytes_per_token = kv_bytes_per_token(model, b, max(model.num_kv_heads / tp, 1.0))
        # Time coefficients used by the hot path.
        flop_rate = self.peak_flops * params.compute_efficiency
        byte_rate = self.bandwidth_bps * params.memory_efficiency
        self._lin_s_per_token = self.flops_per_token / flop_rate
        self._lin_s_per_sampled = self.flops_per_sampled / flop_rate
        self._weights_s = self.weight_bytes / byte_rate
        self._attn_s_per_pair = self.flops_per_pair / flop_rate
        self._kv_s_per_token = self.kv_bytes_per_token / byte_rate
        self.link_bps = hardware.interconnect_gbs * 1e9 / 2.0   # one direction of the interconnect
        if tp > 1:
            self._ar_s_per_token = 2 * L * 2.0 * (tp - 1) / tp * d * b / self.link_bps
            self._ar_s = 2 * L * params.allreduce_latency_s
        else:
            self._ar_s_per_token = self._ar_s = 0.0
        self._overhead_s, self._per_seq_s = params.overhead_s, params.per_seq_s
        self._prefill_s = params.prefill_overhead_s

    def step_time_s(self, prefill_tokens: int, decode_tokens: int, num_seqs: int, sampled_seqs: int,
                    attn_pairs: float, kv_read_tokens: int) -> float:
        """Seconds for one step (plain float arithmetic: this runs once per simulated step)."""
        tokens = prefill_tokens + decode_tokens
        if tokens <= 0:
            return self._overhead_s
        lin = self._lin_s_per_token * tokens + self._lin_s_per_sampled * sampled_seqs
        if lin < self._weights_s:
            lin = self._weights_s
        attn = self._attn_s_per_pair * attn_pairs
        kv = self._kv_s_per_token * (kv_read_tokens + tokens)
        if attn < kv:
            attn = kv
        t = (self._overhead_s + self._per_seq_s * num_seqs + lin + attn
             + self._ar_s_per_token * tokens + self._ar_s)
        return t + self._prefill_s if prefill_tokens > 0 else t

    def decode_times_s(self, batch: int, kv_read_tokens: np.ndarray) -> np.ndarray:
        """``step_time_s`` of decode-only steps of ``batch`` sequences, one per element of ``kv_read_tokens`` (the
        simulated engine's fused decode runs): the same operations in the same order, so the same bits."""
        if batch <= 0:
            return np.full(len(kv_read_tokens), self._overhead_s)
        lin = self._lin_s_per_token * batch + self._lin_s_per_sampled * batch
        if lin < self._weights_s:
            lin = self._weights_s
        head = self._overhead_s + self._per_seq_s * batch + lin
        attn = np.maximum(self._attn_s_per_pair * kv_read_tokens, self._kv_s_per_token * (kv_read_tokens + batch))
        return head + attn + self._ar_s_per_token * batch + self._ar_s

    def shape_time_s(self, shape: StepShape) -> float:
        return self.step_time_s(shape.prefill_tokens, shape.decode_tokens, shape.num_seqs, shape.sampled_seqs,
                                shape.attn_pairs, shape.kv_read_tokens)

    def work(self, prefill_tokens: int, decode_tokens: int, sampled_seqs: int, attn_pairs: float,
             kv_read_tokens: int) -> tuple[float, float]:
        """(FLOPs, bytes moved to or from memory) per GPU for one step; (0, 0) for a step with no tokens."""
        tokens = prefill_tokens + decode_tokens
        if tokens <= 0:
            return 0.0, 0.0
        flops = (self.flops_per_token * tokens + self.flops_per_sampled * sampled_seqs
                 + self.flops_per_pair * attn_pairs)
        return flops, self.weight_bytes + self.kv_bytes_per_token * (kv_read_tokens + tokens)

    def utilisation(self, prefill_tokens: int, decode_tokens: int, num_seqs: int, sampled_seqs: int,
                    attn_pairs: float, kv_read_tokens: int, duration_s: float) -> tuple[float, float]:
        """(fraction of peak FLOP/s, fraction of peak memory bandwidth) achieved per GPU over a step of
        ``duration_s``, each clipped to [0, 1]. ``num_seqs`` is accepted for a uniform signature; it adds no work."""
        if duration_s <= 0:
            return 0.0, 0.0
        flops, nbytes = self.work(prefill_tokens, decode_tokens, sampled_seqs, attn_pairs, kv_read_tokens)
        c = flops / (self.peak_flops * duration_s)
        m = nbytes / (self.bandwidth_bps * duration_s)
        return (c if c < 1.0 else 1.0), (m if m < 1.0 else 1.0)

    def features(self, steps: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per-step arrays the vectorised model needs: per-GPU FLOPs and bytes of each roofline term, the
        all-reduce transfer seconds, num_seqs, and a mask of steps that have tokens."""
        cols = {c: np.asarray(steps[c], dtype=float) for c in SHAPE_COLUMNS}
        tokens = cols["prefill_tokens"] + cols["decode_tokens"]
        active = tokens > 0
        return {
            "active": active,
            "prefill": cols["prefill_tokens"] > 0,
            "num_seqs": np.where(active, cols["num_seqs"], 0.0),
            "lin_flops": self.flops_per_token * tokens + self.flops_per_sampled * cols["sampled_seqs"],
            "weight_bytes": np.where(active, self.weight_bytes, 0.0),
            "attn_flops": self.flops_per_pair * cols["attn_pairs"],
            "kv_bytes": self.kv_bytes_per_token * (cols["kv_read_tokens"] + tokens),
            "allreduce_s": np.where(active, self._ar_s_per_token * tokens + self._ar_s, 0.0),
        }

    def roofline_s(self, feats: dict[str, np.ndarray], compute_efficiency: float,
                   memory_efficiency: float) -> np.ndarray:
        """The overhead-free part of the step time for every step, at the given efficiencies."""
        flop_rate = self.peak_flops * compute_efficiency
        byte_rate = self.bandwidth_bps * memory_efficiency
        t = (np.maximum(feats["lin_flops"] / flop_rate, feats["weight_bytes"] / byte_rate)
             + np.maximum(feats["attn_flops"] / flop_rate, feats["kv_bytes"] / byte_rate) + feats["allreduce_s"])
        return np.where(feats["active"], t, 0.0)

    def step_times_s(self, steps: pd.DataFrame) -> np.ndarray:
        """``step_time_s`` for every row of a frame with the StepShape columns (vectorised)."""
        _require(steps, SHAPE_COLUMNS)
        feats = self.features(steps)
        p = self.params
        t = (p.overhead_s + p.per_seq_s * feats["num_seqs"]
             + self.roofline_s(feats, p.compute_efficiency, p.memory_efficiency))
        return np.where(feats["prefill"], t + p.prefill_overhead_s, t)


# --- fitting -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerfFit:
    """Fitted parameters and how well they reproduce the steps they were fitted on (APE = absolute percentage
    error of step time, in %). ``holdout_*``: every fifth step held out, the rest fitted, the held-out steps
    predicted (None when fewer than 20 steps); ``params`` are then refitted on all steps."""

    params: PerfParams
    n_steps: int
    mape: float
    median_ape: float
    holdout_mape: float | None = None
    holdout_n: int = 0
    objective: str = OBJECTIVE

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params.to_dict(), "n_steps": self.n_steps, "mape": self.mape,
                "median_ape": self.median_ape, "holdout_mape": self.holdout_mape, "holdout_n": self.holdout_n,
                "objective": self.objective}


def _require(steps: pd.DataFrame, columns: tuple[str, ...]) -> None:
    for c in columns:
        if c not in steps.columns:
            raise ValueError(f"steps: missing column {c!r}; have: {', '.join(map(str, steps.columns))}")


def _durations_s(steps: pd.DataFrame) -> np.ndarray:
    if "duration_s" in steps.columns:
        y, name = np.asarray(steps["duration_s"], dtype=float), "duration_s"
    elif "start_s" in steps.columns and "end_s" in steps.columns:
        y, name = np.asarray(steps["end_s"], dtype=float) - np.asarray(steps["start_s"], dtype=float), "end_s"
    else:
        raise ValueError("steps: missing column 'duration_s' (or both 'start_s' and 'end_s')")
    bad = ~(np.isfinite(y) & (y > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"steps: row {steps.index[i]!r}: field {name!r}: expected a positive step duration, "
                         f"got {y[i]!r}")
    return y


def _nonneg_ls(gram: np.ndarray, at: np.ndarray, tt: float) -> tuple[np.ndarray, float]:
    """min ||A x - t||^2 over x >= 0, from the Gram matrix A^T A, A^T t and t^T t (a few columns: every active
    set is tried, each solved on its normal equations). -> (x, sse)."""
    k = len(at)
    best = (np.zeros(k), tt)
    for mask in range(1, 1 << k):
        idx = [i for i in range(k) if mask >> i & 1]
        g = gram[np.ix_(idx, idx)]
        if abs(np.linalg.det(g)) <= 1e-12 * max(float(np.prod(np.diag(g))), 1e-300):
            continue
        xs = np.linalg.solve(g, at[idx])
        if (xs < 0).any():
            continue
        x = np.zeros(k)
        x[idx] = xs
        sse = tt - 2.0 * float(x @ at) + float(x @ gram @ x)
        if sse < best[1]:
            best = (x, sse)
    return best


class _Fitter:
    """Objective for efficiency pairs on a fixed set of steps (weights 1/y make errors relative)."""

    def __init__(self, perf: PerfModel, feats: dict[str, np.ndarray], y: np.ndarray) -> None:
        self.perf, self.feats, self.y = perf, feats, y
        self.w = 1.0 / y
        # overhead, per-sequence and prefill-step columns, relative; a column the steps never exercise (no
        # prefill step at all) is left out and its parameter stays 0
        columns = [np.ones_like(y), feats["num_seqs"], feats["prefill"].astype(float)]
        self.used = [i for i, c in enumerate(columns) if c.any()]
        self.cols = np.column_stack([columns[i] * self.w for i in self.used])
        self.gram = self.cols.T @ self.cols
        self.ref = PerfParams()

    def solve(self, log_ce: float, log_me: float) -> tuple[float, float, float, float]:
        """-> (objective, overhead_s, per_seq_s, prefill_overhead_s) at efficiencies exp(log_ce), exp(log_me)."""
        r = self.perf.roofline_s(self.feats, math.exp(log_ce), math.exp(log_me))
        target = 1.0 - r * self.w
        x, sse = _nonneg_ls(self.gram, self.cols.T @ target, float(target @ target))
        coef = [0.0, 0.0, 0.0]
        for i, v in zip(self.used, x):
            coef[i] = float(v)
        # A vanishing pull toward the default efficiencies only breaks ties where the data do not pin one down
        # (e.g. no compute-bound step at all): 1e-8 per (natural log unit)^2.
        tie = 1e-8 * ((log_ce - math.log(self.ref.compute_efficiency)) ** 2
                      + (log_me - math.log(self.ref.memory_efficiency)) ** 2)
        return max(sse, 0.0) / len(self.y) + tie, coef[0], coef[1], coef[2]


def _fit(perf: PerfModel, feats: dict[str, np.ndarray], y: np.ndarray, bounds: tuple[float, float]) -> PerfParams:
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    # Coarse grid (10 points per decade) on at most 4000 steps, evenly spread; then pattern search on all steps.
    idx = np.linspace(0, len(y) - 1, min(len(y), 4000)).astype(int)
    coarse = _Fitter(perf, {k: v[idx] for k, v in feats.items()}, y[idx])
    grid = np.linspace(lo, hi, int(round((hi - lo) / math.log(10) * 10)) + 1)
    best = min((coarse.solve(c, m)[0], c, m) for c in grid for m in grid)
    fitter = _Fitter(perf, feats, y)
    _, c, m = best
    obj = fitter.solve(c, m)[0]
    step = float(grid[1] - grid[0])
    while step > 1e-4:
        moved = False
        for dc, dm in ((step, 0), (-step, 0), (0, step), (0, -step), (step, step), (-step, -step),
                       (step, -step), (-step, step)):
            nc, nm = min(max(c + dc, lo), hi), min(max(m + dm, lo), hi)
            o = fitter.solve(nc, nm)[0]
            if o < obj:
                obj, c, m, moved = o, nc, nm, True
        if not moved:
            step /= 2
    _, overhead, per_seq, prefill = fitter.solve(c, m)
    defaults = PerfParams()
    return PerfParams(compute_efficiency=math.exp(c), memory_efficiency=math.exp(m), overhead_s=overhead,
                      per_seq_s=per_seq, allreduce_latency_s=defaults.allreduce_latency_s,
                      prefill_overhead_s=prefill)


def _ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(pred - y) / y * 100.0


def fit_perf(steps: pd.DataFrame, model: ModelSpec, hardware: Hardware, tp: int = 1, dtype: str | None = None,
             efficiency_bounds: tuple[float, float] = (1e-4, 10.0)) -> PerfFit:
    """Fit compute_efficiency, memory_efficiency, overhead_s, per_seq_s and prefill_overhead_s to measured steps.

    ``steps`` has ``duration_s`` (or ``start_s`` and ``end_s``) and the six StepShape columns. Efficiencies are
    searched in ``efficiency_bounds`` (above 1 is allowed: a placeholder spec such as ``cpu`` may understate the
    hardware); the objective is the mean squared relative error of step time. ``allreduce_latency_s`` keeps its
    default (single-replica traces rarely pin it down).
    """
    _require(steps, SHAPE_COLUMNS)
    if len(steps) < MIN_STEPS:
        raise ValueError(f"steps: need at least {MIN_STEPS} steps to fit, got {len(steps)}")
    y = _durations_s(steps)
    for c in SHAPE_COLUMNS:
        v = np.asarray(steps[c], dtype=float)
        bad = ~(np.isfinite(v) & (v >= 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"steps: row {steps.index[i]!r}: field {c!r}: expected a number >= 0, got {v[i]!r}")
    perf = PerfModel(model, hardware, tp=tp, dtype=dtype)
    feats = perf.features(steps)
    holdout_mape, holdout_n = None, 0
    if len(y) >= 20:
        test = (np.arange(len(y)) % 5) == 4
        params = _fit(perf, {k: v[~test] for k, v in feats.items()}, y[~test], efficiency_bounds)
        pred = PerfModel(model, hardware, tp=tp, params=params, dtype=dtype).step_times_s(steps)
        holdout_mape, holdout_n = float(np.mean(_ape(pred[test], y[test]))), int(test.sum())
    params = _fit(perf, feats, y, efficiency_bounds)
    ape = _ape(PerfModel(model, hardware, tp=tp, params=params, dtype=dtype).step_times_s(steps), y)
    return PerfFit(params=params, n_steps=len(y), mape=float(np.mean(ape)), median_ape=float(np.median(ape)),
                   holdout_mape=holdout_mape, holdout_n=holdout_n)


# --- persistence ---------------------------------------------------------------------------------------------


def save_params(path: str | Path, key: str, params: Any, fit: dict | None, meta: dict | None) -> Path:
    """Write a parameter dataclass under ``key`` with its fit figures and ``meta`` (model, hardware, where the
    data came from...) as YAML: ``{key: {...}, fit: {...}, meta: {...}}`` (perf and power files alike)."""
    path = Path(path)
    doc: dict[str, Any] = {key: params.to_dict()}
    if fit is not None:
        doc["fit"] = fit
    doc["meta"] = dict(meta or {})
    try:
        text = yaml.safe_dump(doc, sort_keys=False)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: meta is not plain YAML data (str, number, list, dict): {exc}") from None
    return write_atomic(path, text)


def load_params(path: str | Path, key: str, cls: type, written_by: str) -> Any:
    """Read ``key`` of a file written by ``save_params`` as ``cls``; errors name the file and the key."""
    path = Path(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict) or key not in doc:
        raise ValueError(f"{path}: missing key {key!r} (expected a file written by {written_by})")
    try:
        return cls.from_dict(doc[key])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: key {key!r}: {exc}") from None


def save_perf(path: str | Path, fit_or_params: PerfFit | PerfParams, meta: dict | None = None) -> Path:
    """Write parameters (and, for a PerfFit, its error figures) with ``meta`` as YAML (``save_params``)."""
    if isinstance(fit_or_params, PerfFit):
        fit = {k: v for k, v in fit_or_params.to_dict().items() if k != "params"}
        return save_params(path, "perf_params", fit_or_params.params, fit, meta)
    return save_params(path, "perf_params", fit_or_params, None, meta)


def load_perf(path: str | Path) -> PerfParams:
    """Read the ``perf_params`` of a file written by ``save_perf``; errors name the file and the key."""
    return load_params(path, "perf_params", PerfParams, "save_perf")
