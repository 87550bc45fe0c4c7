"""replay.report.breakdown on hand-made records: idle share, energy in and outside steps, prefill against decode
split by tokens, step energies from the records or from the power timeline, and a run without energy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from replay.energy.timeline import EnergyTimeline
from replay.report.breakdown import energy_breakdown
from replay.report.rundir import RunData


def steps(energy=None) -> pd.DataFrame:
    df = pd.DataFrame({"replica": [0, 0, 0], "step": [0, 1, 2], "start_s": [0.0, 1.0, 3.0], "end_s": [1.0, 2.0, 4.0],
                       "duration_s": [1.0, 1.0, 1.0], "prefill_tokens": [30, 0, 100], "decode_tokens": [10, 4, 0]})
    if energy is not None:
        df["energy_j"] = energy
    return df


def run(step_frame, summary, timeline=None, config=None) -> RunData:
    return RunData(None, config or {}, pd.DataFrame(), step_frame, summary, {"summary": summary}, timeline)


def test_split_by_tokens_idle_share_and_outside_steps():
    s = {"energy_source": "modelled (power model)", "energy_total_j": 20.0, "energy_idle_j": 4.0}
    b = energy_breakdown(run(steps([8.0, 4.0, 5.0]), s))
    assert b.kind == "modelled"
    assert b.idle_share == pytest.approx(0.2) and b.above_idle_j == pytest.approx(16.0)
    assert b.steps_j == pytest.approx(17.0) and b.outside_steps_j == pytest.approx(3.0)
    # step 0: 8 J over 30 prefill + 10 decode tokens -> 6 + 2; step 1 decode only; step 2 prefill only
    assert b.prefill_j == pytest.approx(6.0 + 5.0) and b.decode_j == pytest.approx(2.0 + 4.0)
    assert b.prefill_share == pytest.approx(11.0 / 17.0) and b.decode_share == pytest.approx(6.0 / 17.0)
    assert b.mixed_steps_j == pytest.approx(8.0)
    assert "tokens" in b.split


def test_step_energies_from_the_power_timeline_when_the_records_have_none():
    tl = EnergyTimeline([0.0, 5.0], {"gpu0": [0.0, 50.0]}, label="measured (nvml)")   # 10 W throughout
    s = {"energy_source": "measured (nvml)", "energy_total_j": 50.0, "energy_idle_j": None}
    b = energy_breakdown(run(steps([None, None, None]), s, tl, {"idle_s": 0}))
    assert b.kind == "measured"
    assert b.steps_j == pytest.approx(30.0) and b.outside_steps_j == pytest.approx(20.0)
    assert b.prefill_j == pytest.approx(7.5 + 10.0) and b.decode_j == pytest.approx(2.5 + 10.0)
    assert b.idle_j is None and b.idle_share is None
    assert any("idle power not measured (--idle-s 0)" in n for n in b.notes)


def test_no_step_energy_anywhere_is_said_not_zeroed():
    s = {"energy_source": "measured (nvml)", "energy_total_j": 50.0, "energy_idle_j": 5.0}
    b = energy_breakdown(run(steps(), s))
    assert b.prefill_j is None and b.decode_j is None and b.steps_j is None
    assert any("no prefill/decode split" in n and "power.csv" in n for n in b.notes)
    assert b.idle_share == pytest.approx(0.1)


def test_not_measured():
    s = {"energy_source": None, "energy_not_measured_reason": "--meter none", "energy_total_j": None}
    b = energy_breakdown(run(steps([1.0, 1.0, 1.0]), s))
    assert b.kind is None and b.reason == "--meter none"
    assert all(getattr(b, f) is None for f in ("total_j", "idle_j", "prefill_j", "decode_j", "steps_j"))
    assert b.to_dict()["energy"] == "not measured"


def test_steps_without_tokens_count_in_neither_phase():
    frame = steps([8.0, 4.0, 5.0])
    frame.loc[1, "decode_tokens"] = 0
    s = {"energy_source": "modelled", "energy_total_j": 20.0, "energy_idle_j": 4.0}
    b = energy_breakdown(run(frame, s))
    assert b.prefill_j + b.decode_j == pytest.approx(13.0)
    assert any("processed no tokens" in n for n in b.notes)
    assert np.isclose(b.steps_j, 17.0)
