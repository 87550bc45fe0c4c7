"""A run's energy against each estimator: per request, per [Na25] bin and in total, with the relative gap in
[Na25] Table 4's form and the MAPE over requests.

Definitions (a contract; tests/report/test_compare.py checks each one):

- The run's energy ("recorded": measured by a meter, or modelled by the simulated engine's power model, and
  labelled with its ``kind``) is each request's ``energy_j`` (requests.jsonl: its share of the energy of the
  steps it was in, split by tokens processed).
- Compared requests: finished requests with a finite recorded ``energy_j``; rejected and unfinished ones are
  never compared (counted in ``left_out``). Output length is ``generated_tokens`` (a finished request's equals
  its ``output_tokens``).
- Gap ([Na25] Table 4): ``recorded / estimate - 1``, shown as "+64%": positive when the run used more energy
  than the estimate says. None where the estimate is 0 or missing.
- MAPE over requests: ``mean(|estimate - recorded| / recorded)`` over the compared requests the estimator
  could estimate and whose recorded energy is above 0 (a request with 0 J recorded is left out and counted:
  no relative error exists for it). Also the median of the same ratios.
- Per estimator totals: over the requests it could estimate (``n``), recorded and estimated sums and their gap.
  "Whole run": the run's total energy (summary ``energy_total_j``: idle time between steps and work of
  unfinished requests included, what a meter reads for the workload, as [Na25] compares) against the
  estimator's ``total_j``, only where it estimated every finished request (no gap against part of the run).
- Per bin: requests go to their [Na25] bin by input and output length (``replay.trace.bins.bin_indices``; above
  the largest edges: counted, not binned). Each bin: requests, recorded J, output tokens, recorded J per output
  token; per estimator: the requests it estimated there, their recorded and estimated J, the gap.
- Not measured: no recorded values anywhere (never a fabricated number); ``reason`` says why, and the
  estimates are still shown: per bin and in total, what each estimator predicts for the run's finished
  requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from replay.engines.base import STATUSES
from replay.estimate.estimators import Estimate
from replay.files import plain
from replay.trace.bins import DEFAULT_INPUT_BINS, DEFAULT_OUTPUT_BINS, bin_indices

__all__ = ["BinRow", "Comparison", "EstimatorTotal", "compare", "gap", "gap_text", "mape"]



def gap(recorded_j: float | None, estimate_j: float | None) -> float | None:
    """[Na25] Table 4's relative gap: recorded / estimate - 1 (0.64 is "+64%"); None where either is missing
    or the estimate is not above 0."""
    if recorded_j is None or estimate_j is None:
        return None
    if not (math.isfinite(recorded_j) and math.isfinite(estimate_j)) or estimate_j <= 0:
        return None
    return float(recorded_j) / float(estimate_j) - 1.0


def gap_text(g: float | None) -> str:
    """A gap as [Na25] Table 4 prints it: "+64%", "-12%"; "+1,234%" for large ones; "-" for none."""
    if g is None:
        return "-"
    pct = 100.0 * g
    digits = 0 if abs(pct) >= 10 else 1
    return f"{pct:+,.{digits}f}%"


def mape(estimated_j: np.ndarray, recorded_j: np.ndarray) -> tuple[float | None, float | None, int]:
    """(mean, median of |estimate - recorded| / recorded, requests used) over the pairs where both are finite
    and recorded > 0; (None, None, 0) when there are none."""
    e = np.asarray(estimated_j, dtype=np.float64)
    r = np.asarray(recorded_j, dtype=np.float64)
    ok = np.isfinite(e) & np.isfinite(r) & (r > 0)
    if not ok.any():
        return None, None, 0
    ape = np.abs(e[ok] - r[ok]) / r[ok]
    return float(ape.mean()), float(np.median(ape)), int(ok.sum())


@dataclass(frozen=True)
class EstimatorTotal:
    """One estimator against the run, over the requests it could estimate (module docstring)."""

    estimator: str
    label: str
    reason: str | None                 # why it could not estimate (some or all requests)
    n: int                             # compared requests it estimated
    estimated_j: float | None          # their estimated sum (None: it estimated none)
    recorded_j: float | None           # their recorded sum (None: not measured)
    gap: float | None
    mape: float | None
    median_ape: float | None
    mape_n: int                        # requests in the MAPE (recorded > 0)
    run_estimate_j: float | None       # the estimator's total_j: every request it estimated
    run_gap: float | None              # the run's total energy against run_estimate_j
    assumptions: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "label": self.label, "reason": self.reason, "requests": self.n,
                "estimated_j": self.estimated_j, "recorded_j": self.recorded_j, "gap": self.gap,
                "gap_text": gap_text(self.gap) if self.gap is not None else None, "mape": self.mape,
                "median_ape": self.median_ape, "mape_requests": self.mape_n, "run_estimate_j": self.run_estimate_j,
                "run_gap": self.run_gap, "run_gap_text": gap_text(self.run_gap) if self.run_gap is not None else None,
                "assumptions": plain(self.assumptions)}


@dataclass(frozen=True)
class BinRow:
    """One [Na25] bin's requests (edges read "up to"), their recorded energy, and each estimator there:
    ``estimates[name] = (requests estimated, their recorded J, their estimated J, gap)``."""

    input_bin: int
    output_bin: int
    requests: int
    output_tokens: int
    recorded_j: float | None
    estimates: dict[str, tuple[int, float | None, float | None, float | None]]

    @property
    def recorded_j_per_token(self) -> float | None:
        if self.recorded_j is None or self.output_tokens <= 0:
            return None
        return self.recorded_j / self.output_tokens

    def estimated_j_per_token(self, name: str) -> float | None:
        n, _, est, _ = self.estimates.get(name, (0, None, None, None))
        if est is None or n == 0 or self.output_tokens <= 0:
            return None
        return est / self.output_tokens if n == self.requests else None

    def to_dict(self) -> dict[str, Any]:
        return {"input_bin": self.input_bin, "output_bin": self.output_bin, "requests": self.requests,
                "output_tokens": self.output_tokens, "recorded_j": self.recorded_j,
                "recorded_j_per_output_token": self.recorded_j_per_token,
                "estimators": {name: {"requests": n, "recorded_j": rec, "estimated_j": est, "gap": g,
                                      "gap_text": gap_text(g) if g is not None else None}
                               for name, (n, rec, est, g) in self.estimates.items()}}


@dataclass(frozen=True, eq=False)
class Comparison:
    """The run's energy against each estimator (module docstring). ``kind`` is "measured", "modelled" or None
    (not measured, ``reason`` says why); ``requests`` one row per compared request: id, input_tokens,
    output_tokens (generated), input_bin, output_bin (None above the largest edge), recorded_j (NaN when not
    measured) and one ``<estimator>`` column of estimated joules (NaN where it could not estimate)."""

    kind: str | None
    reason: str | None
    estimators: tuple[str, ...]
    requests: pd.DataFrame
    totals: tuple[EstimatorTotal, ...]
    bins: tuple[BinRow, ...]
    input_bins: tuple[int, ...]
    output_bins: tuple[int, ...]
    above_bins: dict[str, int]          # compared requests above the largest edges, by dimension
    left_out: dict[str, int]            # requests not compared, by reason
    run_total_j: float | None           # the run's whole energy (None: not measured)

    @property
    def label(self) -> str:
        """The word for the run's energy: "measured" or "modelled" ("not measured" when there is none)."""
        return self.kind or "not measured"

    @property
    def recorded_total_j(self) -> float | None:
        """Recorded joules of all compared requests."""
        if self.kind is None or not len(self.requests):
            return None
        return float(self.requests["recorded_j"].sum())

    def total(self, name: str) -> EstimatorTotal:
        for t in self.totals:
            if t.estimator == name:
                return t
        raise KeyError(name)

    def to_dict(self, per_request: bool = True) -> dict[str, Any]:
        """Plain values for JSON; ``per_request`` includes every compared request's row."""
        out = {"energy": self.label, "reason": self.reason, "estimators": list(self.estimators),
               "requests_compared": int(len(self.requests)), "recorded_total_j": self.recorded_total_j,
               "run_total_j": self.run_total_j, "left_out": dict(self.left_out),
               "totals": [t.to_dict() for t in self.totals],
               "bins": {"input_bins": list(self.input_bins), "output_bins": list(self.output_bins),
                        "above": dict(self.above_bins), "rows": [b.to_dict() for b in self.bins]}}
        if per_request:
            out["per_request"] = [plain(r) for r in self.requests.to_dict("records")]
        return out


