"""Energy of each step from the timeline, and each request's share of the steps it was in.

Step energy is a window of the timeline (``EnergyTimeline.window_energies_j`` over [start_s, end_s]) on the
devices of the step's replica. A request's energy is the sum, over the steps it was in, of

    E_step * w_request,step / W_step

where ``w`` is the request's work in the step and ``W`` the step's total work:

- ``method="tokens"``: tokens processed (a decode 1, a prompt chunk its size); ``W`` is the step's recorded
  ``prefill_tokens + decode_tokens``.
- ``method="flops"``: ``a * tokens + s * sampled + p * attn_pairs`` with the simulated engine's per-token
  coefficients (``FlopCoefficients.from_perf``: a = 2 x non-embedding parameters, s = 2 x hidden x vocab for a
  sequence that emits a token, p = 4 x layers x heads x head_dim per causal query-key pair), and for one
  sequence attn_pairs = q * (c + (q + 1) / 2) (q tokens processed, c already in the KV cache), as in
  ``replay.engines.base.StepShape``.

``attribute`` takes the step energies from a timeline (``step_energies_j``) and splits them with
``split_step_energy``, which takes step energies from anywhere (the roofline estimator's estimated steps). Both
accept ``work=request_step_work(requests)`` computed once by a caller that splits the same records twice.

Work a step did that no request record claims (a request still unfinished when an interrupted run stopped)
stays in ``unattributed_j``, so ``attributed_j + unattributed_j == steps_j`` always, and
``steps_j + outside_steps_j`` is the timeline's total (time when no step ran: idle gaps, before and after).

What the request records must carry (requests.jsonl): ``token_steps`` (run-length [first_step, count] of the
steps in which the request emitted a token; the server writes this) and ``prefill_steps``: one entry per step
in which the request processed prompt (or recompute) tokens, ``[step, tokens]`` or ``[step, tokens,
context_tokens]`` (context_tokens = c above, prefix-cache hits included). Without ``context_tokens`` the FLOP
method takes c as the request's earlier prefill chunks since its last emitted token (exact without prefix-cache
hits and without a preemption in the middle of a prompt). The token method needs only [step, tokens].

A decode step emitting the request's j-th output token (j = 0 is the token of the completed prompt) has q = 1
and c = input_tokens + j - 1, so attn_pairs = input_tokens + j.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from operator import itemgetter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from replay.energy.timeline import EnergyTimeline

__all__ = ["METHODS", "Attribution", "FlopCoefficients", "Split", "attribute", "request_step_work",
           "split_step_energy", "step_energies_j"]

METHODS = ("tokens", "flops")


@dataclass(frozen=True)
class FlopCoefficients:
    """FLOPs per token processed, per sequence that emits a token (the LM head), per causal query-key pair."""

    per_token: float
    per_sampled: float
    per_pair: float

    @classmethod
    def from_perf(cls, perf: Any) -> FlopCoefficients:
        """From a ``replay.engines.sim.perf.PerfModel`` (its per-GPU coefficients; shares do not depend on tp)."""
        return cls(float(perf.flops_per_token), float(perf.flops_per_sampled), float(perf.flops_per_pair))


@dataclass(frozen=True)
class Attribution:
    """Step and request energies by one ``method`` ("tokens" or "flops")."""

    method: str
    steps: pd.DataFrame      # replica, step, start_s, end_s, energy_j, work, attributed_j
    requests: pd.DataFrame   # id, replica, tokens, work, energy_j (one row per request record, rejected: 0 work)
    steps_j: float           # sum of step energies
    attributed_j: float      # sum of request energies
    unattributed_j: float    # step energy of work no record claims
    outside_steps_j: float   # timeline total minus steps_j (no step running)
    total_j: float           # the timeline's total over the devices used

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "steps_j": self.steps_j, "attributed_j": self.attributed_j,
                "unattributed_j": self.unattributed_j, "outside_steps_j": self.outside_steps_j,
                "total_j": self.total_j}


def _device_map(timeline: EnergyTimeline, replicas: Iterable[int],
                devices: Mapping[int, Sequence[str]] | None) -> dict[int, list[str]]:
    replicas = np.unique(np.asarray(replicas, dtype=np.int64)).tolist()
    if devices is None:
        if timeline.devices and all(d.startswith("replica") for d in timeline.devices):
            devices = {r: [f"replica{r}"] for r in replicas}
        elif len(replicas) <= 1:
            devices = {r: list(timeline.devices) for r in replicas}
        else:
            raise ValueError(f"attribution: {len(replicas)} replicas share devices {', '.join(timeline.devices)}; "
                             "say which devices each replica ran on (devices={replica: [names]})")
    out = {r: list(devices[r]) for r in replicas if r in devices}
    missing = [r for r in replicas if r not in out]
    if missing:
        raise ValueError(f"attribution: no devices given for replica {missing[0]}")
    owner: dict[str, int] = {}
    for r, names in out.items():
        for d in names:
            if d not in timeline.cumulative_j:
                raise ValueError(f"attribution: replica {r}: no device {d!r} in the timeline "
                                 f"({', '.join(timeline.devices)})")
            if d in owner:
                raise ValueError(f"attribution: device {d!r} given to replicas {owner[d]} and {r}; a device's "
                                 "energy can be split over one replica's steps only")
            owner[d] = r
    return out


def step_energies_j(timeline: EnergyTimeline, steps: pd.DataFrame,
                    devices: Mapping[int, Sequence[str]] | None = None, tolerance_s: float = 1e-9) -> np.ndarray:
    """Joules of each step (aligned with ``steps``' rows): the timeline window [start_s, end_s] on the step's
    replica's devices. ``devices``: replica -> device names (default: "replica<r>" devices of a modelled
    timeline, else every device for a single replica). A step outside the sampled span raises ValueError."""
    out = np.zeros(len(steps))
    if not len(steps):
        return out
    st, en = steps["start_s"].to_numpy(np.float64), steps["end_s"].to_numpy(np.float64)
    outside = np.flatnonzero((st < timeline.start_s - tolerance_s) | (en > timeline.end_s + tolerance_s))
    if len(outside):
        i = outside[0]
        row = steps.iloc[i]
        raise ValueError(f"attribution: replica {int(row['replica'])} step {int(row['step'])} [{st[i]}, {en[i]}] "
                         f"lies outside the measured span [{timeline.start_s}, {timeline.end_s}]; start the meter "
                         "before the run and stop it after")
    rep = steps["replica"].to_numpy()
    for r, names in _device_map(timeline, rep, devices).items():
        mask = rep == r
        out[mask] = timeline.window_energies_j(st[mask], en[mask], names)
    return out


_WORK_COLUMNS = ("row", "replica", "step", "tokens", "sampled", "attn_pairs")
_NEEDED = ("token_steps", "prefill_steps", "input_tokens", "replica")
_FLOAT_EXACT = 2 ** 53      # integers below this add exactly in float64
_is_none = partial(operator.is_, None)


def _expand(runs: Any) -> np.ndarray:
    """[[first, count], ...] -> every step, in order."""
    a = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    if not len(a):
        return np.zeros(0, np.int64)
    first, count = a[:, 0], a[:, 1]
    before = np.concatenate(([0], np.cumsum(count)[:-1]))
    return np.repeat(first - before, count) + np.arange(int(count.sum()))


def _check_records(records: Sequence[Mapping[str, Any]]) -> None:
    """Raise, for the first record in order that has one, the error a record lacking what attribution needs
    gives: a missing field, token_steps that are not [first, count] runs, a prefill_steps entry of the wrong
    size or a chunk of <= 0 tokens, input_tokens or replica that are not numbers. Called only when the
    vectorised pass in request_step_work saw something wrong, so the message names the same request and field
    whatever else the records hold."""
    for i, rec in enumerate(records):
        rid = rec.get("id", f"#{i}")
        if rec.get("status") == "rejected":
            continue
        for name in _NEEDED:
            value = rec.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):  # a frame's missing cell: NaN
                raise ValueError(f"request {rid!r}: no {name!r} in the record; attribution needs it"
                                 + (" (one [step, tokens] per step that processed prompt tokens)"
                                    if name == "prefill_steps" else ""))
        _expand(rec["token_steps"])
        pf = [list(p) for p in rec["prefill_steps"]]
        if any(len(p) not in (2, 3) for p in pf):
            raise ValueError(f"request {rid!r}: field 'prefill_steps': expected [step, tokens] or "
                             f"[step, tokens, context_tokens] entries, got {rec['prefill_steps']!r}")
        np.array([p[0] for p in pf], dtype=np.int64)
        pf_q = np.array([p[1] for p in pf], dtype=np.float64)
        if len(pf_q) and (pf_q <= 0).any():
            raise ValueError(f"request {rid!r}: field 'prefill_steps': a chunk of {pf_q.min():g} tokens; expected > 0")
        if pf and all(len(p) == 3 for p in pf):
            np.array([p[2] for p in pf], dtype=np.float64)
        float(rec["input_tokens"])
        int(rec["replica"])


class _BadRecord(Exception):
    """The vectorised pass met a record it cannot take; _check_records names it."""


def _runs(token_steps: list) -> tuple[np.ndarray, np.ndarray]:
    """Each record's token_steps as [first, count] rows: (runs per record, (R, 2) int64)."""
    n = len(token_steps)
    try:
        per = np.fromiter(map(len, token_steps), np.int64, n)
        flat = np.array(list(chain.from_iterable(token_steps)), dtype=np.int64)
        if flat.shape == (int(per.sum()), 2) or (not len(flat) and not per.any()):
            return per, flat.reshape(-1, 2)
    except (TypeError, ValueError, OverflowError, KeyError, IndexError):
        pass
    # not a list of pairs each (a flat [first, count, ...] list, an array): record by record, as np.asarray does
    try:
        arrays = [np.asarray(t, dtype=np.int64).reshape(-1, 2) for t in token_steps]
    except (TypeError, ValueError, OverflowError, KeyError, IndexError) as e:
        raise _BadRecord from e
    return (np.fromiter(map(len, arrays), np.int64, n),
            np.concatenate(arrays) if arrays else np.zeros((0, 2), np.int64))


