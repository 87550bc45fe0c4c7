"""FLOPs and bytes of LLM inference from a model's config: per request (vectorised) and per engine step.

Why: every estimate (the [Na25] FLOP estimate, the roofline, the simulated engine's step time) starts from the
same counts, so there is one copy of them here; ``replay.engines.sim.perf`` takes its coefficients from
``coefficients()``.

Notation (one replica, before any tensor-parallel split): d hidden size, L layers, h attention heads, k KV
heads (grouped-query attention: k < h), e head_dim, f MLP inner width, V vocabulary, b bytes per element of
the run dtype. FLOPs count a multiply-add as 2.

Coefficients (``Coefficients``):

- per token processed (every layer's weights, once per token)::

      attention projections  2 L (d h e [Q] + 2 d k e [K, V] + h e d [O])
      MLP                    2 L m d f      m = 3 gated (SwiGLU/GeGLU: gate, up, down; llama, qwen2, gemma2,
                                            granite), m = 2 plain (up, down; opt, falcon)
      other                  2 x (the remaining body parameters: biases and norm weights)

  which sums to 2 x N_body, N_body = every parameter outside the input embedding (OPT: and its learned
  positions) and the LM head (``ModelSpec.params`` minus those);
- per sequence that emits a token (the LM head runs on the last prompt token of a completed prefill and on
  each decode token): 2 d V;
- per causal query-key pair and layer: QK^T and PV over h heads of width e: 4 L h e;
- bytes: weights read once per forward, (N_body + V d) b (the input embedding is only gathered, T rows); K and
  V per token 2 L k e b, read for the context and written for the new tokens; activations (an estimate, below).

Activations (a simple estimate, no kernel fusion assumed): every linear layer reads its input and writes its
output once per token, and attention reads Q and writes its output: per token and layer
``b (4 d + (4 h + 2 k) e + (m' + 1) f)`` with m' = 2 gated (gate and up outputs) or 1 plain, i.e. d in and
(h + 2k) e out for QKV, h e in and h e out for attention (its K/V reads are the KV traffic), h e in and d out
for O, d in and m' f out for gate/up, f in and d out for down; plus per sampled sequence ``b (d + V)`` (the LM
head reads the hidden state and writes the logits). Real kernels fuse some of this (norms, activation,
FlashAttention keeps scores on chip), so it is an upper-side estimate of what reaches memory.

A request of n_in prompt tokens and n_out output tokens, alone (``request_counts``):

- prefill: one forward of n_in tokens that emits the first output token: FLOPs ``a n_in + s + p n_in (n_in +
  1) / 2`` (causal pairs of one sequence: n (n + 1) / 2 per layer and head); KV read n_in tokens (the context it
  attends over), written n_in;
- decode: n_out - 1 forwards (the first token came from the prefill); the step emitting output token j (j = 1
  .. n_out - 1) processes one token with context n_in + j - 1, so it has n_in + j pairs and reads n_in + j KV
  entries; in closed form ``sum_j (n_in + j) = (n_out - 1) n_in + (n_out - 1) n_out / 2``. This is the
  accounting of ``replay.engines.base.StepShape`` and ``replay.energy.attribution``, so a request's
  per-step work in a run sums to these FLOPs (tested). A prompt split into chunks (chunked prefill) does the
  same FLOPs but reads its earlier chunks' KV again in each later chunk: ``step_counts`` sees that, these
  counts (one prefill forward) do not.
- weights: a forward reads every weight once however many sequences it serves, so a request's weight bytes
  depend on batching: alone (batch 1) it reads them n_out times (prefill plus each decode step); ``batch``
  divides the weight reads (the mean number of sequences sharing a forward). FLOPs, KV and activation bytes do
  not depend on batching.

[SS26]'s simplified count (``simplified_counts``, section 3): per layer, prefill ``24 n_in d^2 + 4 n_in^2 d``
and decode step t (t = 1 .. n_out) ``24 d^2 + 4 (n_in + t - 1) d``, times L. It assumes MHA projections (8
d^2 per token: k = h, h e = d), a plain 4d MLP (16 d^2), no LM head, n_in^2 (not causal) prefill pairs and
n_out decode forwards. The full count above differs where a model departs from that (GQA, gated MLPs with f !=
4d, the vocabulary head), see tests/estimate/test_counting.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from replay.specs import ModelSpec

__all__ = [
    "DTYPE_BYTES", "STEP_COLUMNS", "Coefficients", "Counts", "SimplifiedCounts", "StepCounts", "coefficients",
    "kv_bytes_per_token", "request_counts", "resolve_dtype", "simplified_counts", "step_counts",
]

# Bytes per element for the dtype spellings Hardware.peak_flops accepts.
DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "half": 2, "fp8": 1, "float8": 1,
               "float8_e4m3fn": 1, "float8_e5m2": 1, "e4m3": 1, "fp32": 4, "float32": 4, "float": 4, "tf32": 4}
# The StepShape columns of a steps.jsonl row (replay.engines.base.StepShape).
STEP_COLUMNS = ("prefill_tokens", "decode_tokens", "num_seqs", "sampled_seqs", "attn_pairs", "kv_read_tokens")


def resolve_dtype(model: ModelSpec, dtype: str | None = None) -> tuple[str, int]:
    """(dtype name, bytes per element): the model's torch_dtype when ``dtype`` is None, else ``dtype``."""
    if dtype is None:
        return model.dtype, model.dtype_bytes
    try:
        return dtype, DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}") from None


