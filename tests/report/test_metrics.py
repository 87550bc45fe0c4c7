"""Tests for replay.report.metrics: a hand-worked two-replica run (a preemption gap, overlapping step indices),
goodput, SLO parsing, energy present and absent, empty and all-rejected runs, JSON safety, located errors, an
independent per-token ITL check (hypothesis) and speed."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.report.metrics import SLO, Energy, Summary, format_summary, itl_s, parse_slo, summarize

NAN = float("nan")


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


# --- the hand-worked run ------------------------------------------------------------------------------------
#
# Two replicas whose step indices overlap. End times (start of step k = end of step k-1, step 0 starts at 0):
#   replica 0, steps 0..8: 0.5 1.0 1.2 1.5 2.0 2.1 2.5 3.0 3.5
#   replica 1, steps 0..4: 0.4 0.9 1.4 1.6 2.2
R0_END = [0.5, 1.0, 1.2, 1.5, 2.0, 2.1, 2.5, 3.0, 3.5]
R1_END = [0.4, 0.9, 1.4, 1.6, 2.2]


def hand_steps() -> pd.DataFrame:
    end = R0_END + R1_END
    start = [0.0] + R0_END[:-1] + [0.0] + R1_END[:-1]
    return pd.DataFrame({
        "replica": [0] * 9 + [1] * 5,
        "step": list(range(9)) + list(range(5)),
        "start_s": start, "end_s": end, "duration_s": [e - s for s, e in zip(start, end)],
        "prefill_tokens": [30, 20, 0, 0, 0, 24, 0, 0, 0] + [5, 0, 0, 8, 0],    # sums 74 + 13 = 87
        "decode_tokens": [0, 1, 2, 1, 0, 0, 2, 2, 1] + [0, 1, 1, 1, 1],        # sums 9 + 4 = 13
        "num_seqs": [2, 2, 2, 1, 1, 2, 2, 2, 1] + [1, 1, 2, 2, 1],             # sums 15 + 7 = 22
        "kv_blocks_used": [10, 20, 40, 30, 0, 25, 30, 30, 5] + [5, 10, 30, 20, 10],
        "kv_blocks_total": [100] * 9 + [50] * 5,                               # peaks 40/100, 30/50
        "energy_j": [None] * 14,
    })


# Requests (times worked from the step table; ttft/e2e/queue from arrival, tpot over generated - 1):
#   A  r0 tokens at steps 0,1,2 -> 0.5 1.0 1.2        ITL 0.5 0.2           ttft .5  e2e 1.2 queue 0   tpot .7/2
#   B  r0 steps 1 | preempted | 5,6,7 -> 1.0 2.1 2.5 3.0   ITL 1.1 0.4 0.5   arrival .2: ttft .8 e2e 2.8 queue .3
#                                                                            tpot 2.0/3
#   C  r1 steps 0..4 -> 0.4 0.9 1.4 1.6 2.2          ITL 0.5 0.5 0.2 0.6   ttft .4  e2e 2.2 queue 0   tpot 1.8/4
#   D  r1 step 3 only -> 1.6 (one token)             no ITL                arrival 1.0: ttft .6 e2e .6 queue .4
#   E  rejected (never scheduled)
#   F  r0 unfinished: one token at step 6, preempted once before
def hand_requests() -> pd.DataFrame:
    rows = [
        # id, status, replica, arrival, admitted, first, finished, in, out, gen, pre, token_steps, energy_j
        ("A", "finished", 0, 0.0, 0.0, 0.5, 1.2, 10, 3, 3, 0, [[0, 1], [1, 2]], 10.0),
        ("B", "finished", 0, 0.2, 0.5, 1.0, 3.0, 20, 4, 4, 1, [[1, 1], [5, 3]], 40.0),
        ("C", "finished", 1, 0.0, 0.0, 0.4, 2.2, 5, 5, 5, 0, [[0, 5]], 20.0),
        ("D", "finished", 1, 1.0, 1.4, 1.6, 1.6, 8, 1, 1, 0, [[3, 1]], None),
        ("E", "rejected", 0, 0.5, None, None, None, 9000, 10, 0, 0, [], None),
        ("F", "unfinished", 0, 2.0, 2.1, 2.5, None, 7, 50, 1, 1, [[6, 1]], 5.0),
    ]
    cols = ["id", "status", "replica", "arrival_s", "admitted_s", "first_token_s", "finished_s", "input_tokens",
            "output_tokens", "generated_tokens", "preemptions", "token_steps", "energy_j"]
    df = pd.DataFrame(rows, columns=cols)
    df["kind"] = None
    df["reason"] = [None, None, None, None, "prompt longer than the KV cache", None]
    df["submitted_s"] = df["arrival_s"]
    df["cached_tokens"] = 0
    # the derived columns as literals, worked out above
    df["queue_s"] = [0.0, 0.3, 0.0, 0.4, None, 0.1]
    df["ttft_s"] = [0.5, 0.8, 0.4, 0.6, None, 0.5]
    df["e2e_s"] = [1.2, 2.8, 2.2, 0.6, None, None]
    df["tpot_s"] = [0.35, 2.0 / 3.0, 0.45, None, None, None]
    return df


MODELLED = Energy("modelled (sim power model)", None, total_j=130.0, idle_j=30.0)
NO_METER = Energy(None, "no NVML device on this machine")
ITL_HAND = [0.5, 0.2, 1.1, 0.4, 0.5, 0.5, 0.5, 0.2, 0.6]  # A, B, C in request order


def test_itl_across_a_preemption_gap():
    req = hand_requests()
    # B: tokens at r0 steps 1, 5, 6, 7 -> 1.0, 2.1, 2.5, 3.0; the 1.1 s gap spans the preemption
    assert itl_s(req[req.id == "B"], hand_steps()) == approx([1.1, 0.4, 0.5])


def test_itl_uses_each_requests_own_replica():
    req = hand_requests()
    # C runs on replica 1: steps 0..4 end 0.4 0.9 1.4 1.6 2.2 (replica 0's steps 0..4 would give 0.5 0.2 0.3 0.5)
    assert itl_s(req[req.id == "C"], hand_steps()) == approx([0.5, 0.5, 0.2, 0.6])


def test_itl_pooled_over_requests_and_independent_of_step_row_order():
    req = hand_requests()
    fin = req[req.status == "finished"]
    steps = hand_steps()
    assert itl_s(fin, steps) == approx(ITL_HAND)
    shuffled = steps.sample(frac=1.0, random_state=7)
    assert itl_s(fin, shuffled) == approx(ITL_HAND)
    # no gap is made between one request's last token and the next one's first; one-token D adds none
    assert itl_s(req[req.id.isin(["D", "E"])], steps).size == 0


def test_itl_empty():
    assert itl_s(pd.DataFrame(), pd.DataFrame()).size == 0
    assert itl_s(hand_requests().iloc[:0], hand_steps()).size == 0


def test_hand_worked_counts_and_tokens():
    s = summarize(hand_requests(), hand_steps(), MODELLED)
    assert (s.requests, s.finished, s.rejected, s.unfinished) == (6, 4, 1, 1)
    assert (s.preemptions, s.requests_preempted) == (2, 2)  # B and F, across statuses
    assert s.total_input_tokens == 10 + 20 + 5 + 8          # finished only
    assert s.total_output_tokens == 3 + 4 + 5 + 1
    assert s.duration_s == approx(3.5)  # last step end (replica 0 step 8) is after the last finish (3.0)


def test_hand_worked_latencies():
    s = summarize(hand_requests(), hand_steps(), MODELLED)
    # TTFT over finished: 0.5 0.8 0.4 0.6 -> mean 2.3/4; sorted 0.4 0.5 0.6 0.8, median (0.5+0.6)/2
    # p90 at rank 0.9*3 = 2.7: 0.6 + 0.7*0.2; p99 at rank 2.97: 0.6 + 0.97*0.2
    assert (s.ttft.mean_s, s.ttft.median_s, s.ttft.p90_s, s.ttft.p99_s) == (
        approx(0.575), approx(0.55), approx(0.74), approx(0.794))
    # TPOT skips D's null: 0.35, 2/3, 0.45 -> mean 1.466667/3; median 0.45; p90 at rank 1.8: 0.45 + 0.8*(2/3-0.45)
    assert s.tpot.mean_s == approx((0.35 + 2 / 3 + 0.45) / 3)
    assert s.tpot.median_s == approx(0.45)
    assert s.tpot.p90_s == approx(0.45 + 0.8 * (2 / 3 - 0.45))
    # ITL: 0.5 0.2 1.1 0.4 0.5 0.5 0.5 0.2 0.6 -> sum 4.5, mean 0.5; sorted 0.2 0.2 0.4 0.5 0.5 0.5 0.5 0.6 1.1
    # median x[4] = 0.5; p90 at rank 7.2: 0.6 + 0.2*0.5 = 0.7; p99 at rank 7.92: 0.6 + 0.92*0.5 = 1.06
    assert (s.itl.mean_s, s.itl.median_s, s.itl.p90_s, s.itl.p99_s) == (
        approx(0.5), approx(0.5), approx(0.7), approx(1.06))
    # E2E: 1.2 2.8 2.2 0.6 -> mean 1.7; sorted 0.6 1.2 2.2 2.8: median 1.7, p90 2.2 + 0.7*0.6, p99 2.2 + 0.97*0.6
    assert (s.e2el.mean_s, s.e2el.median_s, s.e2el.p90_s, s.e2el.p99_s) == (
        approx(1.7), approx(1.7), approx(2.62), approx(2.782))
    # queue: 0 0.3 0 0.4 (F's 0.1 is unfinished, left out) -> mean 0.175, median 0.15
    assert (s.queue.mean_s, s.queue.median_s) == (approx(0.175), approx(0.15))


def test_hand_worked_throughputs_and_duration_override():
    s = summarize(hand_requests(), hand_steps(), MODELLED)
    assert s.request_throughput == approx(4 / 3.5)
    assert s.output_throughput == approx(13 / 3.5)
    assert s.total_token_throughput == approx(56 / 3.5)  # (43 + 13) / 3.5 = 16
    s = summarize(hand_requests(), hand_steps(), MODELLED, duration_s=8.0)
    assert s.duration_s == 8.0
    assert s.request_throughput == approx(0.5)
    assert s.total_token_throughput == approx(7.0)


def test_hand_worked_energy():
    s = summarize(hand_requests(), hand_steps(), MODELLED)
    assert s.energy_source == "modelled (sim power model)"
    assert s.energy_not_measured_reason is None
    assert (s.energy_total_j, s.energy_idle_j, s.energy_above_idle_j) == (130.0, 30.0, 100.0)
    assert s.energy_per_request_j == approx(130 / 4)       # 32.5
    assert s.energy_per_output_token_j == approx(130 / 13)  # 10
    assert s.output_tokens_per_j == approx(0.1)
    # per-request energy_j of finished requests that have one: 10, 40, 20 (D null, F unfinished)
    assert s.mean_request_energy_j == approx(70 / 3)
    assert s.median_request_energy_j == approx(20.0)
    s = summarize(hand_requests(), hand_steps(), Energy("measured (nvml)", total_j=130.0))
    assert s.energy_idle_j is None and s.energy_above_idle_j is None and s.energy_total_j == 130.0


def test_hand_worked_steps():
    s = summarize(hand_requests(), hand_steps(), MODELLED)
    assert s.steps == 14
    assert s.mean_batch_seqs == approx(22 / 14)
    assert s.mean_prefill_tokens_per_step == approx(87 / 14)
    assert s.mean_decode_tokens_per_step == approx(13 / 14)
    assert s.peak_kv_use_fraction == approx(0.6)  # replica 1: 30 of 50 blocks


# --- goodput ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, good", [
    # ttft <= 0.6 (D's 0.6 meets it: the bound is inclusive, as vLLM's s >= r); tpot <= 0.5 (D's null meets it)
    ("ttft=600ms,tpot=0.5", ["A", "C", "D"]),
    ("e2e=2.2", ["A", "C", "D"]),  # B's 2.8 misses; C's 2.2 meets
    ("tpot=400ms", ["A", "D"]),  # B 0.667 and C 0.45 miss; one-token D meets any TPOT bound
    ("ttft=0.45", ["C"]),
    ("ttft=10,tpot=10,e2e=10", ["A", "B", "C", "D"]),  # everything finished; E and F are never good
])
def test_goodput_counting(text, good):
    s = summarize(hand_requests(), hand_steps(), MODELLED, slo=parse_slo(text))
    assert s.good_requests == len(good)
    assert s.request_goodput == approx(len(good) / 3.5)
    assert s.goodput_fraction == approx(len(good) / 6)  # over all requests: rejected/unfinished are misses


def test_no_slo_no_goodput():
    s = summarize(hand_requests(), hand_steps(), MODELLED)
    assert s.slo is None and s.good_requests is None and s.request_goodput is None and s.goodput_fraction is None
    assert "goodput" not in format_summary(s)


# --- parse_slo ------------------------------------------------------------------------------------------------


def test_parse_slo():
    assert parse_slo("ttft=2s,tpot=100ms,e2e=30") == SLO(ttft_s=2.0, tpot_s=0.1, e2e_s=30.0)
    assert parse_slo(" TTFT = 250ms , e2el=1.5s ") == SLO(ttft_s=0.25, e2e_s=1.5)
    assert parse_slo("tpot=1e2ms") == SLO(tpot_s=0.1)
    assert str(parse_slo("ttft=2s,tpot=100ms")) == "ttft<=2s, tpot<=100ms"


@pytest.mark.parametrize("text, part", [
    ("ttft", "'ttft'"),
    ("ttft=2s,", "''"),
    ("latency=2s", "'latency=2s'"),
    ("ttft=fast", "'ttft=fast'"),
    ("ttft=2h", "'ttft=2h'"),
    ("tpot=-5ms", "'tpot=-5ms'"),
    ("e2e=0", "'e2e=0'"),
    ("ttft=", "'ttft='"),
    ("ttft=1,ttft=2", "'ttft=2'"),
])
def test_parse_slo_errors_name_the_part(text, part):
    with pytest.raises(ValueError) as err:
        parse_slo(text)
    assert part in str(err.value) and "expected" in str(err.value), str(err.value)


def test_parse_slo_empty_and_direct_slo_checks():
    with pytest.raises(ValueError, match="empty"):
        parse_slo("  ")
    with pytest.raises(ValueError, match="at least one bound"):
        SLO()
    with pytest.raises(ValueError, match="tpot_s"):
        SLO(tpot_s=0.0)


# --- energy not measured ------------------------------------------------------------------------------------


ENERGY_FIELDS = ("energy_total_j", "energy_idle_j", "energy_above_idle_j", "energy_per_request_j",
                 "energy_per_output_token_j", "output_tokens_per_j", "mean_request_energy_j",
                 "median_request_energy_j")


def test_energy_not_measured_is_none_never_zero():
    s = summarize(hand_requests(), hand_steps(), NO_METER)  # records even carry energy_j: still not reported
    assert s.energy_source is None
    assert all(getattr(s, f) is None for f in ENERGY_FIELDS)
    assert s.energy_not_measured_reason == "no NVML device on this machine"
    text = format_summary(s)
    assert "not measured: no NVML device on this machine" in text
    assert " J" not in text and "tokens/J" not in text
    d = s.to_dict()
    assert all(d[f] is None for f in ENERGY_FIELDS)


def test_energy_checks_its_facts():
    with pytest.raises(ValueError, match="without a source"):
        Energy(None, "no meter", total_j=0.0)
    with pytest.raises(ValueError, match="total_j"):
        Energy("measured (nvml)")
    with pytest.raises(ValueError, match="idle_j"):
        Energy("measured (nvml)", total_j=1.0, idle_j=NAN)
    assert "not measured: no reason given" in format_summary(summarize(pd.DataFrame(), pd.DataFrame(),
                                                                       Energy(None)))


# --- empty and all-rejected runs ------------------------------------------------------------------------------


def _no_latency(s: Summary) -> bool:
    return all(getattr(getattr(s, k), f"{stat}_s") is None
               for k in ("ttft", "tpot", "itl", "e2el", "queue") for stat in ("mean", "median", "p90", "p99"))


def test_empty_run():
    s = summarize(pd.DataFrame(), pd.DataFrame(), Energy("modelled (sim power model)", total_j=0.0, idle_j=0.0))
    assert (s.requests, s.finished, s.rejected, s.unfinished, s.preemptions, s.steps) == (0, 0, 0, 0, 0, 0)
    assert s.duration_s is None and s.request_throughput is None and s.output_throughput is None
    assert _no_latency(s)
    assert s.energy_total_j == 0.0 and s.energy_per_request_j is None and s.output_tokens_per_j is None
    assert s.mean_batch_seqs is None and s.peak_kv_use_fraction is None
    s = summarize(pd.DataFrame(), pd.DataFrame(), NO_METER, slo=SLO(ttft_s=1.0))
    assert s.good_requests == 0 and s.request_goodput is None and s.goodput_fraction is None
    text = format_summary(s)
    assert "no finished requests" in text
    json.dumps(s.to_dict(), allow_nan=False)


def test_all_rejected_run():
    req = hand_requests()
    req = req[req.status == "rejected"]
    empty_steps = hand_steps().iloc[:0]
    s = summarize(req, empty_steps, MODELLED, slo=SLO(e2e_s=5.0))
    assert (s.requests, s.finished, s.rejected) == (1, 0, 1)
    assert s.duration_s is None and s.request_throughput is None and s.request_goodput is None
    assert s.goodput_fraction == 0.0
    assert _no_latency(s)
    assert s.energy_per_request_j is None and s.energy_per_output_token_j is None and s.output_tokens_per_j == 0.0
    assert "no finished requests" in format_summary(s)
    # with a duration the rates are a true zero
    s = summarize(req, empty_steps, MODELLED, duration_s=10.0)
    assert s.request_throughput == 0.0 and s.output_throughput == 0.0


# --- JSON, text ----------------------------------------------------------------------------------------------


def test_to_dict_json_round_trip():
    s = summarize(hand_requests(), hand_steps(), MODELLED, slo=parse_slo("ttft=600ms,tpot=0.5"))
    d = s.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert all(v is None or type(v) in (int, float, str) for v in d.values()), d
    assert d["mean_ttft_s"] == approx(0.575) and d["p99_itl_s"] == approx(1.06) and d["median_e2el_s"] == approx(1.7)
    assert d["slo_ttft_s"] == 0.6 and d["slo_e2e_s"] is None and d["good_requests"] == 3
    assert isinstance(d["finished"], int) and isinstance(d["steps"], int)


def test_format_summary():
    s = summarize(hand_requests(), hand_steps(), MODELLED, slo=parse_slo("ttft=600ms,tpot=0.5"))
    text = format_summary(s)
    lines = text.splitlines()
    assert lines[0].startswith("requests") and "finished 4, rejected 1, unfinished 1" in lines[0]
    assert "3 of 6 requests (50.0%) meet ttft<=600ms, tpot<=500ms" in text
    table = [ln for ln in lines if ln.startswith("  ") and ln.split()[0] in ("TTFT", "TPOT", "ITL", "E2E", "queue")]
    assert len(table) == 5 and len({len(ln) for ln in table}) == 1  # aligned columns
    assert table[0].split() == ["TTFT", "575.00", "550.00", "740.00", "794.00"]
    assert "modelled (sim power model)" in text and "130.0 J" in text and "above idle 100.0 J" in text
    assert "peak KV 60.0%" in text


def test_format_summary_keeps_latency_columns_apart_at_1000_s_and_above():
    """Issue 12 item 14: latencies of 1,000 s and more (1,000,000.00 ms, wider than the 11-character columns)
    ran into each other; the columns widen so every number stays its own, and stay aligned."""
    from dataclasses import replace

    from replay.report.metrics import Dist
    s = summarize(hand_requests(), hand_steps(), MODELLED)
    s = replace(s, ttft=Dist(1234.5, 1000.0, 98765.4321, 123456789.0), e2el=Dist(2000.0, 2000.0, 3000.0, 4000.0))
    lines = format_summary(s).splitlines()
    table = [ln for ln in lines if ln.startswith("  ") and ln.split()[0] in ("TTFT", "TPOT", "ITL", "E2E", "queue")]
    assert len(table) == 5 and len({len(ln) for ln in table}) == 1  # aligned columns
    assert table[0].split() == ["TTFT", "1,234,500.00", "1,000,000.00", "98,765,432.10", "123,456,789,000.00"]
    assert table[3].split() == ["E2E", "2,000,000.00", "2,000,000.00", "3,000,000.00", "4,000,000.00"]
    header = next(ln for ln in lines if ln.startswith("latency (ms)"))
    assert header.split() == ["latency", "(ms)", "mean", "median", "p90", "p99"]
    assert len(header) == len(table[0])  # the headers stand over their columns


# --- located errors -------------------------------------------------------------------------------------------


def test_unknown_status_names_row_and_field():
    req = hand_requests()
    req.loc[2, "status"] = "done"
    with pytest.raises(ValueError, match=r"row 2 \(id 'C'\): field 'status'"):
        summarize(req, hand_steps(), MODELLED)


def test_null_count_is_an_error_not_a_zero():
    req = hand_requests()
    req["generated_tokens"] = req["generated_tokens"].astype(object)
    req.loc[1, "generated_tokens"] = None
    with pytest.raises(ValueError, match=r"row 1 \(id 'B'\): field 'generated_tokens'"):
        summarize(req, hand_steps(), MODELLED)


def test_itl_errors_name_the_request():
    req = hand_requests()
    steps = hand_steps()
    bad = req[req.id == "C"].copy()
    bad.at[bad.index[0], "token_steps"] = [[3, 5]]  # replica 1 has steps 0..4 only
    with pytest.raises(ValueError, match=r"id 'C'.*step 5 of replica 1 has no row in steps"):
        itl_s(bad, steps)
    bad.at[bad.index[0], "token_steps"] = [[2, 2], [0, 1]]  # out of order
    with pytest.raises(ValueError, match=r"id 'C'.*out of order"):
        itl_s(bad, steps)
    bad.at[bad.index[0], "token_steps"] = [[2, 0]]
    with pytest.raises(ValueError, match=r"id 'C'.*count >= 1"):
        itl_s(bad, steps)
    with pytest.raises(ValueError, match=r"replica 0 step 3 appears more than once"):
        itl_s(req[req.id == "A"], pd.concat([steps, steps.iloc[[3]]]))
    with pytest.raises(ValueError, match=r"id 'B'.*step 5 of replica 0 has no row"):
        itl_s(req[req.id == "B"], steps[~((steps.replica == 0) & (steps.step == 5))])


# --- property: vectorised ITL equals a per-token walk ------------------------------------------------------------


@st.composite
def runs_and_steps(draw):
    n_rep = draw(st.integers(1, 3))
    n_steps = [draw(st.integers(1, 30)) for _ in range(n_rep)]
    ends = {r: np.cumsum(draw(st.lists(st.floats(0.001, 5.0), min_size=n, max_size=n))) for r, n in
            enumerate(n_steps)}
    steps = pd.DataFrame({
        "replica": np.concatenate([[r] * n for r, n in enumerate(n_steps)]),
        "step": np.concatenate([np.arange(n) for n in n_steps]),
        "end_s": np.concatenate([ends[r] for r in range(n_rep)]),
    })
    reqs = []
    for _ in range(draw(st.integers(0, 8))):
        r = draw(st.integers(0, n_rep - 1))
        chosen = sorted(draw(st.sets(st.integers(0, n_steps[r] - 1), max_size=n_steps[r])))
        runs: list[list[int]] = []  # run-length encode the chosen steps
        for k in chosen:
            if runs and runs[-1][0] + runs[-1][1] == k:
                runs[-1][1] += 1
            else:
                runs.append([k, 1])
        reqs.append((r, runs, [ends[r][k] for k in chosen]))
    return steps.sample(frac=1.0, random_state=draw(st.integers(0, 99))), reqs


@settings(max_examples=200, deadline=None)
@given(runs_and_steps())
def test_itl_matches_per_token_walk(case):
    steps, reqs = case
    requests = pd.DataFrame({"id": [str(i) for i in range(len(reqs))], "replica": [r for r, _, _ in reqs],
                             "token_steps": [runs for _, runs, _ in reqs]})
    expected = [b - a for _, _, times in reqs for a, b in zip(times, times[1:])]
    got = itl_s(requests, steps)
    assert got.size == len(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert (got > 0).all()


@settings(max_examples=100, deadline=None)
@given(runs_and_steps(), st.data())
def test_summary_is_json_safe_for_any_run(case, data):
    steps, reqs = case
    n = len(reqs)
    status = data.draw(st.lists(st.sampled_from(["finished", "rejected", "unfinished"]), min_size=n, max_size=n))
    gen = [sum(c for _, c in runs) for _, runs, _ in reqs]
    first = [times[0] if times else NAN for _, _, times in reqs]
    last = [times[-1] if times else NAN for _, _, times in reqs]
    requests = pd.DataFrame({
        "id": [str(i) for i in range(n)], "replica": [r for r, _, _ in reqs], "status": status,
        "token_steps": [runs for _, runs, _ in reqs], "input_tokens": [7] * n, "generated_tokens": gen,
        "preemptions": [0] * n, "finished_s": last, "ttft_s": first, "e2e_s": last, "queue_s": [0.0] * n,
        "tpot_s": [(b - a) / (g - 1) if g > 1 else NAN for a, b, g in zip(first, last, gen)], "energy_j": [1.0] * n,
    })
    k = len(steps)
    steps = steps.assign(num_seqs=1, prefill_tokens=0, decode_tokens=1,
                         kv_blocks_total=data.draw(st.sampled_from([0, 8])),
                         kv_blocks_used=data.draw(st.lists(st.integers(0, 8), min_size=k, max_size=k)))
    energy = data.draw(st.sampled_from([NO_METER, MODELLED]))
    s = summarize(requests, steps, energy, slo=SLO(ttft_s=1.0, tpot_s=0.5))
    d = s.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert s.finished + s.rejected + s.unfinished == n
    assert 0 <= s.good_requests <= s.finished
    format_summary(s)


# --- scale ----------------------------------------------------------------------------------------------------


def test_itl_on_four_million_tokens_with_preemption_gaps():
    rng = np.random.default_rng(0)
    n_rep, n_steps, n_req, per = 4, 60_000, 20_000, 200  # 4M tokens; every 10th request preempted once
    steps = pd.DataFrame({"replica": np.repeat(np.arange(n_rep), n_steps), "step": np.tile(np.arange(n_steps), n_rep)})
    steps["end_s"] = 0.02 * (steps["step"] + 1) + 0.001 * steps["replica"]
    starts = rng.integers(0, 50_000, n_req)
    runs = [[[int(s), 50], [int(s) + 80, per - 50]] if k % 10 == 0 else [[int(s), per]] for k, s in enumerate(starts)]
    requests = pd.DataFrame({"id": np.arange(n_req).astype(str), "replica": rng.integers(0, n_rep, n_req),
                             "token_steps": runs})
    itl = itl_s(requests, steps)
    assert itl.size == n_req * (per - 1)
    assert math.isclose(itl.max(), 0.02 * 31) and math.isclose(itl.min(), 0.02)  # the preemption gap: 31 steps
