"""A run's results as vLLM ``bench serve --save-result`` writes them (``bench.json`` in every run directory), plus
replay's energy fields, so a vLLM user loads replay's runs where they load their own.

Field names and units are vLLM's: milliseconds for ``{mean,median,std,p90,p99}_{ttft,tpot,itl,e2el}_ms``,
seconds for ``duration``, ``ttfts`` and ``latencies``, per-request lists in record order (``errors`` "" for a
request that finished). ``itls`` (per request, seconds) is filled where the records carry the client's token
times (a server run); in-process and simulated runs leave them empty (their steps.jsonl and token_steps hold
every token's time; a simulated hour has millions), and their ITL statistics come from the steps. vLLM counts ``completed`` requests only in throughputs, and
so does this. The energy fields are replay's own (``energy_*``, with ``energy_source`` saying measured or
modelled, or ``energy_not_measured_reason`` saying why there are none: never a silent 0).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from replay.files import plain, write_atomic
from replay.report.metrics import client_itls_s, pooled_itl_s

__all__ = ["bench_result", "write_bench"]

ENERGY_FIELDS = ("energy_source", "energy_not_measured_reason", "energy_total_j", "energy_idle_j",
                 "energy_above_idle_j", "energy_per_request_j", "energy_per_output_token_j", "output_tokens_per_j",
                 "mean_request_energy_j", "median_request_energy_j")


def _stats(name: str, values_s: np.ndarray) -> dict[str, float | None]:
    x = values_s[~np.isnan(values_s)] * 1000.0
    if not x.size:
        return {f"{s}_{name}_ms": None for s in ("mean", "median", "std", "p90", "p99")}
    p90, p99 = np.percentile(x, [90, 99])
    return {f"mean_{name}_ms": float(x.mean()), f"median_{name}_ms": float(np.median(x)),
            f"std_{name}_ms": float(x.std()), f"p90_{name}_ms": float(p90), f"p99_{name}_ms": float(p99)}


def _column(requests: pd.DataFrame, name: str) -> np.ndarray:
    if name not in requests.columns:
        return np.full(len(requests), np.nan)
    return pd.to_numeric(requests[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def request_itls_s(requests: pd.DataFrame) -> list[list[float]]:
    """Per request, the gaps between its consecutive output tokens as the client saw them (seconds; a server
    run's ``token_times_s``); empty lists for records without token times (in-process and simulated runs keep
    theirs in the steps)."""
    return [gaps.tolist() for gaps in client_itls_s(requests)]


def bench_result(summary: Any, requests: pd.DataFrame, steps: pd.DataFrame, config: Any,
                 engine: dict[str, Any]) -> dict[str, Any]:
    """The ``bench serve`` result dict for a run (see the module docstring)."""
    s = summary.to_dict()
    n = len(requests)
    status = requests["status"].to_numpy(dtype=object) if n else np.empty(0, dtype=object)
    fin = status == "finished"
    arrival = _column(requests, "arrival_s")
    ttft, tpot, e2e = _column(requests, "ttft_s"), _column(requests, "tpot_s"), _column(requests, "e2e_s")
    itls = request_itls_s(requests)
    pooled = pooled_itl_s(requests[fin], steps) if fin.any() else np.empty(0)  # as the summary pools them
    reasons = requests["reason"].tolist() if "reason" in requests.columns else [None] * n
    rate = config.rate_per_s if config.arrival in ("poisson", "gamma") else None
    doc: dict[str, Any] = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "openai" if config.engine == "server" else f"replay-{config.engine}",
        "backend": "openai" if config.engine == "server" else f"replay-{config.engine}",
        "label": None, "model_id": config.model, "tokenizer_id": None, "num_prompts": n,
        "request_rate": rate if rate is not None else "inf" if config.arrival in ("offline", "static") else
        f"trace ({config.arrival})",
        "burstiness": 1.0 / config.cv ** 2 if config.arrival == "gamma" and config.cv else 1.0,
        "max_concurrency": config.concurrency if config.arrival == "closed" else None,
        "duration": s["duration_s"], "completed": s["finished"],
        "failed": int(n - s["finished"]),
        "total_input_tokens": s["total_input_tokens"], "total_output_tokens": s["total_output_tokens"],
        "request_throughput": s["request_throughput"], "request_goodput": s["request_goodput"],
        "output_throughput": s["output_throughput"], "total_token_throughput": s["total_token_throughput"],
        "input_lens": _column(requests, "input_tokens").tolist() if n else [],
        "output_lens": [int(g) if fin[i] else 0 for i, g in enumerate(_column(requests, "generated_tokens"))],
        "ttfts": [None if math.isnan(v) else float(v) for v in ttft],
        "itls": itls,
        "latencies": [None if math.isnan(v) else float(v) for v in e2e],
        "start_times": [None if math.isnan(v) else float(v) for v in arrival],
        "generated_texts": [""] * n,
        "errors": ["" if fin[i] else str(reasons[i] or status[i]) for i in range(n)],
        **_stats("ttft", ttft[fin] if n else np.empty(0)),
        **_stats("tpot", tpot[fin] if n else np.empty(0)),
        **_stats("itl", pooled),
        **_stats("e2el", e2e[fin] if n else np.empty(0)),
        **{k: s.get(k) for k in ENERGY_FIELDS},
        "replay": {"engine": engine.get("engine"), "arrival": config.arrival, "trace": config.trace,
                   "energy_per_request_j": ([None if math.isnan(v) else float(v) for v in _column(requests, "energy_j")]
                                            if "energy_j" in requests.columns else None)},
    }
    doc["input_lens"] = [int(v) for v in doc["input_lens"]]
    return doc


def write_bench(path: Path, summary: Any, requests: pd.DataFrame, config: Any, engine: dict[str, Any],
                steps: pd.DataFrame | None = None) -> None:
    """``bench.json`` (atomic)."""
    doc = plain(bench_result(summary, requests, steps if steps is not None else pd.DataFrame(), config, engine))
    write_atomic(path, json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n")