def kv_bytes_per_token(model: ModelSpec, dtype_bytes: int, kv_heads: float | None = None) -> float:
    """Bytes of K and V per token over all layers, 2 L k e b; ``kv_heads`` overrides k (the simulated engine
    passes its per-GPU share, at least 1: vLLM replicates KV heads when tp > k)."""
    k = model.num_kv_heads if kv_heads is None else kv_heads
    return 2.0 * model.num_layers * k * model.head_dim * dtype_bytes


@dataclass(frozen=True)
class Coefficients:
    """Work per token, per sampled sequence and per causal pair of one model at one dtype (whole model, one
    replica before any tp split); see the module docstring for each formula."""

    model: str
    dtype: str
    dtype_bytes: int
    attention_flops_per_token: float   # Q, K, V, O projections (GQA: K and V have k heads)
    mlp_flops_per_token: float         # gated: 3 matrices; plain: 2
    other_flops_per_token: float       # biases and norm weights, 2 per parameter
    flops_per_token: float             # the sum of the three: 2 x body parameters
    flops_per_sampled: float           # LM head, 2 d V
    flops_per_pair: float              # QK^T and PV, 4 L h e
    weight_bytes: float                # (body + LM head) x b, read once per forward
    kv_bytes_per_token: float          # 2 L k e b
    activation_bytes_per_token: float  # b L (4 d + (4 h + 2 k) e + (m' + 1) f)
    activation_bytes_per_sampled: float  # b (d + V)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def coefficients(model: ModelSpec, dtype: str | None = None) -> Coefficients:
    """The per-token coefficients of ``model`` at ``dtype`` (default: the model's torch_dtype)."""
    name, b = resolve_dtype(model, dtype)
    d, V, L = model.hidden_size, model.vocab_size, model.num_layers
    e, h, k, f = model.head_dim, model.num_heads, model.num_kv_heads, model.intermediate_size
    embed = V * d + ((model.max_context + 2) * d if model.model_type == "opt" else 0)  # OPT: learned positions
    body = model.params - embed - (0 if model.tied_embeddings else V * d)
    attn = L * (d * h * e + 2 * d * k * e + h * e * d)
    mlp = L * (3 if model.gated_mlp else 2) * d * f
    other = body - attn - mlp
    if other < 0:
        raise ValueError(f"{model.path / 'config.json'}: model {model.key!r}: the attention and MLP matrices "
                         f"({attn + mlp} parameters) exceed the body's {body}; the config's shapes disagree")
    act_widths = 4 * d + (4 * h + 2 * k) * e + ((2 if model.gated_mlp else 1) + 1) * f
    return Coefficients(
        model=model.key, dtype=name, dtype_bytes=b,
        attention_flops_per_token=2.0 * attn, mlp_flops_per_token=2.0 * mlp, other_flops_per_token=2.0 * other,
        flops_per_token=2.0 * body, flops_per_sampled=2.0 * d * V, flops_per_pair=4.0 * L * h * e,
        weight_bytes=float((body + V * d) * b), kv_bytes_per_token=kv_bytes_per_token(model, b),
        activation_bytes_per_token=float(b * L * act_widths), activation_bytes_per_sampled=float(b * (d + V)),
    )


