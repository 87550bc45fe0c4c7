"""replay.report.compare on hand-made request frames and estimates: the [Na25] Table 4 gap (sign, value, text),
MAPE, which requests are compared, the per-bin rows, the whole-run gap, and a run without energy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from replay.estimate.estimators import Estimate
from replay.report.compare import compare, gap, gap_text, mape


def est(name: str, values, total_j=None, reason=None) -> Estimate:
    per = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(per)
    total = float(per[ok].sum()) if total_j is None and ok.any() else total_j
    return Estimate(name, f"{name} label", per, total, reason, {"k": 1})


def frame(rows) -> pd.DataFrame:
    cols = ("id", "status", "input_tokens", "output_tokens", "generated_tokens", "energy_j")
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


# --- gap and MAPE ------------------------------------------------------------------------------------------------


def test_gap_is_measured_over_estimate_minus_one_as_na25_table_4():
    assert gap(164.0, 100.0) == pytest.approx(0.64)
    assert gap_text(gap(164.0, 100.0)) == "+64%"
    assert gap(50.0, 100.0) == pytest.approx(-0.5)
    assert gap_text(gap(50.0, 100.0)) == "-50%"
    assert gap_text(gap(104.5, 100.0)) == "+4.5%"       # small gaps keep a decimal
    assert gap_text(gap(6000.0, 100.0)) == "+5,900%"
    assert gap(100.0, 0.0) is None and gap(None, 1.0) is None and gap(1.0, None) is None
    assert gap(1.0, -2.0) is None                         # a negative estimate has no meaningful ratio
    assert gap_text(None) == "-"


def test_mape_is_mean_absolute_error_over_the_measured_value():
    m, med, n = mape(np.array([12.0, 10.0, 30.0]), np.array([10.0, 20.0, 20.0]))
    assert n == 3
    assert m == pytest.approx((0.2 + 0.5 + 0.5) / 3)
    assert med == pytest.approx(0.5)


def test_mape_leaves_out_zero_measured_and_missing_estimates():
    m, med, n = mape(np.array([5.0, np.nan, 3.0]), np.array([0.0, 10.0, 6.0]))
    assert n == 1 and m == pytest.approx(0.5) and med == pytest.approx(0.5)
    assert mape(np.array([np.nan]), np.array([1.0])) == (None, None, 0)


# --- compare -----------------------------------------------------------------------------------------------------

ROWS = [  # id, status, input, output, generated, energy_j
    ("a", "finished", 30, 8, 8, 10.0),        # bin (32, 8)
    ("b", "finished", 32, 8, 8, 20.0),        # bin (32, 8): an edge falls in its own bin
    ("c", "finished", 33, 9, 9, 40.0),        # bin (128, 16): one more token, the next bin
    ("d", "finished", 9000, 5, 5, 30.0),      # above the largest input bin: compared, not binned
    ("e", "rejected", 100, 10, 0, None),
    ("f", "unfinished", 100, 10, 3, 7.0),
    ("g", "finished", 50, 10, 10, None),      # finished without energy: not compared
]


def test_compare_totals_gap_and_mape_over_the_compared_requests():
    requests = frame(ROWS)
    flops = est("flops", [5.0, 10.0, 20.0, 10.0, np.nan, np.nan, 1.0])
    c = compare(requests, {"flops": flops}, "measured", run_total_j=120.0)
    assert list(c.requests["id"]) == ["a", "b", "c", "d"]
    assert c.left_out == {"rejected": 1, "unfinished": 1, "finished without measured energy": 1}
    t = c.total("flops")
    assert t.n == 4
    assert t.recorded_j == pytest.approx(100.0)
    assert t.estimated_j == pytest.approx(45.0)
    assert t.gap == pytest.approx(100.0 / 45.0 - 1)
    assert t.mape == pytest.approx(np.mean([0.5, 0.5, 0.5, 2 / 3]))
    # whole run: the run's energy against every request the estimator estimated (g included: 46 J)
    assert t.run_estimate_j == pytest.approx(46.0)
    assert t.run_gap == pytest.approx(120.0 / 46.0 - 1)
    assert c.recorded_total_j == pytest.approx(100.0)


def test_an_estimate_above_the_measurement_gives_a_negative_gap():
    requests = frame(ROWS[:2])
    c = compare(requests, {"x": est("x", [20.0, 40.0])}, "measured")
    assert c.total("x").gap == pytest.approx(30.0 / 60.0 - 1) and gap_text(c.total("x").gap) == "-50%"


def test_an_estimator_that_leaves_some_requests_out_is_compared_over_the_rest():
    requests = frame(ROWS[:3])
    c = compare(requests, {"x": est("x", [5.0, np.nan, 20.0], reason="1 of 3 requests not estimated")}, "measured")
    t = c.total("x")
    assert t.n == 2 and t.recorded_j == pytest.approx(50.0) and t.estimated_j == pytest.approx(25.0)
    assert t.gap == pytest.approx(1.0) and t.reason == "1 of 3 requests not estimated"
    # no whole-run gap against an estimate of part of the run
    c = compare(requests, {"x": est("x", [5.0, np.nan, 20.0])}, "measured", run_total_j=100.0)
    assert c.total("x").run_estimate_j == pytest.approx(25.0) and c.total("x").run_gap is None


def test_an_estimator_that_cannot_estimate_has_no_numbers_and_says_why():
    requests = frame(ROWS[:3])
    c = compare(requests, {"s": est("s", [np.nan] * 3, reason="no preset")}, "measured")
    t = c.total("s")
    assert t.n == 0 and t.estimated_j is None and t.gap is None and t.mape is None
    assert t.reason == "no preset"
    assert t.to_dict()["estimated_j"] is None       # never a 0


def test_bins_follow_na25_nearest_edge_at_or_above():
    requests = frame(ROWS)
    c = compare(requests, {"x": est("x", [5.0, 10.0, 20.0, 10.0, np.nan, np.nan, 1.0])}, "measured")
    assert list(c.requests["input_bin"]) == [32, 32, 128, None]
    assert list(c.requests["output_bin"]) == [8, 8, 16, 8]
    assert c.above_bins == {"input": 1, "output": 0, "both": 0}
    rows = {(b.input_bin, b.output_bin): b for b in c.bins}
    assert set(rows) == {(32, 8), (128, 16)}
    first = rows[(32, 8)]
    assert first.requests == 2 and first.output_tokens == 16 and first.recorded_j == pytest.approx(30.0)
    assert first.recorded_j_per_token == pytest.approx(30.0 / 16)
    n, rec, e, g = first.estimates["x"]
    assert (n, rec, e) == (2, pytest.approx(30.0), pytest.approx(15.0)) and g == pytest.approx(1.0)
    assert first.estimated_j_per_token("x") == pytest.approx(15.0 / 16)
    assert rows[(128, 16)].estimates["x"][3] == pytest.approx(1.0)


def test_other_bin_edges():
    requests = frame(ROWS[:3])
    c = compare(requests, {"x": est("x", [1.0, 1.0, 1.0])}, "measured", input_bins=(64,), output_bins=(8, 16))
    assert [(b.input_bin, b.output_bin, b.requests) for b in c.bins] == [(64, 8, 2), (64, 16, 1)]


def test_not_measured_shows_the_estimates_and_no_measured_value():
    requests = frame([(r[0], r[1], r[2], r[3], r[4], None) for r in ROWS])
    c = compare(requests, {"x": est("x", [5.0, 10.0, 20.0, 10.0, np.nan, np.nan, 1.0])}, None,
                reason="--meter none", run_total_j=None)
    assert c.label == "not measured" and c.reason == "--meter none"
    assert len(c.requests) == 5                       # every finished request, with or without energy
    assert c.requests["recorded_j"].isna().all()
    t = c.total("x")
    assert t.estimated_j == pytest.approx(46.0) and t.recorded_j is None and t.gap is None and t.mape is None
    assert c.recorded_total_j is None and c.run_total_j is None
    assert all(b.recorded_j is None for b in c.bins)
    doc = c.to_dict()
    assert doc["energy"] == "not measured" and doc["recorded_total_j"] is None
    assert all(r["recorded_j"] is None for r in doc["per_request"])


def test_a_recorded_energy_in_a_run_without_energy_is_ignored_not_shown():
    """kind None: whatever energy_j holds is not presented as a measurement."""
    c = compare(frame(ROWS[:2]), {"x": est("x", [1.0, 1.0])}, None, reason="no meter")
    assert c.requests["recorded_j"].isna().all()


def test_modelled_energy_is_labelled_modelled():
    c = compare(frame(ROWS[:2]), {"x": est("x", [1.0, 1.0])}, "modelled")
    assert c.label == "modelled" and c.to_dict()["energy"] == "modelled"
    assert c.left_out == {}


def test_to_dict_is_json_ready():
    import json
    c = compare(frame(ROWS), {"x": est("x", [5.0, 10.0, np.nan, 10.0, np.nan, np.nan, 1.0])}, "measured",
                run_total_j=100.0)
    text = json.dumps(c.to_dict(), allow_nan=False)
    doc = json.loads(text)
    assert doc["totals"][0]["gap_text"] == gap_text(c.total("x").gap)
    assert doc["per_request"][2]["x"] is None


@pytest.mark.parametrize("kwargs, needle", [
    ({"kind": "measured?"}, "kind 'measured?'"),
    ({"kind": None}, "needs the reason"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("?", r"\?")):
        compare(frame(ROWS[:1]), {}, **kwargs)


def test_estimates_of_another_frame_are_an_error():
    with pytest.raises(ValueError, match="estimator 'x' has 2 per-request values for 1 requests"):
        compare(frame(ROWS[:1]), {"x": est("x", [1.0, 2.0])}, "measured")


def test_bad_records_are_errors_naming_the_request_and_field():
    bad = frame([("z", "finished", 10, 5, 5, -1.0)])
    with pytest.raises(ValueError, match=r"request 'z': field 'energy_j'"):
        compare(bad, {}, "measured")
    odd = frame([("z", "done", 10, 5, 5, 1.0)])
    with pytest.raises(ValueError, match=r"field 'status' is 'done'"):
        compare(odd, {}, "measured")


def test_no_requests():
    c = compare(frame([]).reindex(columns=["id", "status", "input_tokens", "output_tokens", "generated_tokens",
                                           "energy_j"]), {"x": est("x", [])}, "measured", run_total_j=1.0)
    assert len(c.requests) == 0 and c.bins == () and c.total("x").estimated_j is None
    assert c.recorded_total_j is None and not math.isnan(c.run_total_j)
