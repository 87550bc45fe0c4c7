"""Run-level serving and energy metrics from a run's request and step records, named as vLLM's ``bench serve``.

Inputs are the run directory's records as DataFrames: ``requests`` (one row per request, requests.jsonl) and
``steps`` (one row per engine step, steps.jsonl). Everything is in seconds and joules; only
``format_summary`` converts (to ms) for display.

Definitions (a contract; tests/report/test_metrics.py checks each one):

- Latencies (TTFT, TPOT, E2E, queueing delay) come from the records' ``ttft_s``, ``tpot_s``, ``e2e_s`` and
  ``queue_s`` over *finished* requests, nulls skipped (TPOT is null for a request with at most one token).
  ITL is every gap between consecutive output tokens of finished requests, pooled over all tokens (a gap
  across a preemption included: the user waited for it). Each is summarised by mean, median, p90 and p99
  (``numpy.percentile``, linear interpolation); all None when there are no values.
- ``duration_s``: the caller's, else from 0 (the run clock's start) to the later of the last finish of a
  finished request and the last step end; None when there is neither.
- Throughputs are over finished requests, as vLLM counts only completed ones: ``request_throughput`` =
  finished / duration, ``output_throughput`` = their generated tokens / duration, ``total_token_throughput``
  = their input + generated tokens / duration (per second). None when the duration is None or 0. With a
  duration but nothing finished they are 0.0: a true zero, not a missing value.
- Goodput (vLLM's ``request_goodput``): finished requests meeting every given SLO bound (value <= bound, as
  vLLM's ``s >= r``) per second. A null TPOT (one output token) meets any TPOT bound, as vLLM scores it 0; a
  null TTFT or E2E meets none. ``goodput_fraction`` = good / all requests: rejected and unfinished requests
  count as misses. None without an SLO (and the fraction None with no requests).
- Energy: when ``Energy.source`` is None nothing was measured or modelled and every energy field is None
  (never 0); ``format_summary`` then prints "not measured: <reason>". Otherwise ``energy_total_j`` is the
  whole run (idle time between steps included), ``energy_above_idle_j`` = total - idle,
  ``energy_per_request_j`` = total / finished, ``energy_per_output_token_j`` = total / generated tokens of
  finished requests, ``output_tokens_per_j`` its inverse; the per-request ``energy_j`` mean and median are
  over finished requests that have one. Each ratio is None where its denominator is 0.
- Steps: count, mean ``num_seqs``, mean prefill and decode tokens per step, and the peak over steps of
  ``kv_blocks_used / kv_blocks_total`` (steps with a zero total skipped); None without steps.
- An empty run (no requests, no steps; DataFrames may even lack the columns) and an all-rejected run give a
  Summary with zero counts and None for every latency, rate without duration, and per-request ratio.
- A record that breaks these rules (unknown status, a null count, token steps missing from ``steps``,
  tokens out of time order) raises ValueError naming the table, the row or request id, and the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from replay.engines.base import STATUSES

__all__ = ["SLO", "Dist", "Energy", "Summary", "format_summary", "itl_s", "parse_slo", "summarize"]

LATENCIES = ("ttft", "tpot", "itl", "e2el", "queue")  # vLLM's names; queue (queueing delay) is ours


# --- SLO ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLO:
    """Per-request latency bounds in seconds for goodput; None = no bound on that metric."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"SLO {f.name}: expected a positive number of seconds, got {v!r}")
        if self.ttft_s is None and self.tpot_s is None and self.e2e_s is None:
            raise ValueError("SLO: expected at least one bound (ttft, tpot or e2e)")

    def __str__(self) -> str:
        parts = [(n, getattr(self, f"{n}_s")) for n in ("ttft", "tpot", "e2e")]
        return ", ".join(f"{n}<={_seconds_text(v)}" for n, v in parts if v is not None)


_SLO_KEYS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s", "e2el": "e2e_s"}
_SLO_VALUE = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?$")