def _segment_sums(q: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Exclusive running sum of ``q`` that restarts at 0.0 where ``start`` is True; the same float64 numbers as
    adding one value at a time (exact integer sums when every value is a whole number, as token counts are)."""
    if not len(q):
        return np.zeros(0)
    if np.isfinite(q).all() and (q == np.trunc(q)).all() and float(np.abs(q).sum()) < _FLOAT_EXACT:
        qi = q.astype(np.int64)
        before = np.cumsum(qi) - qi
        seg = np.cumsum(start) - 1
        return (before - before[np.flatnonzero(start)][seg]).astype(np.float64)
    out = np.zeros(len(q))     # fractional or non-finite counts (no server writes them): one at a time
    run = 0.0
    for k, (s, v) in enumerate(zip(start.tolist(), q.tolist())):
        if s:
            run = 0.0
        out[k] = run
        run += v
    return out


def request_step_work(requests: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (request, step) it was in: ``row`` (the record's position), ``replica``, ``step``,
    ``tokens`` processed, ``sampled`` (1 when it emitted a token), ``attn_pairs``. Rejected requests have
    none. Raises ValueError naming the request and field when a record lacks what is needed.

    Each record's rows are its prefill chunks (in its ``prefill_steps`` order), then the steps in which it
    emitted a token without processing prompt tokens (decodes). Vectorised over all records at once: the
    records' runs and chunks are flattened with their record, steps expanded with repeat/cumsum, and per-record
    questions (is this emitted step a prefill step, how many tokens did it emit between two chunks) answered on
    a (record, step) key."""
    if isinstance(requests, pd.DataFrame):
        frame = requests
        n = len(frame)

        def column(name: str) -> list:
            return frame[name].tolist() if name in frame.columns else [None] * n

        def records() -> list:
            return frame.to_dict("records")
    else:
        recs = list(requests)

        def column(name: str) -> list:
            return [r.get(name) for r in recs]

        def records() -> list:
            return recs
    try:
        return _work(column)
    except _BadRecord as e:
        _check_records(records())
        why = e.__cause__ or "a field of an unexpected type"
        raise ValueError(f"request_step_work: the records could not be read ({why})") from e.__cause__


def _work(column) -> pd.DataFrame:
    status = column("status")
    kept = [i for i, s in enumerate(status) if s != "rejected"]
    if not kept:
        return pd.DataFrame({k: np.zeros(0) for k in _WORK_COLUMNS})
    fields = {}
    for name in _NEEDED:
        values = column(name)
        fields[name] = [values[i] for i in kept]
        if any(map(_is_none, fields[name])):
            raise _BadRecord
    nk = len(kept)
    try:
        n_in = np.array(fields["input_tokens"], dtype=np.float64)
        replica = np.array(fields["replica"], dtype=np.int64)
        if n_in.shape != (nk,) or replica.shape != (nk,):
            raise _BadRecord
        # prefill chunks, flat, with their record
        pf = fields["prefill_steps"]
        n_chunks = np.fromiter(map(len, pf), np.int64, nk)
        entries = list(chain.from_iterable(pf))
        size = np.fromiter(map(len, entries), np.int64, len(entries))
        if ((size != 2) & (size != 3)).any():
            raise _BadRecord
        pf_step = np.array(list(map(itemgetter(0), entries)), dtype=np.int64)
        pf_q = np.array(list(map(itemgetter(1), entries)), dtype=np.float64)
        if pf_step.shape != (len(entries),) or pf_q.shape != (len(entries),) or (pf_q <= 0).any():
            raise _BadRecord
        c_row = np.repeat(np.arange(nk), n_chunks)
        three = np.bincount(c_row, (size == 3).astype(np.float64), minlength=nk)
        given = (n_chunks > 0) & (three == n_chunks)         # every entry carries context_tokens
        given_c = given[c_row]
        pf_given = np.array([e[2] for e, g in zip(entries, given_c.tolist()) if g], dtype=np.float64)
        if pf_given.shape != (int(given_c.sum()),):
            raise _BadRecord
        # emitted steps, flat, with their record
        n_runs, runs = _runs(fields["token_steps"])
        first, count = runs[:, 0], runs[:, 1]
        if (count < 0).any():
            raise _BadRecord
    except (TypeError, ValueError, OverflowError, KeyError, IndexError) as e:
        raise _BadRecord from e
    run_end = np.cumsum(n_runs)
    emitted_by = np.concatenate(([0], np.cumsum(count)))
    n_emit = emitted_by[run_end] - emitted_by[run_end - n_runs]
    n_e, n_p = int(emitted_by[-1]), len(entries)
    emitted = np.repeat(first - emitted_by[:-1], count) + np.arange(n_e)
    e_start = np.cumsum(n_emit) - n_emit
    c_start = np.cumsum(n_chunks) - n_chunks
    first_chunk = np.arange(n_p) == c_start[c_row]
    # records whose emitted steps go back (no server writes them): a run starting before the last step of the
    # record's previous non-empty run
    run_row = np.repeat(np.arange(nk), n_runs)
    full = np.flatnonzero(count > 0)
    last = first + count - 1
    back = (run_row[full[1:]] == run_row[full[:-1]]) & (first[full[1:]] < last[full[:-1]])
    unsorted_rows = np.unique(run_row[full[1:]][back])

    # (record, step) keys, ordered by record then step
    e_row = np.repeat(np.arange(nk), n_emit)
    lo = min(int(first[full].min()) if len(full) else 0, int(pf_step.min()) if n_p else 0)
    hi = max(int(last[full].max()) if len(full) else 0, int(pf_step.max()) if n_p else 0)
    span = hi - lo + 1
    if nk * span < 2 ** 62:
        e_key, p_key = e_row * span + (emitted - lo), c_row * span + (pf_step - lo)
    else:   # steps too far apart for one int64 key: their ranks keep the order
        _, rank = np.unique(np.concatenate((emitted, pf_step)), return_inverse=True)
        span = int(rank.max()) + 1
        e_key, p_key = e_row * span + rank[:n_e], c_row * span + rank[n_e:]
    order = np.argsort(e_key, kind="stable") if len(unsorted_rows) else None
    e_sorted = e_key[order] if order is not None else e_key
    left = np.searchsorted(e_sorted, p_key, "left")
    right = np.searchsorted(e_sorted, p_key, "right")
    sampled_pf = (right > left).astype(np.float64)      # the record emitted in this chunk's step
    hits = right - left                                  # its emitted steps equal to this chunk's step
    at = np.repeat(left - (np.cumsum(hits) - hits), hits) + np.arange(int(hits.sum()))
    at = np.unique(order[at] if order is not None else at)
    is_pf = np.zeros(n_e, bool)
    is_pf[at] = True

    # earlier chunks since the last emitted token: restart where the record emitted at or after its last chunk
    # (a recompute starts over), i.e. emitted steps in [previous chunk's step, this chunk's step)
    start = first_chunk.copy()
    if n_p > 1:
        start[1:] |= (left[1:] - left[:-1]) > 0
    for r in unsorted_rows.tolist():   # steps out of order: the record's own binary search, as one at a time
        em = emitted[e_start[r]:e_start[r] + n_emit[r]]
        prev = -1
        for k in range(int(c_start[r]), int(c_start[r] + n_chunks[r])):
            s = int(pf_step[k])
            start[k] = first_chunk[k] or (np.searchsorted(em, s, "left") - np.searchsorted(em, prev, "left")) > 0
            prev = s
    pf_c = _segment_sums(pf_q, start)
    pf_c[given_c] = pf_given

    # each record's rows: its chunks, then its emitted steps that are not chunks (decodes)
    n_dec = n_emit - np.bincount(e_row[at], minlength=nk)
    n_rows = n_chunks + n_dec
    total = int(n_rows.sum())
    j = np.arange(n_e) - np.repeat(e_start, n_emit)     # the record's j-th emitted token
    if len(at):
        dec = ~is_pf
        d_step, d_j = emitted[dec], j[dec]
    else:
        d_step, d_j = emitted, j
    is_c = np.zeros(total, bool)
    is_c[np.repeat(np.cumsum(n_rows) - n_rows - c_start, n_chunks) + np.arange(n_p)] = True
    is_d = ~is_c
    out = {"row": np.repeat(np.asarray(kept, np.int64), n_rows), "replica": np.repeat(replica, n_rows),
           "step": np.empty(total, np.int64), "tokens": np.ones(total), "sampled": np.ones(total),
           "attn_pairs": np.empty(total)}
    out["step"][is_c], out["step"][is_d] = pf_step, d_step
    out["tokens"][is_c] = pf_q
    out["sampled"][is_c] = sampled_pf
    out["attn_pairs"][is_c] = pf_q * (pf_c + (pf_q + 1) / 2)
    out["attn_pairs"][is_d] = np.repeat(n_in, n_dec) + d_j
    return pd.DataFrame(out, copy=False)


@dataclass(frozen=True)
class Split:
    """Step energies split over request records by one ``method`` (``split_step_energy``)."""

    method: str
    steps: pd.DataFrame      # replica, step, (start_s, end_s where the steps have them,) energy_j, work, attributed_j
    requests: pd.DataFrame   # id, replica, tokens, work, energy_j (one row per request record, rejected: 0 work)
    steps_j: float           # sum of step energies
    attributed_j: float      # sum of request energies
    unattributed_j: float    # step energy of work no record claims


def _check_method(method: str, flops: FlopCoefficients | None) -> None:
    if method not in METHODS:
        raise ValueError(f"attribution method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "flops" and flops is None:
        raise ValueError("attribution by flops: give the FLOP coefficients (FlopCoefficients.from_perf(perf))")


def _field(requests: pd.DataFrame | Sequence[Mapping[str, Any]], name: str) -> list:
    """Each record's ``name`` (None where it has none)."""
    if isinstance(requests, pd.DataFrame):
        return requests[name].tolist() if name in requests.columns else [None] * len(requests)
    return [r.get(name) for r in requests]


def _step_rows(steps: pd.DataFrame, work: pd.DataFrame) -> np.ndarray:
    """The row of ``steps`` with each work row's (replica, step), -1 where there is none (one int64 key where
    the numbers allow, else a MultiIndex; both refuse steps that repeat a (replica, step))."""
    s_rep, s_step = steps["replica"].to_numpy(np.int64), steps["step"].to_numpy(np.int64)
    w_rep, w_step = work["replica"].to_numpy(np.int64), work["step"].to_numpy(np.int64)
    if len(s_rep) and len(w_rep):
        r_lo, r_hi = min(int(s_rep.min()), int(w_rep.min())), max(int(s_rep.max()), int(w_rep.max()))
        lo, hi = min(int(s_step.min()), int(w_step.min())), max(int(s_step.max()), int(w_step.max()))
        if (r_hi - r_lo + 1) * (hi - lo + 1) < 2 ** 62:
            span = hi - lo + 1
            return pd.Index((s_rep - r_lo) * span + (s_step - lo)).get_indexer((w_rep - r_lo) * span + (w_step - lo))
    return pd.MultiIndex.from_arrays([s_rep, s_step]).get_indexer(pd.MultiIndex.from_arrays([w_rep, w_step]))


def split_step_energy(step_energy_j: Any, steps: pd.DataFrame, requests: pd.DataFrame | Sequence[Mapping[str, Any]],
                      method: str = "tokens", flops: FlopCoefficients | None = None,
                      work: pd.DataFrame | None = None) -> Split:
    """Split step energies (joules, aligned with ``steps``' rows: measured windows from ``step_energies_j``, or
    estimated) over the request records by ``method`` (see the module docstring). ``steps`` needs ``replica,
    step, prefill_tokens, decode_tokens`` (and ``sampled_seqs, attn_pairs`` for "flops"). ``work``: the
    records' ``request_step_work(requests)`` when the caller already has it (splitting the same records by
    tokens and by FLOPs computes it once); it must be of these records."""
    _check_method(method, flops)
    if not isinstance(requests, pd.DataFrame):
        requests = list(requests)
    energy = np.asarray(step_energy_j, dtype=np.float64)
    n = len(steps)
    if energy.shape != (n,):
        raise ValueError(f"attribution: {energy.size} step energies for {n} steps; give one per step record")
    n_req = len(requests)
    if work is None:
        work = request_step_work(requests)
    else:
        missing = [c for c in _WORK_COLUMNS if c not in work.columns]
        if missing:
            raise ValueError(f"attribution: work has no column {missing[0]!r}; give request_step_work(requests)")
        if len(work) and not 0 <= int(work["row"].min()) <= int(work["row"].max()) < n_req:
            raise ValueError(f"attribution: work rows name records outside the {n_req} given; give "
                             "request_step_work(requests) of the same records")
    pos = _step_rows(steps, work)
    rows = work["row"].to_numpy(np.int64)
    if (pos < 0).any():
        k = int(np.flatnonzero(pos < 0)[0])
        rid = _field(requests, "id")[int(rows[k])]
        raise ValueError(f"request {rid!r}: replica {int(work['replica'].iloc[k])} step "
                         f"{int(work['step'].iloc[k])} is not in the step records")
    tokens = work["tokens"].to_numpy(np.float64)
    claimed_tokens = np.bincount(pos, tokens, minlength=n)
    step_tokens = (steps["prefill_tokens"].to_numpy(np.float64) + steps["decode_tokens"].to_numpy(np.float64)
                   if n else np.zeros(0))
    over = np.flatnonzero(claimed_tokens > step_tokens + 1e-9)
    if len(over):
        i = over[0]
        raise ValueError(f"attribution: replica {int(steps['replica'].iloc[i])} step {int(steps['step'].iloc[i])}: "
                         f"request records claim {claimed_tokens[i]:g} tokens but the step processed "
                         f"{step_tokens[i]:g}")
    if method == "tokens":
        w = tokens
        claimed = claimed_tokens
        residual = step_tokens - claimed_tokens
    else:
        w = (flops.per_token * tokens + flops.per_sampled * work["sampled"].to_numpy(np.float64)
             + flops.per_pair * work["attn_pairs"].to_numpy(np.float64))
        claimed = np.bincount(pos, w, minlength=n)
        step_flops = (flops.per_token * step_tokens + flops.per_sampled * steps["sampled_seqs"].to_numpy(np.float64)
                      + flops.per_pair * steps["attn_pairs"].to_numpy(np.float64)) if n else np.zeros(0)
        # only work of unclaimed tokens is unclaimed; the rest is the records' context approximation
        residual = np.where(step_tokens - claimed_tokens > 1e-9, np.maximum(step_flops - claimed, 0.0), 0.0)
    total_w = claimed + residual
    per_w = np.divide(energy, total_w, out=np.zeros(n), where=total_w > 0)
    share = w * per_w[pos]
    attributed_steps = claimed * per_w
    req_energy = np.bincount(rows, share, minlength=n_req)
    req_tokens = np.bincount(rows, tokens, minlength=n_req)
    req_work = np.bincount(rows, w, minlength=n_req)
    steps_out = {"replica": steps["replica"].to_numpy(), "step": steps["step"].to_numpy()}
    steps_out.update({c: steps[c].to_numpy() for c in ("start_s", "end_s") if c in steps.columns})
    steps_out.update({"energy_j": energy, "work": total_w, "attributed_j": attributed_steps})
    req_out = pd.DataFrame({"id": _field(requests, "id"), "replica": _field(requests, "replica"),
                            "tokens": req_tokens, "work": req_work, "energy_j": req_energy})
    steps_j = float(energy.sum())
    attributed_j = float(req_energy.sum())
    return Split(method, pd.DataFrame(steps_out), req_out, steps_j, attributed_j, steps_j - attributed_j)


def attribute(timeline: EnergyTimeline, steps: pd.DataFrame, requests: pd.DataFrame | Sequence[Mapping[str, Any]],
              method: str = "tokens", flops: FlopCoefficients | None = None,
              devices: Mapping[int, Sequence[str]] | None = None, work: pd.DataFrame | None = None) -> Attribution:
    """Step energies from ``timeline`` (``step_energies_j``) and each request's share (``split_step_energy``; see
    the module docstring). ``work``: ``request_step_work(requests)`` when the caller already has it."""
    _check_method(method, flops)
    if not isinstance(requests, pd.DataFrame):
        requests = list(requests)
    energy = step_energies_j(timeline, steps, devices)
    used = sorted({d for names in _device_map(timeline, steps["replica"] if len(steps) else [], devices).values()
                   for d in names}) if len(steps) else list(timeline.devices)
    split = split_step_energy(energy, steps, requests, method, flops, work)
    total_j = timeline.total_j(used)
    return Attribution(method, split.steps, split.requests, split.steps_j, split.attributed_j, split.unattributed_j,
                       total_j - split.steps_j, total_j)