def _column(requests: pd.DataFrame, name: str) -> np.ndarray:
    if name not in requests.columns:
        return np.full(len(requests), np.nan)
    return pd.to_numeric(requests[name], errors="coerce").to_numpy(np.float64)


def _sum(x: np.ndarray) -> float | None:
    return float(x.sum()) if x.size else None


def compare(requests: pd.DataFrame, estimates: dict[str, Estimate], kind: str | None, reason: str | None = None,
            run_total_j: float | None = None, input_bins: tuple[int, ...] = DEFAULT_INPUT_BINS,
            output_bins: tuple[int, ...] = DEFAULT_OUTPUT_BINS) -> Comparison:
    """Compare a run's requests (requests.jsonl as a frame) with ``estimates`` (each aligned with the frame's
    rows, as ``replay.estimate.estimate`` returns them). ``kind``: "measured", "modelled" or None (not measured:
    give ``reason``). ``run_total_j``: the run's whole energy for the "whole run" gap."""
    if kind not in (None, "measured", "modelled"):
        raise ValueError(f"compare: kind {kind!r}: expected 'measured', 'modelled' or None (not measured)")
    if kind is None and not reason:
        raise ValueError("compare: not measured (kind None) needs the reason why")
    n = len(requests)
    for name, e in estimates.items():
        if len(e.per_request_j) != n:
            raise ValueError(f"compare: estimator {name!r} has {len(e.per_request_j)} per-request values for "
                             f"{n} requests; estimate the same requests frame")
    for col in ("status", "input_tokens"):
        if n and col not in requests.columns:
            raise ValueError(f"requests: missing field {col!r}")
    status = requests["status"].to_numpy(dtype=object) if n else np.empty(0, dtype=object)
    unknown = ~np.isin(status, STATUSES)
    if unknown.any():
        i = int(np.argmax(unknown))
        raise ValueError(f"requests: row {i}: field 'status' is {status[i]!r}; expected one of {', '.join(STATUSES)}")
    finished = status == "finished"
    left_out = {s: int((status == s).sum()) for s in STATUSES[1:] if (status == s).any()}

    recorded = _column(requests, "energy_j")
    if kind is None:
        keep = finished
        recorded = np.full(n, np.nan)
    else:
        no_energy = finished & ~np.isfinite(recorded)
        if no_energy.any():
            left_out[f"finished without {kind} energy"] = int(no_energy.sum())
        negative = finished & np.isfinite(recorded) & (recorded < 0)
        if negative.any():
            i = int(np.argmax(negative))
            raise ValueError(f"requests: request {requests['id'].iloc[i]!r}: field 'energy_j': {recorded[i]!r} is "
                             "negative; expected joules >= 0")
        keep = finished & np.isfinite(recorded)

    n_in = _column(requests, "input_tokens")
    gen = _column(requests, "generated_tokens")
    n_out = np.where(np.isfinite(gen), gen, _column(requests, "output_tokens"))
    idx = np.flatnonzero(keep)
    bad = idx[~(np.isfinite(n_in[idx]) & np.isfinite(n_out[idx]))]
    if bad.size:
        raise ValueError(f"requests: request {requests['id'].iloc[bad[0]]!r}: a finished request without "
                         "input_tokens or generated_tokens")
    in_edges, out_edges = tuple(int(e) for e in input_bins), tuple(int(e) for e in output_bins)
    j, k = bin_indices(n_in[idx].astype(np.int64), n_out[idx].astype(np.int64), in_edges, out_edges)
    in_bin = np.array([in_edges[x] if x < len(in_edges) else None for x in j], dtype=object)
    out_bin = np.array([out_edges[x] if x < len(out_edges) else None for x in k], dtype=object)
    ids = requests["id"].to_numpy(dtype=object)[idx] if "id" in requests.columns else idx
    frame = pd.DataFrame({"id": ids, "input_tokens": n_in[idx].astype(np.int64),
                          "output_tokens": n_out[idx].astype(np.int64), "input_bin": in_bin, "output_bin": out_bin,
                          "recorded_j": recorded[idx]})
    for name, e in estimates.items():
        frame[name] = np.asarray(e.per_request_j, dtype=np.float64)[idx]

    n_finished = int(finished.sum())
    totals = tuple(_total(name, e, frame, kind, run_total_j, n_finished) for name, e in estimates.items())
    over_in, over_out = j == len(in_edges), k == len(out_edges)
    above = {"input": int((over_in & ~over_out).sum()), "output": int((over_out & ~over_in).sum()),
             "both": int((over_in & over_out).sum())}
    return Comparison(kind, reason if kind is None else None, tuple(estimates), frame, totals,
                      _bins(frame, j, k, in_edges, out_edges, tuple(estimates), kind), in_edges, out_edges, above,
                      left_out, None if kind is None or run_total_j is None else float(run_total_j))