def parse_slo(text: str) -> SLO:
    """Parse ``"ttft=2s,tpot=100ms,e2e=30"`` (a bare number is seconds; units ms and s; ``e2el`` is accepted
    as vLLM's name for e2e). Raises ValueError naming the bad part and what was expected."""
    bounds: dict[str, float] = {}
    parts = [p.strip() for p in text.split(",")]
    if not text.strip():
        raise ValueError("SLO: empty; expected e.g. 'ttft=2s,tpot=100ms,e2e=30'")
    for part in parts:
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq:
            raise ValueError(f"SLO part {part!r}: expected NAME=VALUE, e.g. 'ttft=2s'")
        name = _SLO_KEYS.get(key.lower())
        if name is None:
            raise ValueError(f"SLO part {part!r}: unknown name {key!r}; expected one of ttft, tpot, e2e")
        if name in bounds:
            raise ValueError(f"SLO part {part!r}: {key!r} given twice; expected each name once")
        m = _SLO_VALUE.match(value.lower())
        if m is None or float(m.group(1)) <= 0 or not math.isfinite(float(m.group(1))):
            raise ValueError(f"SLO part {part!r}: expected a positive number with unit ms or s (bare = s), "
                             f"e.g. '100ms' or '2'")
        bounds[name] = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    return SLO(**bounds)


# --- energy facts given by the caller ---------------------------------------------------------------------


@dataclass(frozen=True)
class Energy:
    """Run-level energy facts from the meter (or the power model). ``source`` None = not measured, and then
    ``reason`` says why and there are no numbers. ``total_j`` is the whole run, idle time between steps
    included; ``idle_j`` its idle share (idle power x run duration), None when idle power is unknown."""

    source: str | None
    reason: str | None = None
    total_j: float | None = None
    idle_j: float | None = None

    def __post_init__(self) -> None:
        if self.source is None and (self.total_j is not None or self.idle_j is not None):
            raise ValueError("Energy: numbers given without a source; name the source or give no numbers")
        if self.source is not None and self.total_j is None:
            raise ValueError(f"Energy: source {self.source!r} without total_j; a measured run has a total")
        for name in ("total_j", "idle_j"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"Energy {name}: expected a finite number >= 0, got {v!r}")

    @property
    def measured(self) -> bool:
        """True when there are numbers (measured or modelled)."""
        return self.source is not None


# --- summary ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """Mean, median, p90 and p99 (seconds) of one latency; all None when there were no values."""

    mean_s: float | None = None
    median_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None


