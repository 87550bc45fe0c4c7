"""Published measurements as a check: the ML.ENERGY leaderboard v2's measured GPU energy per request beside the
estimators, row by row, as the [Na25] Table 4 gap (measured / estimate - 1).

Why: an estimate-vs-measured gap reproduced on data nobody here produced (Chung et al., "The ML.ENERGY
Benchmark"; leaderboard v2 data, Apache-2.0, github.com/ml-energy/leaderboard-v2). Each CSV row is one model on
one GPU type (A100-SXM4-40GB or H100 80GB HBM3) under vLLM 0.5.4 at one ``max_num_seqs``, with ``TP`` GPUs per
pipeline stage and ``PP`` stages. ``Energy/req (J)`` is the energy of all ``TP x PP`` GPUs over the steady state
(every request submitted at t = 0, the window ending when the queue empties) divided by its output tokens, times
the mean output length ``Avg Output Tokens``; ``Avg BS (reqs)`` is the mean number of running requests in it.

What the comparison assumes (docs/mlenergy_gap.md says why):

- Input lengths: the CSV has none. The leaderboard's own scripts (ml-energy/leaderboard-v2 @ c3af7f3,
  ``benchmark/llm_text_generation``) fix the prompts: chat sends the first human turn of 500 ShareGPT
  conversations (prompts of 4 to 800 Llama tokens) with a fixed system prompt through each model's chat template;
  code sends the 164 HumanEval+ prompts raw to the completions endpoint. ``CHAT_INPUT_TOKENS`` and
  ``CODE_INPUT_TOKENS`` are their mean token counts, counted once with the Llama-2 SentencePiece tokenizer (the one
  the leaderboard's filter used); ``input_scale`` scales them for a sensitivity check.
- Each row is estimated as one request of the mean input and mean output length (bilinear interpolation between
  the neighbouring whole token counts, since the estimators take token counts).
- Batch: ``flops`` and ``sweetspot`` do not depend on it. ``roofline`` decodes at the row's mean batch: weights
  are read once per forward and shared by the ``Avg BS / PP`` sequences of one pipeline stage's micro-batch
  (``replay.estimate.counting``'s ``batch``); each prompt is prefilled alone (vLLM 0.5.4 ran with chunked prefill
  off, and in the steady state a prefill step admits the one or few requests whose slots just freed).
  ``roofline-b1`` is the same roofline with every request alone.
- GPUs: the measurement covers all ``TP x PP`` GPUs. The FLOP estimate is the same on any number of GPUs (tp x TDP
  over tp x peak); the roofline's ``tp x pp`` GPUs each do 1/(tp pp) of the work in 1/(tp pp) of the time at TDP,
  the same energy (communication, pipeline bubbles and KV-head replication not counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from replay.estimate.counting import Coefficients, coefficients, request_counts
from replay.estimate.estimators import EstimateContext, estimate
from replay.specs import Hardware, ModelSpec, hardware, model

__all__ = [
    "CHAT_INPUT_TOKENS", "CODE_INPUT_TOKENS", "COMPARED", "MODEL_CONFIGS", "NOT_ESTIMABLE", "Summary", "gap_table",
    "input_tokens", "read_mlenergy", "resolve_model", "roofline_batched_j", "summarize",
]

# Columns read from the CSV (name -> kind); the rest (Avg TPOT, throughput, source_path) are carried as they are.
_COLUMNS = {"task": "text", "Model": "text", "GPU": "text", "TP": "count", "PP": "count", "Energy/req (J)": "number",
            "Avg Output Tokens": "number", "Avg BS (reqs)": "number", "Max BS (reqs)": "count"}
TASKS = ("chat", "code")

# CSV model -> replay.specs model key. The -Instruct / -it variants have their base model's architecture.
MODEL_CONFIGS = {
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "meta-llama/Meta-Llama-3.1-405B-Instruct": "llama-3.1-405b",
    "google/gemma-2-2b-it": "gemma2-2b",
    "google/gemma-2-9b-it": "gemma2-9b",
    "google/gemma-2-27b-it": "gemma2-27b",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistral-7b-v0.3",
    "mistralai/Mistral-Nemo-Instruct-2407": "mistral-nemo-12b",
    "mistralai/Mistral-Large-Instruct-2407": "mistral-large-2407",
    "microsoft/Phi-3-mini-4k-instruct": "phi-3-mini-4k",
    "microsoft/Phi-3-medium-4k-instruct": "phi-3-medium-4k",
    "codellama/CodeLlama-7b-hf": "codellama-7b",
    "codellama/CodeLlama-13b-hf": "codellama-13b",
    "codellama/CodeLlama-34b-hf": "codellama-34b",
    "codellama/CodeLlama-70b-hf": "codellama-70b",
    "google/codegemma-1.1-2b": "codegemma-2b",
    "google/codegemma-7b": "codegemma-7b",
    "bigcode/starcoder2-3b": "starcoder2-3b",
    "bigcode/starcoder2-7b": "starcoder2-7b",
    "bigcode/starcoder2-15b": "starcoder2-15b",
}
_MOE = ("mixture of experts: replay.estimate.counting has no expert routing and would count every expert as active "
        "(Mixtral routes 2 of 8 experts per token: about 13B of 47B parameters active for 8x7B, 39B of 141B for "
        "8x22B)")
NOT_ESTIMABLE = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": _MOE,
    "mistralai/Mixtral-8x22B-Instruct-v0.1": _MOE,
    "microsoft/Phi-3-small-8k-instruct": ("Phi-3-small's architecture (phi3small: block-sparse attention on "
                                          "alternate layers, its own config keys) is not modelled by replay.specs"),
}

# Mean prompt tokens per request. Chat: the 500 ShareGPT first turns (ShareGPT_V3_filtered_500.json, trimmed as the
# client does), wrapped with the client's system prompt in each model's chat template (tokenizer_config.json from
# the same repository), counted with the Llama-2 tokenizer (template special tokens as one token each). The prompts
# alone average 93.6 tokens (median 28.5, p99 745); the template and system prompt add 28 (Mistral) to 78 (Llama 3.1,
# whose template adds a dated preamble). Code: the 164 HumanEval prompts, stripped as the client does, plus BOS.
CHAT_INPUT_TOKENS = {
    "google/gemma-2-2b-it": 126.57, "google/gemma-2-9b-it": 126.57, "google/gemma-2-27b-it": 126.57,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": 171.67, "meta-llama/Meta-Llama-3.1-70B-Instruct": 171.67,
    "meta-llama/Meta-Llama-3.1-405B-Instruct": 171.67,
    "microsoft/Phi-3-mini-4k-instruct": 128.67, "microsoft/Phi-3-small-8k-instruct": 124.57,
    "microsoft/Phi-3-medium-4k-instruct": 124.57,
    "mistralai/Mistral-7B-Instruct-v0.3": 121.67, "mistralai/Mistral-Nemo-Instruct-2407": 121.67,
    "mistralai/Mistral-Large-Instruct-2407": 121.67, "mistralai/Mixtral-8x7B-Instruct-v0.1": 123.67,
    "mistralai/Mixtral-8x22B-Instruct-v0.1": 121.67,
}
CODE_INPUT_TOKENS = 153.51

# The estimators set beside each row: name -> what it is.
COMPARED = {
    "flops": "[Na25] TDP / FLOPS_hw x FLOPs, dense bf16 peak",
    "flops-sparse": "[Na25] TDP / FLOPS_hw x FLOPs with the 2:4-sparse peak ([Na25]'s convention)",
    "roofline": "ideal roofline x TDP, decode at the row's mean batch (Avg BS / PP), prefill alone",
    "roofline-b1": "ideal roofline x TDP, every request alone (batch 1)",
    "sweetspot": "[SS26] Eq. 5 with the Table 5 coefficients (H100 + TensorRT-LLM)",
}


# --- reading -------------------------------------------------------------------------------------------------


def read_mlenergy(path: str | Path) -> pd.DataFrame:
    """The ML.ENERGY v2 CSV as a frame with replay's names: ``line`` (CSV line number), task, model_id, gpu, tp,
    pp, gpus (tp x pp), energy_j, output_tokens, avg_batch, max_batch, plus the CSV's other columns. Errors name the
    file, the line and the column."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (the ML.ENERGY v2 CSV, see ../shared/data/README.md)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV: {exc}") from None
    missing = [c for c in _COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]!r}; expected {', '.join(_COLUMNS)}")
    if raw.empty:
        raise ValueError(f"{path}: no rows")
    out: dict[str, Any] = {"line": np.arange(len(raw)) + 2}
    for col, kind in _COLUMNS.items():
        values = raw[col].str.strip()
        if kind == "text":
            bad = values == ""
            if bad.any():
                i = int(np.argmax(bad.to_numpy()))
                raise ValueError(f"{path}:{i + 2}: column {col!r}: empty; expected text")
            out[col] = values.to_numpy()
            continue
        num = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(num) & (num > 0)
        if kind == "count":
            ok &= num == np.round(num)
        if not ok.all():
            i = int(np.argmax(~ok))
            want = "a whole number >= 1" if kind == "count" else "a number > 0"
            raise ValueError(f"{path}:{i + 2}: column {col!r}: expected {want}, got {raw[col].iloc[i]!r}")
        out[col] = num.astype(np.int64) if kind == "count" else num
    bad_task = ~np.isin(out["task"], TASKS)
    if bad_task.any():
        i = int(np.argmax(bad_task))
        raise ValueError(f"{path}:{i + 2}: column 'task': expected one of {', '.join(TASKS)}, got {out['task'][i]!r}")
    frame = pd.DataFrame({
        "line": out["line"], "task": out["task"], "model_id": out["Model"], "gpu": out["GPU"], "tp": out["TP"],
        "pp": out["PP"], "gpus": out["TP"] * out["PP"], "energy_j": out["Energy/req (J)"],
        "output_tokens": out["Avg Output Tokens"], "avg_batch": out["Avg BS (reqs)"],
        "max_batch": out["Max BS (reqs)"],
    })
    for col in raw.columns:
        if col not in _COLUMNS:
            frame[col] = raw[col].to_numpy()
    return frame