def _total(name: str, e: Estimate, frame: pd.DataFrame, kind: str | None, run_total_j: float | None,
           n_finished: int) -> EstimatorTotal:
    est = frame[name].to_numpy(np.float64)
    rec = frame["recorded_j"].to_numpy(np.float64)
    ok = np.isfinite(est)
    est_sum = _sum(est[ok])
    rec_sum = _sum(rec[ok]) if kind is not None else None
    m, med, m_n = mape(est, rec) if kind is not None else (None, None, 0)
    # the whole run against an estimate of part of it would be no comparison: only when every finished request
    # was estimated
    whole = kind is not None and e.n_estimated == n_finished
    return EstimatorTotal(name, e.label, e.reason, int(ok.sum()), est_sum, rec_sum, gap(rec_sum, est_sum), m, med,
                          m_n, e.total_j, gap(run_total_j, e.total_j) if whole else None, dict(e.assumptions))


def _bins(frame: pd.DataFrame, j: np.ndarray, k: np.ndarray, in_edges: tuple[int, ...], out_edges: tuple[int, ...],
          names: tuple[str, ...], kind: str | None) -> tuple[BinRow, ...]:
    """One row per non-empty bin, input bin major."""
    rows = []
    inside = (j < len(in_edges)) & (k < len(out_edges))
    rec = frame["recorded_j"].to_numpy(np.float64)
    tokens = frame["output_tokens"].to_numpy(np.int64)
    for a, b in sorted(set(zip(j[inside].tolist(), k[inside].tolist()))):
        m = inside & (j == a) & (k == b)
        per: dict[str, tuple[int, float | None, float | None, float | None]] = {}
        for name in names:
            est = frame[name].to_numpy(np.float64)[m]
            ok = np.isfinite(est)
            e_sum = _sum(est[ok])
            r_sum = _sum(rec[m][ok]) if kind is not None else None
            per[name] = (int(ok.sum()), r_sum, e_sum, gap(r_sum, e_sum))
        rows.append(BinRow(in_edges[a], out_edges[b], int(m.sum()), int(tokens[m].sum()),
                           float(rec[m].sum()) if kind is not None else None, per))
    return tuple(rows)
