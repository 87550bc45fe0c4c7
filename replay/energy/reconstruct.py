"""Engine steps reconstructed from streamed token times, for engines whose steps are not visible (a server
behind an HTTP API): a reconstruction, not a record, and every output built on it says so.

A continuous-batching server emits, at the end of each forward pass, one token for every sequence in the
batch that sampled one; its streams carry them to the client together. So the token times of all requests in
flight on one replica, merged and sorted, fall into groups, one per step, and:

- a request emits at most one token per step, in step order;
- the tokens of one step reach the client within a short window: ``gap_fraction`` x the typical step time
  (the median over requests of their mean inter-token time, TPOT).

So each token, in time order, joins the earliest group that started at most that window before it, holds
no token of its request yet and comes after the request's last group; else it starts a new group. (A token
delivered late, after the next step's first tokens, still goes back to its own step while within the window.)
Where the server counts its own steps (vLLM's ``/metrics``), the window is the one whose groups come closest
to that count: a client on a busy machine reads the streams late and unevenly, and a fixed window would then
split steps.

Step k of a replica then ends at its group's first token time and starts where step k - 1 ended, or at the
earliest send time of the requests in the group when the server had nothing in flight before (so idle gaps
stay outside every step). Its work is the group's tokens: one per decode, and a request's prompt (less the
prefix-cache hits the server reported) ending at the step of its first token, as ``prefill_steps`` of
[step, tokens, context_tokens]. With the server's token budget per step (vLLM's ``max_num_batched_tokens``) a
prompt is chunked back over the steps before its first token, as chunked prefill runs it: first come (first
token) first served, each step taking what its decodes and earlier prompts leave, never before the request
was sent; without it, the whole prompt goes to the first token's step. The records then carry
``token_steps`` and ``prefill_steps`` as ``replay.energy.attribution`` reads them, so a server run is
attributed exactly as an in-process one, on these steps.

What it cannot see: where a prompt's chunks really ran (the budget rule is the scheduler's, not its record),
steps that emitted no token (they fall inside a longer step), queueing (``waiting`` is 0) and the KV cache
(``kv_blocks_*`` 0). ``benchmarks/reconstruction_accuracy.py`` measures the per-request error against the
exact steps of in-process runs.

A chunk that carried k > 1 tokens (the server merges tokens a slow reader has not taken yet) is recorded as k
equal times; the earlier k - 1 are spread evenly back to the request's previous token time before grouping.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from replay.server import STEP_FIELDS

__all__ = ["GAP_FRACTION", "Reconstruction", "reconstruct_steps", "spread_times"]

GAP_FRACTION = 0.75
CALIBRATION_FRACTIONS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # tried when the server's own step count is known
MIN_GAP_S = 1e-4          # with no inter-token gaps to learn from (one-token requests): 0.1 ms


@dataclass(frozen=True)
class Reconstruction:
    """Reconstructed steps (``replay.server.STEP_FIELDS`` columns) and, per request record (same order as
    given), its ``token_steps`` and ``prefill_steps``; per replica, how it was grouped: the window, the steps
    against the server's own count where known, and the delivery spread (how long after a group's first token
    its last one came: the streams' jitter as this client saw it)."""

    steps: pd.DataFrame
    token_steps: list[list[list[int]]]
    prefill_steps: list[list[list[int]]]
    replicas: dict[int, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"method": "token-time groups: one token per request per step, a step's tokens within a window "
                          "of the median TPOT (calibrated to the server's step count where it reports one)",
                "steps": int(len(self.steps)), "replicas": {str(k): v for k, v in self.replicas.items()}}


def spread_times(times_s: Sequence[float]) -> np.ndarray:
    """A request's token times with each run of k equal times (one chunk of k tokens) spread evenly back to
    the previous distinct time: the earlier k - 1 tokens came out in steps between the two."""
    t = np.asarray(times_s, dtype=np.float64)
    if t.size < 2 or not (np.diff(t) == 0).any():
        return t
    out = t.copy()
    i = 0
    n = t.size
    while i < n:
        j = i
        while j + 1 < n and t[j + 1] == t[i]:
            j += 1
        k = j - i + 1
        if k > 1 and i > 0:
            prev = t[i - 1]
            out[i:j + 1] = prev + (t[i] - prev) * np.arange(1, k + 1) / k
        i = j + 1
    return out


def _field(rec: Mapping[str, Any], name: str, default: Any = None) -> Any:
    v = rec.get(name, default)
    if isinstance(v, float) and math.isnan(v):
        return default
    return default if v is None else v