# --- per request ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """FLOPs and bytes of each request (arrays aligned with the n_in / n_out given), see the module docstring.

    ``weight_bytes`` (and so ``bytes`` and the phase bytes) are for forwards shared by ``batch`` sequences:
    batch 1 is the request alone; the rest does not depend on batching."""

    prefill_flops: np.ndarray
    decode_flops: np.ndarray
    flops: np.ndarray
    prefill_bytes: np.ndarray
    decode_bytes: np.ndarray
    weight_bytes: np.ndarray
    kv_read_bytes: np.ndarray
    kv_write_bytes: np.ndarray
    activation_bytes: np.ndarray
    bytes: np.ndarray
    batch: float


def _lengths(n_in: Any, n_out: Any) -> tuple[np.ndarray, np.ndarray]:
    """Whole token counts >= 1 as 1-D float arrays (broadcast together); errors name the array and position."""
    a, o = np.broadcast_arrays(np.atleast_1d(np.asarray(n_in, dtype=np.float64)),
                               np.atleast_1d(np.asarray(n_out, dtype=np.float64)))
    for name, v in (("n_in", a), ("n_out", o)):
        bad = np.flatnonzero(~(np.isfinite(v) & (v >= 1) & (v == np.round(v))).ravel())
        if len(bad):
            raise ValueError(f"{name}[{bad[0]}]: expected a whole number of tokens >= 1, got {v.ravel()[bad[0]]!r}")
    return a.astype(np.float64), o.astype(np.float64)


def request_counts(model: ModelSpec | Coefficients, n_in: Any, n_out: Any, batch: float = 1.0,
                   dtype: str | None = None) -> Counts:
    """FLOPs and bytes of requests of ``n_in`` prompt and ``n_out`` output tokens (arrays or scalars), each
    run as one prefill forward and n_out - 1 decode forwards; weight reads divided by ``batch``."""
    c = model if isinstance(model, Coefficients) else coefficients(model, dtype)
    if isinstance(batch, bool) or not isinstance(batch, (int, float)) or not np.isfinite(batch) or batch < 1:
        raise ValueError(f"batch: expected a number of sequences sharing a forward >= 1, got {batch!r}")
    n, m = _lengths(n_in, n_out)
    dec = m - 1.0                                    # decode forwards
    dec_pairs = dec * n + dec * m / 2.0              # sum over j = 1 .. m-1 of (n + j)
    prefill_flops = c.flops_per_token * n + c.flops_per_sampled + c.flops_per_pair * n * (n + 1.0) / 2.0
    decode_flops = (c.flops_per_token + c.flops_per_sampled) * dec + c.flops_per_pair * dec_pairs
    w = c.weight_bytes / batch
    kvb = c.kv_bytes_per_token
    pf_bytes = (w + kvb * n + kvb * n + c.activation_bytes_per_token * n + c.activation_bytes_per_sampled)
    dec_bytes = (w * dec + kvb * dec_pairs + kvb * dec
                 + (c.activation_bytes_per_token + c.activation_bytes_per_sampled) * dec)
    weight = w * m
    kv_read = kvb * (n + dec_pairs)
    kv_write = kvb * (n + dec)
    act = c.activation_bytes_per_token * (n + dec) + c.activation_bytes_per_sampled * m
    return Counts(prefill_flops=prefill_flops, decode_flops=decode_flops, flops=prefill_flops + decode_flops,
                  prefill_bytes=pf_bytes, decode_bytes=dec_bytes, weight_bytes=weight, kv_read_bytes=kv_read,
                  kv_write_bytes=kv_write, activation_bytes=act, bytes=weight + kv_read + kv_write + act,
                  batch=float(batch))


# --- [SS26] --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimplifiedCounts:
    """[SS26] section 3's FLOPs of each request: prefill, the n_out decode steps, and their sum."""

    prefill_flops: np.ndarray
    decode_flops: np.ndarray
    flops: np.ndarray


