"""EnergyTimeline: windows by linear interpolation (numbers worked out by hand), validation errors that name the
device and sample, power per interval, merging devices sampled at different times, and the power.csv round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from replay.energy.timeline import EnergyTimeline


def two_gpus() -> EnergyTimeline:
    # gpu0 draws 100 W throughout; gpu1 50 W for 1 s, then nothing
    return EnergyTimeline([0.0, 1.0, 3.0], {"gpu0": [0.0, 100.0, 300.0], "gpu1": [0.0, 50.0, 50.0]}, "test")


def test_windows_interpolate_linearly():
    tl = two_gpus()
    assert tl.energy_j(0.5, 2.0, "gpu0") == pytest.approx(200.0 - 50.0)
    assert tl.energy_j(0.5, 2.0, "gpu1") == pytest.approx(50.0 - 25.0)
    assert tl.energy_j(0.5, 2.0) == pytest.approx(175.0)           # all devices summed
    assert tl.energy_j(0.5, 2.0, ["gpu0", "gpu1"]) == pytest.approx(175.0)
    assert tl.energy_j(1.2, 1.2) == 0.0
    assert tl.total_j() == pytest.approx(350.0)
    # outside the sampled span nothing is counted (held at the ends)
    assert tl.energy_j(-1.0, 0.0) == 0.0 and tl.energy_j(3.0, 9.0) == 0.0
    assert tl.energy_j(2.0, 9.0, "gpu0") == pytest.approx(100.0)


def test_window_energies_vectorised_match_single_windows():
    tl = two_gpus()
    starts, ends = np.array([0.0, 0.5, 1.0, 2.5]), np.array([1.0, 2.0, 3.0, 3.0])
    got = tl.window_energies_j(starts, ends)
    assert got == pytest.approx([150.0, 175.0, 200.0, 50.0])
    assert got == pytest.approx([tl.energy_j(s, e) for s, e in zip(starts, ends)])
    assert tl.window_energies_j(starts, ends, "gpu1") == pytest.approx([50.0, 25.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"window 1 \[2.0, 1.0\]"):
        tl.window_energies_j([0.0, 2.0], [1.0, 1.0])


def test_power_per_interval():
    tl = two_gpus()
    assert tl.power_w("gpu0") == pytest.approx([100.0, 100.0])
    assert tl.power_w("gpu1") == pytest.approx([50.0, 0.0])
    assert tl.power_w() == pytest.approx([150.0, 100.0])
    assert tl.mean_power_w("gpu0") == pytest.approx(100.0)


@pytest.mark.parametrize("times, cum, message", [
    ([0.0, 1.0, 1.0], {"gpu0": [0, 1, 2]}, r"times_s\[2\] = 1.0 is not after times_s\[1\] = 1.0"),
    ([0.0, 2.0, 1.0], {"gpu0": [0, 1, 2]}, r"times_s\[2\]"),
    ([0.0, 1.0, 2.0], {"gpu0": [0, 1, 2], "dram-0": [0, 5, 4]}, r"device 'dram-0', sample 2: cumulative energy "
                                                                 r"goes down from 5.0 to 4.0"),
    ([0.0, 1.0], {"gpu0": [0, 1, 2]}, r"device 'gpu0': 3 values for 2 sample times"),
    ([0.0, 1.0], {"gpu0": [0, float("nan")]}, r"device 'gpu0', sample 1: expected a finite"),
    ([], {"gpu0": []}, r"non-empty"),
    ([0.0], {}, r"no devices"),
])
def test_validation_names_device_and_index(times, cum, message):
    with pytest.raises(ValueError, match=message):
        EnergyTimeline(times, cum)


def test_unknown_device_named():
    with pytest.raises(ValueError, match=r"no device 'gpu7'; devices: gpu0, gpu1"):
        two_gpus().energy_j(0, 1, "gpu7")


def test_merge_puts_devices_on_one_axis():
    tl = EnergyTimeline.merge({"gpu0": ([0.0, 2.0], [0.0, 20.0]), "gpu1": ([1.0, 3.0], [0.0, 4.0])},
                              extra_times_s=[4.0])
    assert list(tl.times_s) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert list(tl.cumulative_j["gpu0"]) == [0.0, 10.0, 20.0, 20.0, 20.0]
    assert list(tl.cumulative_j["gpu1"]) == [0.0, 0.0, 2.0, 4.0, 4.0]


def test_csv_round_trip(tmp_path):
    tl = EnergyTimeline([0.0, 0.1, 0.30000000000000004], {"gpu0": [0.0, 12.5, 40 + 1 / 3],
                                                          "package-0": [0.0, 1.0, 2.0]}, "measured (test)")
    path = tl.to_csv(tmp_path / "power.csv")
    df = pd.read_csv(path)
    assert list(df.columns) == ["time_s", "gpu0_cumulative_j", "gpu0_w", "package-0_cumulative_j", "package-0_w"]
    assert np.isnan(df["gpu0_w"].iloc[0])                     # no interval before the first sample: empty, not 0
    assert df["gpu0_w"].iloc[1] == pytest.approx(125.0)
    assert df["package-0_w"].iloc[2] == pytest.approx(5.0)
    back = EnergyTimeline.from_csv(path)
    assert back.devices == ("gpu0", "package-0")
    assert np.array_equal(back.times_s, tl.times_s)           # exact: floats written with 17 digits
    for d in tl.devices:
        assert np.array_equal(back.cumulative_j[d], tl.cumulative_j[d])


def test_csv_errors_name_file_row_and_column(tmp_path):
    path = tmp_path / "power.csv"
    path.write_text("time_s,gpu0_cumulative_j,gpu0_w\n0,0,\n1,,5\n")
    with pytest.raises(ValueError, match=r"power.csv: row 3 \(line\), column 'gpu0_cumulative_j': empty"):
        EnergyTimeline.from_csv(path)
    path.write_text("time_s,gpu0_cumulative_j,gpu0_w\n0,5,\n1,4,5\n")
    with pytest.raises(ValueError, match=r"power.csv: energy timeline: device 'gpu0', sample 1"):
        EnergyTimeline.from_csv(path)