def reconstruct_steps(records: pd.DataFrame | Sequence[Mapping[str, Any]], gap_fraction: float = GAP_FRACTION,
                      token_budget: int | None = None,
                      steps_known: Mapping[int, int | None] | None = None) -> Reconstruction:
    """Reconstruct the steps of every replica from the records' ``token_times_s`` (run clock, one per output
    token), ``sent_s`` (else ``submitted_s``), ``finished_s``, ``input_tokens``, ``cached_tokens`` and
    ``replica``. Records without token times (rejected, failed before a token) get no steps.
    ``token_budget``: the server's tokens per step (vLLM's ``max_num_batched_tokens``): prompts are then chunked
    back over the steps before their first token, as chunked prefill runs them; None: each prompt whole at its
    first token. ``steps_known``: per replica, the number of steps the server itself counted (vLLM's
    ``vllm:iteration_tokens_total_count`` over the run): the window is then the one of ``CALIBRATION_FRACTIONS``
    (or ``gap_fraction``) whose groups come closest to it."""
    if token_budget is not None and not (isinstance(token_budget, int) and token_budget >= 1):
        raise ValueError(f"token_budget: expected an integer >= 1 or None, got {token_budget!r}")
    recs = records.to_dict("records") if isinstance(records, pd.DataFrame) else list(records)
    n = len(recs)
    token_steps: list[list[list[int]]] = [[] for _ in range(n)]
    prefill_steps: list[list[list[int]]] = [[] for _ in range(n)]
    # events per replica: (time, record index, token index)
    by_replica: dict[int, list[tuple[np.ndarray, int]]] = {}
    for i, rec in enumerate(recs):
        times = _field(rec, "token_times_s", [])
        if not len(times):
            continue
        t = spread_times(times)
        if (np.diff(t) < 0).any() or not np.isfinite(t).all():
            raise ValueError(f"request {rec.get('id')!r}: field 'token_times_s': expected finite times in order")
        by_replica.setdefault(int(_field(rec, "replica", 0)), []).append((t, i))
    frames = []
    infos: dict[int, dict[str, Any]] = {}
    for replica in sorted(by_replica):
        known = (steps_known or {}).get(replica)
        frame, info = _replica_steps(replica, by_replica[replica], recs, token_steps, prefill_steps, gap_fraction,
                                     token_budget, int(known) if known else None)
        frames.append(frame)
        infos[replica] = info
    steps = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in STEP_FIELDS})
    return Reconstruction(steps, token_steps, prefill_steps, infos)


def _group(times: np.ndarray, owner: np.ndarray, window_s: float) -> tuple[np.ndarray, list[float]]:
    """Each token (in time order) joins the earliest recent group (started within ``window_s`` before it) that
    holds nothing of its request and comes after the request's last group, else starts a new one: the group of
    each token, and each group's first time (a Python pass over the tokens)."""
    group = np.empty(times.size, dtype=np.int64)
    starts: list[float] = []
    recent: deque[tuple[float, int, set[int]]] = deque()   # (start, index, requests) of groups still open
    last_of: dict[int, int] = {}
    for j, (t, o) in enumerate(zip(times.tolist(), owner.tolist())):
        while recent and recent[0][0] < t - window_s:
            recent.popleft()
        after = last_of.get(o, -1)
        for start, k, members in recent:
            if k > after and o not in members:
                break
        else:
            k, members = len(starts), set()
            starts.append(t)
            recent.append((t, k, members))
        members.add(o)
        group[j] = k
        last_of[o] = k
    return group, starts