def resolve_model(model_id: str) -> tuple[ModelSpec | None, str | None]:
    """(the model's architecture, None), or (None, why it cannot be estimated)."""
    if model_id in NOT_ESTIMABLE:
        return None, NOT_ESTIMABLE[model_id]
    key = MODEL_CONFIGS.get(model_id)
    if key is None:
        return None, f"no architecture config for {model_id!r} in replay/specs/models"
    return model(key), None


def input_tokens(task: str, model_id: str, scale: float = 1.0) -> float:
    """Mean prompt tokens of a row (``CHAT_INPUT_TOKENS`` by model, ``CODE_INPUT_TOKENS``), times ``scale``."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"input_scale: expected a number > 0, got {scale!r}")
    if task == "code":
        base = CODE_INPUT_TOKENS
    elif task == "chat":
        if model_id not in CHAT_INPUT_TOKENS:
            raise ValueError(f"no chat input length for model {model_id!r}; CHAT_INPUT_TOKENS covers "
                             f"{', '.join(CHAT_INPUT_TOKENS)}")
        base = CHAT_INPUT_TOKENS[model_id]
    else:
        raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    return max(1.0, base * scale)


# --- estimating one row --------------------------------------------------------------------------------------


def roofline_batched_j(c: Coefficients, hw: Hardware, peak_flops: float, n_in: Any, n_out: Any,
                       decode_batch: float) -> np.ndarray:
    """Ideal-roofline energy of requests whose prefill runs alone and whose decode forwards are shared by
    ``decode_batch`` sequences (weights read once per forward): per phase ``max(FLOPs / peak, bytes / bandwidth)``,
    times TDP, the accounting of replay's roofline estimator (``replay.estimate.estimators.roofline``), with the
    weight reads of the decode phase divided by the batch (``replay.estimate.counting.request_counts``)."""
    alone = request_counts(c, n_in, n_out, batch=1.0)
    shared = request_counts(c, n_in, n_out, batch=float(decode_batch))
    bw = hw.memory_bandwidth_bps
    t_s = (np.maximum(alone.prefill_flops / peak_flops, alone.prefill_bytes / bw)
           + np.maximum(shared.decode_flops / peak_flops, shared.decode_bytes / bw))
    return hw.tdp_w * t_s


def _corners(x: float) -> tuple[int, int, float]:
    """The whole token counts around ``x`` (at least 1) and the weight of the upper one."""
    lo = max(1, math.floor(x))
    hi = max(lo, math.ceil(x))
    return lo, hi, (x - lo) if hi > lo else 0.0


def _at_mean(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], n_in: float, n_out: float) -> float:
    """``fn`` (joules per request of whole-token requests) at fractional mean lengths: bilinear interpolation
    between the four whole-token neighbours (exact where the lengths are whole)."""
    i0, i1, wi = _corners(n_in)
    o0, o1, wo = _corners(n_out)
    v = np.asarray(fn(np.array([i0, i0, i1, i1], np.float64), np.array([o0, o1, o0, o1], np.float64)), np.float64)
    return float((1 - wi) * ((1 - wo) * v[0] + wo * v[1]) + wi * ((1 - wo) * v[2] + wo * v[3]))


def _estimates_j(m: ModelSpec, hw: Hardware, n_in: float, n_out: float, tp: int, decode_batch: float,
                 ) -> dict[str, tuple[float | None, str | None, str | None]]:
    """Each COMPARED estimator's joules per request of one row: name -> (joules or None, why not, note)."""
    out: dict[str, tuple[float | None, str | None, str | None]] = {}

    def via(name: str, peak: str = "dense") -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        ctx = EstimateContext(model=m, hardware=hw, tp=tp, peak=peak)

        def fn(i: np.ndarray, o: np.ndarray) -> np.ndarray:
            est = estimate(name, pd.DataFrame({"input_tokens": i, "output_tokens": o}), ctx)
            if est.total_j is None:
                raise _NotEstimated(est.reason or "not estimated")
            return est.per_request_j
        return fn

    def run(key: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], note: str | None = None) -> None:
        try:
            out[key] = (_at_mean(fn, n_in, n_out), None, note)
        except _NotEstimated as exc:
            out[key] = (None, str(exc), None)

    run("flops", via("flops"))
    run("flops-sparse", via("flops", "sparse"))
    c = coefficients(m)
    peak = hw.peak_flops(m.dtype)
    run("roofline", lambda i, o: roofline_batched_j(c, hw, peak, i, o, decode_batch))
    run("roofline-b1", via("roofline"))
    note = None if hw.key == "h100-sxm" else f"Table 5 coefficients are H100 fits; this row is on {hw.key}"
    run("sweetspot", via("sweetspot"), note)
    return out