def simplified_counts(model: ModelSpec, n_in: Any, n_out: Any) -> SimplifiedCounts:
    """[SS26] section 3 FLOPs, times L layers: prefill ``24 n_in d^2 + 4 n_in^2 d``; decode steps t = 1 .. n_out
    ``24 d^2 + 4 (n_in + t - 1) d``, summed in closed form: ``24 d^2 n_out + 4 d (n_in n_out + n_out (n_out -
    1) / 2)``."""
    n, m = _lengths(n_in, n_out)
    d, L = float(model.hidden_size), float(model.num_layers)
    prefill = L * (24.0 * n * d * d + 4.0 * n * n * d)
    decode = L * (24.0 * d * d * m + 4.0 * d * (n * m + m * (m - 1.0) / 2.0))
    return SimplifiedCounts(prefill_flops=prefill, decode_flops=decode, flops=prefill + decode)


# --- per step ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCounts:
    """FLOPs and bytes of each step (arrays aligned with the steps frame's rows); a step that processed no
    tokens did no work (zeros)."""

    flops: np.ndarray
    weight_bytes: np.ndarray
    kv_read_bytes: np.ndarray
    kv_write_bytes: np.ndarray
    activation_bytes: np.ndarray
    bytes: np.ndarray


def step_counts(model: ModelSpec | Coefficients, steps: pd.DataFrame, dtype: str | None = None) -> StepCounts:
    """Counts of each row of a steps frame (steps.jsonl) from its StepShape columns: with T = prefill_tokens +
    decode_tokens, FLOPs ``a T + s sampled_seqs + p attn_pairs``; weights once if T > 0; KV read
    ``kv_read_tokens``, written T tokens; activations per token and per sampled sequence."""
    c = model if isinstance(model, Coefficients) else coefficients(model, dtype)
    missing = [col for col in STEP_COLUMNS if col not in steps.columns]
    if missing:
        raise ValueError(f"steps: missing column {missing[0]!r}; the step counts need {', '.join(STEP_COLUMNS)}")
    cols = {col: np.asarray(steps[col], dtype=np.float64) for col in STEP_COLUMNS}
    for col, v in cols.items():
        bad = np.flatnonzero(~(np.isfinite(v) & (v >= 0)))
        if len(bad):
            raise ValueError(f"steps: row {steps.index[bad[0]]!r}: field {col!r}: expected a number >= 0, "
                             f"got {v[bad[0]]!r}")
    tokens = cols["prefill_tokens"] + cols["decode_tokens"]
    active = tokens > 0
    flops = np.where(active, c.flops_per_token * tokens + c.flops_per_sampled * cols["sampled_seqs"]
                     + c.flops_per_pair * cols["attn_pairs"], 0.0)
    weight = np.where(active, c.weight_bytes, 0.0)
    kv_read = c.kv_bytes_per_token * cols["kv_read_tokens"]
    kv_write = c.kv_bytes_per_token * tokens
    act = c.activation_bytes_per_token * tokens + c.activation_bytes_per_sampled * cols["sampled_seqs"]
    return StepCounts(flops=flops, weight_bytes=weight, kv_read_bytes=kv_read, kv_write_bytes=kv_write,
                      activation_bytes=act, bytes=weight + kv_read + kv_write + act)