def _replica_steps(replica: int, series: list[tuple[np.ndarray, int]], recs: list, token_steps: list,
                   prefill_steps: list, gap_fraction: float, token_budget: int | None,
                   steps_known: int | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    times = np.concatenate([t for t, _ in series])
    owner = np.concatenate([np.full(t.size, i, dtype=np.int64) for t, i in series])
    index = np.concatenate([np.arange(t.size, dtype=np.int64) for t, _ in series])
    # the typical step time: the median over requests of their mean inter-token time (TPOT), which streams
    # delivered in bursts (a busy server flushing several events at once) do not shrink as single gaps would
    tpot = np.array([(t[-1] - t[0]) / (t.size - 1) for t, _ in series if t.size > 1])
    median_itl = float(np.median(tpot)) if tpot.size else 0.0
    order = np.lexsort((index, owner, times))
    times, owner, index = times[order], owner[order], index[order]

    def window(fraction: float) -> float:
        return max(fraction * median_itl, MIN_GAP_S)

    group, starts = _group(times, owner, window(gap_fraction))
    fraction = gap_fraction
    if steps_known:  # the server counted its steps: take the window whose groups come closest to that count
        for f in CALIBRATION_FRACTIONS:
            g, st = _group(times, owner, window(f))
            if abs(len(st) - steps_known) < abs(len(starts) - steps_known):
                group, starts, fraction = g, st, f
    gap_s = window(fraction)
    n_steps = len(starts)
    end_s = np.array(starts)
    spread = np.zeros(n_steps)
    np.maximum.at(spread, group, times - end_s[group])
    info = {"window_s": gap_s, "window_fraction_of_median_tpot": fraction, "median_tpot_s": median_itl,
            "steps": n_steps, "server_steps": steps_known,
            "delivery_spread_p50_s": float(np.median(spread)) if n_steps else None,
            "delivery_spread_p99_s": float(np.percentile(spread, 99)) if n_steps else None}

    # decodes: every token but a request's first, one each
    n_in_of = {i: float(_field(recs[i], "input_tokens", 0)) for _, i in series}
    is_first = index == 0
    dec = ~is_first
    n_in_tok = np.array([n_in_of[i] for i in owner.tolist()])
    c_dec = n_in_tok + index - 1
    decode = np.bincount(group[dec], minlength=n_steps).astype(np.float64)
    seqs = decode.copy()
    attn = np.bincount(group[dec], c_dec[dec] + 1, n_steps)
    kv = np.bincount(group[dec], c_dec[dec] + 1, n_steps)
    sampled = np.bincount(group, minlength=n_steps)
    prefill = np.zeros(n_steps)

    # start: where the last step ended, or the earliest send among the group's requests when later
    sent_of = {i: float(_field(recs[i], "sent_s", _field(recs[i], "submitted_s", 0.0))) for _, i in series}
    sent = np.array([sent_of[i] for i in owner.tolist()])
    earliest = np.full(n_steps, math.inf)
    np.minimum.at(earliest, group, sent)
    prev_end = np.r_[-math.inf, end_s[:-1]]
    start_s = np.minimum(np.maximum(prev_end, earliest), end_s)
    start_s[0] = min(earliest[0], end_s[0])

    # prompts: each ends at the step of the request's first token; with a token budget, chunks go back over
    # the steps before it (that ended after it was sent), filling what the budget leaves, first come first
    firsts = sorted((int(group[j]), sent_of[int(owner[j])], int(owner[j])) for j in np.flatnonzero(is_first))
    load = decode.copy()
    chunks_of: dict[int, list[list[int]]] = {}
    for f, sent_i, i in firsts:
        cached = min(float(_field(recs[i], "cached_tokens", 0)), max(n_in_of[i] - 1, 0))
        left = int(n_in_of[i] - cached)
        chunks: list[list[int]] = []
        k = f
        while left > 0:
            room = left if token_budget is None else max(int(token_budget - load[k]), 0)
            earlier = k > 0 and end_s[k - 1] > sent_i and token_budget is not None
            take = min(left, room) if earlier else left   # the earliest step it can be in takes the rest
            if k == f:
                take = max(take, 1)                        # the last chunk is in the first token's step
            if take > 0:
                chunks.append([k, take])
                load[k] += take
                left -= take
            if not earlier:
                break
            k -= 1
        chunks.reverse()
        context = cached
        for chunk in chunks:
            k, q = chunk
            chunk.append(int(context))
            prefill[k] += q
            seqs[k] += 1
            attn[k] += q * (context + (q + 1) / 2)
            kv[k] += context + q
            context += q
        chunks_of[i] = chunks

    # requests in flight at each step's end (sent and not yet finished): the server's running + waiting
    ids = sorted({i for _, i in series})
    sends = np.sort([sent_of[i] for i in ids])
    ends = np.sort([float(_field(recs[i], "finished_s", math.inf)) for i in ids])
    running = np.searchsorted(sends, end_s, side="right") - np.searchsorted(ends, end_s, side="left")

    # per-request records: token runs, prompt chunks
    by_owner = np.argsort(owner, kind="stable")  # each request's tokens together, in time order
    cuts = np.flatnonzero(np.diff(owner[by_owner])) + 1
    for mine in np.split(by_owner, cuts):
        i = int(owner[mine[0]])
        ks = group[mine]
        starts = np.r_[0, np.flatnonzero(np.diff(ks) != 1) + 1]
        counts = np.diff(np.r_[starts, ks.size])
        token_steps[i] = [[int(ks[s]), int(cnt)] for s, cnt in zip(starts.tolist(), counts.tolist())]
        prefill_steps[i] = chunks_of.get(i, [])

    frame = pd.DataFrame({
        "replica": np.full(n_steps, replica, dtype=np.int64), "step": np.arange(n_steps, dtype=np.int64),
        "start_s": start_s, "end_s": end_s, "duration_s": end_s - start_s,
        "prefill_tokens": prefill.astype(np.int64), "decode_tokens": decode.astype(np.int64),
        "num_seqs": seqs.astype(np.int64), "sampled_seqs": sampled.astype(np.int64), "attn_pairs": attn,
        "kv_read_tokens": kv.astype(np.int64), "running": running.astype(np.int64),
        "waiting": np.zeros(n_steps, dtype=np.int64), "kv_blocks_used": np.zeros(n_steps, dtype=np.int64),
        "kv_blocks_total": np.zeros(n_steps, dtype=np.int64), "preempted": np.zeros(n_steps, dtype=np.int64),
        "energy_j": np.full(n_steps, np.nan)}, columns=list(STEP_FIELDS))
    return frame, info