class _NotEstimated(Exception):
    """An estimator that returned no joules (its reason is the message)."""


# --- the table -----------------------------------------------------------------------------------------------


def gap_table(data: pd.DataFrame, input_scale: float = 1.0) -> pd.DataFrame:
    """One line per (CSV row, COMPARED estimator): the measured and estimated joules per request, the [Na25]
    Table 4 gap ``measured / estimate - 1``, the absolute percentage error ``|estimate - measured| / measured``,
    and, where the row or estimator gives no estimate, ``reason`` (nothing is dropped)."""
    lines = []
    for row in data.itertuples(index=False):
        base = {"line": row.line, "task": row.task, "model_id": row.model_id, "gpu": row.gpu, "tp": int(row.tp),
                "pp": int(row.pp), "gpus": int(row.gpus), "max_batch": int(row.max_batch),
                "avg_batch": float(row.avg_batch), "output_tokens": float(row.output_tokens),
                "measured_j": float(row.energy_j)}
        m, why = resolve_model(row.model_id)
        hw = None
        if m is not None:
            try:
                hw = hardware(row.gpu)
            except ValueError as exc:
                why = str(exc)
        ests: dict[str, tuple[float | None, str | None, str | None]]
        if m is None or hw is None:
            base.update(model_key=None, hardware=None, input_tokens=None, decode_batch=None)
            ests = {name: (None, why, None) for name in COMPARED}
        else:
            n_in = input_tokens(row.task, row.model_id, input_scale)
            decode_batch = max(1.0, float(row.avg_batch) / int(row.pp))
            base.update(model_key=m.key, hardware=hw.key, input_tokens=n_in, decode_batch=decode_batch)
            ests = _estimates_j(m, hw, n_in, float(row.output_tokens), int(row.tp), decode_batch)
        for name in COMPARED:
            j, reason, note = ests[name]
            gap = ape = None
            if j is not None:
                gap = base["measured_j"] / j - 1.0
                ape = abs(j - base["measured_j"]) / base["measured_j"]
            lines.append({**base, "estimator": name, "estimate_j": j, "gap": gap, "ape": ape, "reason": reason,
                          "note": note})
    cols = ["line", "task", "model_id", "model_key", "gpu", "hardware", "tp", "pp", "gpus", "max_batch", "avg_batch",
            "decode_batch", "input_tokens", "output_tokens", "measured_j", "estimator", "estimate_j", "gap", "ape",
            "reason", "note"]
    table = pd.DataFrame(lines, columns=cols)
    for col in ("estimate_j", "gap", "ape", "input_tokens", "decode_batch"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(np.float64)
    return table


# --- the distribution ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """The gap distribution of one set of estimated lines: count, median, quartiles, extremes (gap as a fraction:
    0.64 is [Na25]'s +64%) and the mean absolute percentage error (as a fraction)."""

    n: int
    median: float | None
    p25: float | None
    p75: float | None
    min: float | None
    max: float | None
    mape: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _summary(lines: pd.DataFrame) -> Summary:
    g = lines["gap"].dropna().to_numpy(np.float64)
    a = lines["ape"].dropna().to_numpy(np.float64)
    if not len(g):
        return Summary(0, None, None, None, None, None, None)
    q = np.percentile(g, [25, 50, 75])
    return Summary(len(g), float(q[1]), float(q[0]), float(q[2]), float(g.min()), float(g.max()), float(a.mean()))


def summarize(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per estimator: ``all`` (a Summary), ``by_gpu`` and ``by_task`` (Summaries), and ``not_estimated`` (lines
    without an estimate, by reason)."""
    out: dict[str, dict[str, Any]] = {}
    for name in COMPARED:
        lines = table[table["estimator"] == name]
        done = lines[lines["estimate_j"].notna()]
        missing = lines[lines["estimate_j"].isna()]
        out[name] = {
            "all": _summary(done),
            "by_gpu": {k: _summary(v) for k, v in done.groupby("gpu", sort=True)},
            "by_task": {k: _summary(v) for k, v in done.groupby("task", sort=True)},
            "not_estimated": {str(k): int(v) for k, v in missing.groupby("reason", sort=True).size().items()},
        }
    return out