@dataclass(frozen=True)
class Summary:
    """Everything ``replay run`` reports at the end (definitions in the module docstring)."""

    requests: int
    finished: int
    rejected: int
    unfinished: int
    preemptions: int            # total over all requests
    requests_preempted: int     # requests preempted at least once
    duration_s: float | None
    total_input_tokens: int     # of finished requests
    total_output_tokens: int    # generated tokens of finished requests
    ttft: Dist
    tpot: Dist
    itl: Dist
    e2el: Dist
    queue: Dist
    request_throughput: float | None       # finished requests / s
    output_throughput: float | None        # output tokens / s
    total_token_throughput: float | None   # (input + output) tokens / s
    slo: SLO | None
    good_requests: int | None
    request_goodput: float | None          # good requests / s
    goodput_fraction: float | None         # good / all requests
    energy_source: str | None
    energy_not_measured_reason: str | None
    energy_total_j: float | None
    energy_idle_j: float | None
    energy_above_idle_j: float | None
    energy_per_request_j: float | None
    energy_per_output_token_j: float | None
    output_tokens_per_j: float | None
    mean_request_energy_j: float | None
    median_request_energy_j: float | None
    steps: int
    mean_batch_seqs: float | None
    mean_prefill_tokens_per_step: float | None
    mean_decode_tokens_per_step: float | None
    peak_kv_use_fraction: float | None
    # arrival fidelity: how late requests reached the server after they were due (submitted_s - arrival_s)
    arrival_lag_p50_s: float | None = None
    arrival_lag_p99_s: float | None = None
    arrival_lag_max_s: float | None = None
    # a server run: requests that broke (HTTP 5xx, timeout, broken stream, fewer tokens), and each kind's count
    failed: int = 0
    failures: tuple[tuple[str, int], ...] = ()
    steps_source: str = "recorded"      # or "reconstructed from token times" (a server run: steps not visible)
    # finished requests' prompt tokens served from the prefix cache (each request's first admission) over all their
    # prompt tokens; None where none was (caching off, or no hit)
    prefix_cache_hit_rate: float | None = None

    def to_dict(self) -> dict:
        """A flat dict of plain ints, floats, str and None (no numpy types, no NaN), ready for
        ``json.dumps(allow_nan=False)``. Latencies flatten as ``{mean,median,p90,p99}_{metric}_s``
        (vLLM's names in seconds), the SLO as ``slo_{ttft,tpot,e2e}_s``."""
        out: dict = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Dist):
                for stat in ("mean", "median", "p90", "p99"):
                    out[f"{stat}_{f.name}_s"] = _plain(getattr(v, f"{stat}_s"))
            elif f.name == "failures":  # flat: failed_<kind> (failed_timeout, failed_http_500, ...)
                for kind, count in v:
                    out["failed_" + re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_")] = int(count)
            elif f.name == "slo":
                for name in ("ttft_s", "tpot_s", "e2e_s"):
                    out[f"slo_{name}"] = None if v is None else _plain(getattr(v, name))
            else:
                out[f.name] = _plain(v)
        return out


def _plain(v):
    """A JSON-safe plain value: numpy scalars to int/float; NaN or infinity would be a bug, so it raises."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"Summary: non-finite value {v!r}")
    return v


# --- reading the records ----------------------------------------------------------------------------------


def _floats(df: pd.DataFrame, name: str, table: str) -> np.ndarray:
    """Column ``name`` as float64 with NaN for null; an empty table may lack the column."""
    if name not in df.columns:
        if len(df) == 0:
            return np.empty(0)
        raise ValueError(f"{table}: missing field {name!r}")
    try:
        return df[name].to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{table}: field {name!r}: expected numbers or null ({e})") from None


def _counts(df: pd.DataFrame, name: str, rows: np.ndarray, table: str = "requests") -> np.ndarray:
    """Column ``name`` at ``rows`` (a boolean mask) as int64; a null there is an error, never a silent 0."""
    x = _floats(df, name, table)[rows]
    bad = np.flatnonzero(np.isnan(x) | (x < 0) | (x != np.round(x)))
    if bad.size:
        i = int(np.flatnonzero(rows)[bad[0]])
        raise ValueError(f"{table} {_row(df, i)}: field {name!r} is {x[bad[0]]!r}; "
                         f"expected a whole number >= 0")
    return x.astype(np.int64)


def _id_text(df: pd.DataFrame, i: int) -> str:
    """' (id ...)' for the request at position ``i`` of ``df``, for error messages."""
    return f" (id {df['id'].iloc[i]!r})" if "id" in df.columns else ""


def _row(df: pd.DataFrame, i: int) -> str:
    """'row LABEL (id ...)' for position ``i``: the label is the row in the original table even in a subset."""
    return f"row {df.index[i]}{_id_text(df, i)}"


def _dist(x: np.ndarray) -> Dist:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Dist()
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return Dist(float(x.mean()), float(p50), float(p90), float(p99))


def _ratio(num: float, den: float | None) -> float | None:
    return None if den is None or den == 0 else float(num) / float(den)


# --- inter-token latency ------------------------------------------------------------------------------------


def itl_s(requests: pd.DataFrame, steps: pd.DataFrame) -> np.ndarray:
    """Every inter-token latency (seconds) of ``requests``: for each request, the gaps between the end times
    of consecutive steps (of its replica) in which it emitted an output token, read from its run-length
    ``token_steps`` ([[first_step, count], ...]) and ``steps.end_s``. Pooled in request order.

    Vectorised: one Python pass over the runs (about one per request, plus one per preemption), then numpy
    over tokens (a dense (replica, step) -> end_s table), so 4 million tokens take about 0.1 s. A token step
    missing from ``steps``, duplicate step rows, or runs out of time order raise ValueError naming the
    request."""
    if len(requests) == 0:
        return np.empty(0)
    if "token_steps" not in requests.columns:
        raise ValueError("requests: missing field 'token_steps'")
    owners: list[int] = []
    firsts: list[int] = []
    counts: list[int] = []
    for i, runs in enumerate(requests["token_steps"].tolist()):
        if runs is None or (isinstance(runs, float) and math.isnan(runs)):
            continue
        try:
            for first, count in runs:
                owners.append(i)
                firsts.append(first)
                counts.append(count)
        except (TypeError, ValueError):
            raise ValueError(f"requests {_row(requests, i)}: field 'token_steps': expected "
                             f"[[first_step, count], ...], got {runs!r}") from None
    if not counts:
        return np.empty(0)
    owner = np.asarray(owners, dtype=np.int64)
    first = np.asarray(firsts, dtype=np.int64)
    count = np.asarray(counts, dtype=np.int64)
    bad = np.flatnonzero((first < 0) | (count < 1))
    if bad.size:
        i = int(owner[bad[0]])
        raise ValueError(f"requests {_row(requests, i)}: field 'token_steps': run "
                         f"[{first[bad[0]]}, {count[bad[0]]}] needs first_step >= 0 and count >= 1")

    replica = _floats(requests, "replica", "requests")[owner]
    if (nulls := np.flatnonzero(np.isnan(replica))).size:
        i = int(owner[nulls[0]])
        raise ValueError(f"requests {_row(requests, i)}: field 'replica' is null")
    st_rep = _floats(steps, "replica", "steps")
    st_step = _floats(steps, "step", "steps")
    st_end = _floats(steps, "end_s", "steps")
    if (nulls := np.flatnonzero(np.isnan(st_rep) | np.isnan(st_step))).size:
        raise ValueError(f"steps row {steps.index[nulls[0]]}: field 'replica' or 'step' is null")

    def where(run: int, step: int) -> str:
        i = int(owner[run])
        return f"requests {_row(requests, i)}: field 'token_steps': step {step} of replica {int(replica[run])}"

    # A dense (replica, step) -> end_s table: replicas numbered 0..k-1, steps 0..span-1 (steps are indexed
    # from 0 within their replica, so the table is about as large as the steps table).
    span = int(st_step.max()) + 1 if st_step.size else 0
    last = first + count - 1
    if (beyond := np.flatnonzero(last >= span)).size:
        raise ValueError(f"{where(int(beyond[0]), int(last[beyond[0]]))} has no row in steps")
    reps, rep_idx = np.unique(np.concatenate([st_rep, replica]).astype(np.int64), return_inverse=True)
    st_key = rep_idx[: st_rep.size] * span + st_step.astype(np.int64)
    run_key = rep_idx[st_rep.size:] * span + first
    if (dup := np.flatnonzero(np.bincount(st_key, minlength=reps.size * span) > 1)).size:
        k = int(dup[0])
        raise ValueError(f"steps: replica {reps[k // span]} step {k % span} appears more than once")
    table = np.full(reps.size * span, np.nan)
    table[st_key] = st_end

    # expand runs to one end time per token: key = run's first key + position within the run
    total = int(count.sum())
    run_start = np.cumsum(count) - count
    tok_key = np.repeat(run_key - run_start, count) + np.arange(total, dtype=np.int64)
    t = table[tok_key]
    if (nulls := np.flatnonzero(np.isnan(t))).size:
        j = int(nulls[0])
        run = int(np.searchsorted(run_start, j, side="right")) - 1
        raise ValueError(f"{where(run, int(first[run] + j - run_start[run]))} has no row in steps "
                         f"(or a null end_s)")

    # gaps between consecutive tokens, less the gap from one request's last token to the next one's first
    gaps = np.diff(t)
    keep = np.ones(gaps.size, dtype=bool)
    new_request = np.flatnonzero(owner[1:] != owner[:-1]) + 1  # runs that start a request (after the first)
    keep[run_start[new_request] - 1] = False
    if (back := np.flatnonzero(keep & ((np.diff(tok_key) <= 0) | (gaps < 0)))).size:
        j = int(back[0]) + 1
        run = int(np.searchsorted(run_start, j, side="right")) - 1
        raise ValueError(f"{where(run, int(first[run] + j - run_start[run]))} is not after the token before "
                         f"it: runs out of order or overlapping, or steps' end_s decreasing")
    return gaps[keep]


def client_itls_s(requests: pd.DataFrame) -> list[np.ndarray]:
    """Per record, the gaps between its consecutive output tokens as the client saw them (``token_times_s``, a
    server run; a chunk of several tokens counts once, as vLLM's client counts it); empty without token times."""
    if "token_times_s" not in requests.columns:
        return [np.empty(0)] * len(requests)
    return [np.diff(np.unique(np.asarray(t, dtype=float))) if isinstance(t, (list, np.ndarray)) and len(t) > 1
            else np.empty(0) for t in requests["token_times_s"].tolist()]


def pooled_itl_s(requests: pd.DataFrame, steps: pd.DataFrame) -> np.ndarray:
    """Every ITL of ``requests``: from the clients' own token times where the records carry them (a server run,
    whose steps are a reconstruction), else from the steps (``itl_s``)."""
    if "token_times_s" not in requests.columns:
        return itl_s(requests, steps)
    gaps = client_itls_s(requests)
    return np.concatenate(gaps) if gaps else np.empty(0)


# --- the summary --------------------------------------------------------------------------------------------


def summarize(requests: pd.DataFrame, steps: pd.DataFrame, energy: Energy, slo: SLO | None = None,
              duration_s: float | None = None) -> Summary:
    """Summarise one run's records (definitions in the module docstring). ``duration_s`` overrides the
    run duration measured from the records (e.g. the wall time a real run took)."""
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s: expected a finite number >= 0, got {duration_s!r}")
    duration_s = None if duration_s is None else float(duration_s)
    n = len(requests)
    if "status" not in requests.columns and n:
        raise ValueError("requests: missing field 'status'")
    status = requests["status"].to_numpy(dtype=object) if n else np.empty(0, dtype=object)
    known = np.isin(status, STATUSES)
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise ValueError(f"requests {_row(requests, i)}: field 'status' is {status[i]!r}; "
                         f"expected one of {', '.join(STATUSES)}")
    fin = status == "finished"
    n_fin = int(fin.sum())
    preempt = _counts(requests, "preemptions", np.ones(n, dtype=bool))
    in_tokens = int(_counts(requests, "input_tokens", fin).sum())
    out_tokens = int(_counts(requests, "generated_tokens", fin).sum())

    if duration_s is None:
        ends = np.concatenate([_floats(requests, "finished_s", "requests")[fin], _floats(steps, "end_s", "steps")])
        ends = ends[~np.isnan(ends)]
        duration_s = float(ends.max()) if ends.size else None
    rate_den = duration_s if duration_s else None  # None or 0 -> no rates

    ttft = _floats(requests, "ttft_s", "requests")[fin]
    tpot = _floats(requests, "tpot_s", "requests")[fin]
    e2e = _floats(requests, "e2e_s", "requests")[fin]
    lat = {
        "ttft": _dist(ttft), "tpot": _dist(tpot), "e2el": _dist(e2e),
        "queue": _dist(_floats(requests, "queue_s", "requests")[fin]),
        "itl": _dist(pooled_itl_s(requests[fin], steps) if n_fin else np.empty(0)),
    }

    good = goodput = fraction = None
    if slo is not None:
        ok = np.ones(n_fin, dtype=bool)
        if slo.ttft_s is not None:
            ok &= ttft <= slo.ttft_s           # NaN compares False: a missing TTFT misses
        if slo.tpot_s is not None:
            ok &= np.isnan(tpot) | (tpot <= slo.tpot_s)  # one token: vLLM scores TPOT 0
        if slo.e2e_s is not None:
            ok &= e2e <= slo.e2e_s
        good = int(ok.sum())
        goodput = _ratio(good, rate_den)
        fraction = _ratio(good, n)

    e: dict[str, float | None] = dict.fromkeys(
        ("energy_total_j", "energy_idle_j", "energy_above_idle_j", "energy_per_request_j",
         "energy_per_output_token_j", "output_tokens_per_j", "mean_request_energy_j",
         "median_request_energy_j"))
    if energy.measured:
        total = float(energy.total_j)
        per_req = _floats(requests, "energy_j", "requests")[fin] if n_fin else np.empty(0)
        per_req = per_req[~np.isnan(per_req)]
        e.update(
            energy_total_j=total,
            energy_idle_j=energy.idle_j,
            energy_above_idle_j=None if energy.idle_j is None else total - energy.idle_j,
            energy_per_request_j=_ratio(total, n_fin),
            energy_per_output_token_j=_ratio(total, out_tokens),
            output_tokens_per_j=_ratio(out_tokens, total),
            mean_request_energy_j=float(per_req.mean()) if per_req.size else None,
            median_request_energy_j=float(np.median(per_req)) if per_req.size else None,
        )

    n_steps = len(steps)
    used = _floats(steps, "kv_blocks_used", "steps")
    cap = _floats(steps, "kv_blocks_total", "steps")
    kv = used[cap > 0] / cap[cap > 0]
    kv = kv[~np.isnan(kv)]

    def step_mean(name: str) -> float | None:
        x = _floats(steps, name, "steps")
        return float(np.nanmean(x)) if n_steps and not np.isnan(x).all() else None

    failures: dict[str, int] = {}
    if n and "error" in requests.columns:
        for kind in requests["error"].to_numpy(dtype=object)[status == "failed"]:
            failures[str(kind)] = failures.get(str(kind), 0) + 1
    return Summary(
        failed=int((status == "failed").sum()), failures=tuple(sorted(failures.items())),
        steps_source="reconstructed from token times" if n and "token_times_s" in requests.columns else "recorded",
        requests=n, finished=n_fin, rejected=int((status == "rejected").sum()),
        unfinished=int((status == "unfinished").sum()),
        preemptions=int(preempt.sum()), requests_preempted=int((preempt > 0).sum()),
        duration_s=duration_s, total_input_tokens=in_tokens, total_output_tokens=out_tokens,
        **lat,
        request_throughput=_ratio(n_fin, rate_den), output_throughput=_ratio(out_tokens, rate_den),
        total_token_throughput=_ratio(in_tokens + out_tokens, rate_den),
        slo=slo, good_requests=good, request_goodput=goodput, goodput_fraction=fraction,
        energy_source=energy.source,
        energy_not_measured_reason=None if energy.measured else (energy.reason or "no reason given"),
        **e,
        steps=n_steps, mean_batch_seqs=step_mean("num_seqs"),
        mean_prefill_tokens_per_step=step_mean("prefill_tokens"),
        mean_decode_tokens_per_step=step_mean("decode_tokens"),
        peak_kv_use_fraction=float(kv.max()) if kv.size else None,
        **_lag(requests),
        prefix_cache_hit_rate=_hit_rate(requests, status),
    )


def _hit_rate(requests: pd.DataFrame, status: np.ndarray) -> float | None:
    """Cached prompt tokens over prompt tokens of the finished requests; None when no token came from a cache."""
    if "cached_tokens" not in requests.columns or not len(requests):
        return None
    done = status == "finished"
    cached = pd.to_numeric(requests["cached_tokens"], errors="coerce").fillna(0).to_numpy()[done]
    prompt = pd.to_numeric(requests["input_tokens"], errors="coerce").fillna(0).to_numpy()[done]
    return float(cached.sum() / prompt.sum()) if cached.sum() > 0 and prompt.sum() > 0 else None


def _lag(requests: pd.DataFrame) -> dict[str, float | None]:
    """p50, p99 and max of submitted_s - arrival_s over every request that reached the server."""
    if not len(requests) or "submitted_s" not in requests.columns:
        return {}
    lag = _floats(requests, "submitted_s", "requests") - _floats(requests, "arrival_s", "requests")
    lag = lag[~np.isnan(lag)]
    if not lag.size:
        return {}
    p50, p99 = np.percentile(lag, [50, 99])
    return {"arrival_lag_p50_s": float(p50), "arrival_lag_p99_s": float(p99), "arrival_lag_max_s": float(lag.max())}


# --- text ---------------------------------------------------------------------------------------------------


def _seconds_text(v: float) -> str:
    return f"{v * 1000:g}ms" if v < 1 else f"{v:g}s"


def _num(v: float | int | None, fmt: str = ",.2f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def format_summary(s: Summary) -> str:
    """A compact aligned plain-text table of ``s``, as ``replay run`` prints at the end (latencies in ms)."""
    w = 18
    lines = [
        f"{'requests':<{w}}{s.requests} (finished {s.finished}, rejected {s.rejected}, "
        f"unfinished {s.unfinished}" + (f", failed {s.failed}: " + ", ".join(f"{k} {c}" for k, c in s.failures)
                                        if s.failed else "") + ")",
        f"{'preemptions':<{w}}{s.preemptions} in {s.requests_preempted} requests",
        f"{'duration':<{w}}{_num(s.duration_s, ',.3f', ' s')}",
        f"{'throughput':<{w}}{_num(s.request_throughput, ',.3f', ' req/s')}, "
        f"output {_num(s.output_throughput, ',.1f', ' tok/s')}, "
        f"total {_num(s.total_token_throughput, ',.1f', ' tok/s')}",
    ]
    if s.slo is not None:
        frac = "-" if s.goodput_fraction is None else f"{s.goodput_fraction:.1%}"
        lines.append(f"{'goodput':<{w}}{_num(s.request_goodput, ',.3f', ' req/s')}; {s.good_requests} of "
                     f"{s.requests} requests ({frac}) meet {s.slo}")
    if s.finished == 0:
        lines.append(f"{'latency':<{w}}no finished requests")
    else:
        names = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E", "queue": "queue"}
        cells = {label: [_num(None if v is None else v * 1000, ",.2f") for v in
                         (getattr(s, key).mean_s, getattr(s, key).median_s, getattr(s, key).p90_s,
                          getattr(s, key).p99_s)] for key, label in names.items()}
        # 11 wide, or wider for the longest number (1,000 s and more is 1,000,000.00 ms) so columns stay apart
        col = max(11, 2 + max(len(c) for row in cells.values() for c in row))
        lines.append(f"{'latency (ms)':<{w}}" + "".join(f"{h:>{col}}" for h in ("mean", "median", "p90", "p99")))
        for label, row in cells.items():
            lines.append(f"  {label:<{w - 2}}" + "".join(f"{c:>{col}}" for c in row))
    if s.energy_source is None:
        lines.append(f"{'energy':<{w}}not measured: {s.energy_not_measured_reason}")
    else:
        lines += [
            f"{'energy':<{w}}{s.energy_source}",
            f"  {'total':<{w - 2}}{_num(s.energy_total_j, ',.1f', ' J')} (idle {_num(s.energy_idle_j, ',.1f', ' J')}"
            f", above idle {_num(s.energy_above_idle_j, ',.1f', ' J')})",
            f"  {'per request':<{w - 2}}{_num(s.energy_per_request_j, ',.3f', ' J')}; per output token "
            f"{_num(s.energy_per_output_token_j, ',.4f', ' J')}; {_num(s.output_tokens_per_j, ',.3f')} "
            f"output tokens/J",
        ]
        if s.mean_request_energy_j is not None:
            lines.append(f"  {'request energy':<{w - 2}}mean {_num(s.mean_request_energy_j, ',.3f', ' J')}, "
                         f"median {_num(s.median_request_energy_j, ',.3f', ' J')}")
    if s.arrival_lag_max_s is not None and s.arrival_lag_max_s > 1e-6:
        lines.append(f"{'arrival lag (ms)':<{w}}p50 {s.arrival_lag_p50_s * 1000:,.2f}, p99 "
                     f"{s.arrival_lag_p99_s * 1000:,.2f}, max {s.arrival_lag_max_s * 1000:,.2f} "
                     "(handed to the server after the time it was due)")
    kv = "-" if s.peak_kv_use_fraction is None else f"{s.peak_kv_use_fraction:.1%}"
    lines.append(f"{'steps':<{w}}{s.steps:,}" + ("" if s.steps_source == "recorded" else f" {s.steps_source}")
                 + f"; mean batch {_num(s.mean_batch_seqs, ',.2f', ' seqs')}; "
                 f"{_num(s.mean_prefill_tokens_per_step, ',.1f')} prefill + "
                 f"{_num(s.mean_decode_tokens_per_step, ',.1f')} decode tokens/step; peak KV {kv}"
                 + ("" if s.prefix_cache_hit_rate is None else
                    f"; prefix cache hits {s.prefix_cache_hit_rate:.1%} of prompt tokens"))
    return "\n".join(lines)
