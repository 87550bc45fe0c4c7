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

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from replay.energy.timeline import EnergyTimeline

__all__ = ["METHODS", "Attribution", "FlopCoefficients", "attribute", "request_step_work", "step_energies_j"]

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
    replicas = sorted(set(int(r) for r in replicas))
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


def _expand(runs: Any) -> np.ndarray:
    """[[first, count], ...] -> every step, in order."""
    a = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    if not len(a):
        return np.zeros(0, np.int64)
    first, count = a[:, 0], a[:, 1]
    before = np.concatenate(([0], np.cumsum(count)[:-1]))
    return np.repeat(first - before, count) + np.arange(int(count.sum()))


def request_step_work(requests: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (request, step) it was in: ``row`` (the record's position), ``replica``, ``step``,
    ``tokens`` processed, ``sampled`` (1 when it emitted a token), ``attn_pairs``. Rejected requests have
    none. Raises ValueError naming the request and field when a record lacks what is needed."""
    records = requests.to_dict("records") if isinstance(requests, pd.DataFrame) else list(requests)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("row", "replica", "step", "tokens", "sampled", "attn_pairs")}
    for i, rec in enumerate(records):
        rid = rec.get("id", f"#{i}")
        if rec.get("status") == "rejected":
            continue
        for name in ("token_steps", "prefill_steps", "input_tokens", "replica"):
            if name not in rec or rec[name] is None:
                raise ValueError(f"request {rid!r}: no {name!r} in the record; attribution needs it"
                                 + (" (one [step, tokens] per step that processed prompt tokens)"
                                    if name == "prefill_steps" else ""))
        emitted = _expand(rec["token_steps"])
        pf = [list(p) for p in rec["prefill_steps"]]
        if any(len(p) not in (2, 3) for p in pf):
            raise ValueError(f"request {rid!r}: field 'prefill_steps': expected [step, tokens] or "
                             f"[step, tokens, context_tokens] entries, got {rec['prefill_steps']!r}")
        pf_step = np.array([p[0] for p in pf], dtype=np.int64)
        pf_q = np.array([p[1] for p in pf], dtype=np.float64)
        if len(pf_q) and (pf_q <= 0).any():
            raise ValueError(f"request {rid!r}: field 'prefill_steps': a chunk of {pf_q.min():g} tokens; expected > 0")
        if pf and all(len(p) == 3 for p in pf):
            pf_c = np.array([p[2] for p in pf], dtype=np.float64)
        else:  # earlier chunks since the last emitted token
            pf_c = np.zeros(len(pf))
            run, prev = 0.0, -1
            for k, (s, q) in enumerate(zip(pf_step.tolist(), pf_q.tolist())):
                between = np.searchsorted(emitted, s, "left") - np.searchsorted(emitted, prev, "left")
                if between > 0:   # it emitted at or after its last chunk: a recompute starts over
                    run = 0.0
                pf_c[k] = run
                run += q
                prev = s
        is_pf = np.isin(emitted, pf_step)
        j = np.arange(len(emitted))
        dec = emitted[~is_pf]
        n_in = float(rec["input_tokens"])
        steps = np.concatenate((pf_step, dec))
        cols["row"].append(np.full(len(steps), i, np.int64))
        cols["replica"].append(np.full(len(steps), int(rec["replica"]), np.int64))
        cols["step"].append(steps)
        cols["tokens"].append(np.concatenate((pf_q, np.ones(len(dec)))))
        cols["sampled"].append(np.concatenate((np.isin(pf_step, emitted).astype(np.float64), np.ones(len(dec)))))
        cols["attn_pairs"].append(np.concatenate((pf_q * (pf_c + (pf_q + 1) / 2), n_in + j[~is_pf])))
    return pd.DataFrame({k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()})


def attribute(timeline: EnergyTimeline, steps: pd.DataFrame, requests: pd.DataFrame | Sequence[Mapping[str, Any]],
              method: str = "tokens", flops: FlopCoefficients | None = None,
              devices: Mapping[int, Sequence[str]] | None = None) -> Attribution:
    """Step energies from ``timeline`` and each request's share (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"attribution method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "flops" and flops is None:
        raise ValueError("attribution by flops: give the FLOP coefficients (FlopCoefficients.from_perf(perf))")
    records = requests.to_dict("records") if isinstance(requests, pd.DataFrame) else list(requests)
    energy = step_energies_j(timeline, steps, devices)
    used = sorted({d for names in _device_map(timeline, steps["replica"] if len(steps) else [], devices).values()
                   for d in names}) if len(steps) else list(timeline.devices)
    work = request_step_work(records)
    key = pd.MultiIndex.from_arrays([steps["replica"].to_numpy(np.int64), steps["step"].to_numpy(np.int64)])
    pos = key.get_indexer(pd.MultiIndex.from_arrays([work["replica"].to_numpy(np.int64),
                                                     work["step"].to_numpy(np.int64)]))
    if (pos < 0).any():
        k = int(np.flatnonzero(pos < 0)[0])
        rec = records[int(work["row"].iloc[k])]
        raise ValueError(f"request {rec.get('id')!r}: replica {int(work['replica'].iloc[k])} step "
                         f"{int(work['step'].iloc[k])} is not in the step records")
    n = len(steps)
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
    req_energy = np.bincount(work["row"].to_numpy(np.int64), share, minlength=len(records))
    req_tokens = np.bincount(work["row"].to_numpy(np.int64), tokens, minlength=len(records))
    req_work = np.bincount(work["row"].to_numpy(np.int64), w, minlength=len(records))
    steps_out = pd.DataFrame({"replica": steps["replica"].to_numpy(), "step": steps["step"].to_numpy(),
                              "start_s": steps["start_s"].to_numpy(), "end_s": steps["end_s"].to_numpy(),
                              "energy_j": energy, "work": total_w, "attributed_j": attributed_steps})
    req_out = pd.DataFrame({"id": [r.get("id") for r in records], "replica": [r.get("replica") for r in records],
                            "tokens": req_tokens, "work": req_work, "energy_j": req_energy})
    steps_j = float(energy.sum())
    attributed_j = float(req_energy.sum())
    total_j = timeline.total_j(used)
    return Attribution(method, steps_out, req_out, steps_j, attributed_j, steps_j - attributed_j,
                       total_j - steps_j, total_j)
