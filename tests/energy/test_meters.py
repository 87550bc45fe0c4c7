"""Meters against faked hardware: this machine has no NVIDIA GPU and no RAPL, so NVML is replaced by a fake
module with pynvml's function names and scripted readings (energy_fakes.FakeNvml), and powercap sysfs by a tree
under tmp_path. Samples are taken by hand (``meter.sample()``) with a scripted clock and a sampling period so
long that the background thread never fires, so every number is worked out by hand; one test runs the thread
for real with a 2 ms period and checks only relations that hold however many samples it took."""

from __future__ import annotations

import inspect
import time

import numpy as np
import pandas as pd
import pytest

from energy_fakes import FakeNvml, NVMLError_LibraryNotFound, ScriptedClock, fake_rapl, set_energy
from replay.energy import meters as meters_module
from replay.energy.meters import (METERS, MODEL_LABEL, NVML_COUNTER_LABEL, NVML_POWER_LABEL, ModelMeter, NoMeter,
                                  NvmlMeter, RaplMeter, choose_meter, default_meters, gpus_in_use, measure_idle,
                                  model_timeline)

LONG = 60.0  # a period the background thread never reaches in these tests: stop() wakes it at once


def nvml_run(fake, times, manual, **kw):
    """start (a sample), ``manual`` samples by hand, stop (a last sample), on a scripted clock."""
    meter = NvmlMeter(period_s=LONG, nvml=fake, clock=ScriptedClock(times), **kw)
    meter.start()
    for _ in range(manual):
        meter.sample()
    return meter, meter.stop()


# --- nvml -----------------------------------------------------------------------------------------------------


def test_nvml_counter_increments():
    # one probe read at start, then samples at t = 0, 0.1, 0.2, 0.3 reading 1000, 1500, 1500, 2700 mJ
    fake = FakeNvml(energy={0: [1000, 1000, 1500, 1500, 2700]})
    meter, tl = nvml_run(fake, [0.0, 0.1, 0.2, 0.3], 2)
    assert tl.label == meter.label == NVML_COUNTER_LABEL
    assert tl.devices == ("gpu0",)
    # the unchanged reading at 0.2 is not a sample (the counter had not updated): axis 0, 0.1, 0.3
    assert list(tl.times_s) == [0.0, 0.1, 0.3]
    assert tl.cumulative_j["gpu0"] == pytest.approx([0.0, 0.5, 1.7])
    # C(0.05) = 0.25, C(0.25) = 0.5 + 1.2 * 0.15 / 0.2 = 1.4
    assert tl.energy_j(0.05, 0.25) == pytest.approx(1.15)
    assert tl.total_j() == pytest.approx(1.7)
    assert fake.inits == fake.shutdowns == 1
    assert tl.notes == ()


def test_nvml_counter_keeping_every_sample():
    fake = FakeNvml(energy={0: [1000, 1000, 1500, 1500, 2700]})
    _, tl = nvml_run(fake, [0.0, 0.1, 0.2, 0.3], 2, drop_unchanged=False)
    assert tl.cumulative_j["gpu0"] == pytest.approx([0.0, 0.5, 0.5, 1.7])
    assert tl.energy_j(0.05, 0.25) == pytest.approx(1.1 - 0.25)


def test_nvml_missing_counter_integrates_power():
    # no total-energy counter: 200 W at t=0, 300 W at 0.1 and at 0.3 -> (200+300)/2*0.1 + 300*0.2 = 25 + 60 J
    fake = FakeNvml(energy={0: None}, power={0: [200_000, 300_000, 300_000]})
    meter, tl = nvml_run(fake, [0.0, 0.1, 0.3], 1)
    assert tl.label == NVML_POWER_LABEL == "measured (nvml power samples, integrated)"
    assert tl.cumulative_j["gpu0"] == pytest.approx([0.0, 25.0, 85.0])
    assert any("trapezoid" in n for n in tl.notes)


def test_nvml_mixed_gpus_say_which_source_each():
    fake = FakeNvml(energy={0: [0, 0, 4000, 9000], 1: None}, power={1: [100_000, 100_000, 100_000]})
    meter, tl = nvml_run(fake, [0.0, 1.0, 2.0], 1, gpus=[0, 1])
    assert tl.devices == ("gpu0", "gpu1")
    assert tl.total_j("gpu0") == pytest.approx(9.0)
    assert tl.total_j("gpu1") == pytest.approx(200.0)
    assert tl.label == "measured (nvml: gpu0 total-energy counter, gpu1 power samples, integrated)"


def test_only_the_gpus_in_use_are_measured(monkeypatch):
    """CUDA_VISIBLE_DEVICES (indices or UUIDs) picks the GPUs a real engine of tp GPUs runs on: a Ray task on
    a shared node measures its own, not its neighbours'."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus_in_use(2) == [0, 1]                                # unset: the first tp GPUs
    assert gpus_in_use(1, visible="3,1") == [3] and gpus_in_use(2, visible=" 3, 1 ") == [3, 1]
    assert gpus_in_use(1, visible="GPU-fake-2,GPU-fake-0") == ["GPU-fake-2"]
    assert gpus_in_use(2, visible="0") == [0]                     # vLLM itself then refuses tp 2
    assert gpus_in_use(2, visible="1,-1,0") == [1]                 # as CUDA: the list ends at an invalid entry
    assert gpus_in_use(1, visible="") == gpus_in_use(1, visible="-1") == []
    ok, why = NvmlMeter([], nvml=FakeNvml(energy={0: [0]})).available()
    assert not ok and "hides every GPU" in why
    fake = FakeNvml(energy={0: [0, 0, 1000], 1: [0, 0, 1000], 2: [0, 0, 7000]})
    meter, tl = nvml_run(fake, [0.0, 1.0], 1, gpus=gpus_in_use(1, visible="GPU-fake-2"))
    assert tl.devices == ("gpu2",) and tl.total_j("gpu2") == pytest.approx(7.0)


def test_nvml_counter_reset_continues_from_last_value():
    # 5000 -> 6000 mJ, then the counter restarts (driver reload) and reads 200, then 1200
    fake = FakeNvml(energy={0: [5000, 5000, 6000, 200, 1200]})
    meter, tl = nvml_run(fake, [0.0, 1.0, 2.0, 3.0], 2)
    assert tl.cumulative_j["gpu0"] == pytest.approx([0.0, 1.0, 1.2, 2.2])
    assert meter.resets == {"gpu0": 1}
    assert any("went backwards 1 time(s)" in n for n in tl.notes)


def test_short_windows_between_counter_updates():
    """The counter updates every 0.1 s but is sampled every 0.02 s. Keeping only the samples where it changed,
    a 10 ms window inside an update period gets that period's mean power (0.1 J / 0.1 s) times 10 ms, not 0.
    Limitation (documented in replay.energy.timeline): keeping every sample, the same window reads 0 and the
    update's energy lands in the 20 ms before the sample that saw it."""
    times = [round(0.02 * i, 10) for i in range(11)]                       # 0, 0.02, ..., 0.2
    readings = [1000] * 5 + [1100] * 5 + [1200]                             # updates seen at 0.1 and 0.2
    _, tl = nvml_run(FakeNvml(energy={0: [1000] + readings}), times, 9)
    assert list(tl.times_s) == [0.0, 0.1, 0.2]
    assert tl.energy_j(0.02, 0.03) == pytest.approx(0.01)
    assert tl.energy_j(0.0, 0.2) == pytest.approx(0.2)
    _, flat = nvml_run(FakeNvml(energy={0: [1000] + readings}), times, 9, drop_unchanged=False)
    assert flat.energy_j(0.02, 0.03) == 0.0                                 # the limitation
    assert flat.energy_j(0.08, 0.1) == pytest.approx(0.1)


def test_nvml_failed_reads_are_skipped_and_reported():
    class Flaky(FakeNvml):
        def nvmlDeviceGetTotalEnergyConsumption(self, handle):
            n = self.reads.get(("energy", 0), 0)
            if n == 2:
                self.reads[("energy", 0)] = n + 1
                raise self.NVMLError("GPU is lost")
            return super().nvmlDeviceGetTotalEnergyConsumption(handle)

    fake = Flaky(energy={0: [0, 0, 0, 3000, 5000]})   # read 2 (the manual sample at t=1) fails
    _, tl = nvml_run(fake, [0.0, 1.0, 2.0, 3.0], 2)
    assert tl.total_j() == pytest.approx(5.0)
    assert any("1 sample(s) failed" in n for n in tl.notes)


def test_nvml_availability_reasons():
    ok, why = NvmlMeter(nvml=FakeNvml(energy={0: [0]}, count=2)).available()
    assert ok and "2 GPU(s)" in why
    ok, why = NvmlMeter(gpus=[3], nvml=FakeNvml(energy={0: [0]}, count=2)).available()
    assert not ok and "GPU index 3 not present: NVML sees 2 GPU(s)" in why
    fake = FakeNvml(init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    ok, why = NvmlMeter(nvml=fake).available()
    assert not ok and "NVML Shared Library Not Found" in why


def test_nvml_never_changes_gpu_settings():
    source = inspect.getsource(meters_module)
    assert "nvmlDeviceSet" not in source and "nvmlSet" not in source


def test_nvml_background_thread_samples():
    """A real thread at a 2 ms period for about 20 ms: however many samples it took, the total is the last
    reading minus the first (the fake counter rises 10 mJ per read), and the samples are in time order."""
    values = []

    def counter(_index):
        values.append(len(values) * 10)
        return values[-1]

    fake = FakeNvml(energy={0: [0]}, energy_of=counter)
    meter = NvmlMeter(period_s=0.002, nvml=fake)
    meter.start()
    time.sleep(0.02)
    tl = meter.stop()
    assert tl.total_j() == pytest.approx((values[-1] - values[1]) / 1000)  # values[0]: the probe at start
    assert (np.diff(tl.times_s) > 0).all()
    assert fake.shutdowns == 1


def test_nvml_period_validated():
    with pytest.raises(ValueError, match="period_s"):
        NvmlMeter(period_s=0, nvml=FakeNvml())


# --- rapl -----------------------------------------------------------------------------------------------------

ZONES = {"intel-rapl:0": ("package-0", 900_000, 1_000_000), "intel-rapl:0:0": ("core", 7, 1_000_000),
         "intel-rapl:0:1": ("dram", 100_000, 1_000_000)}


@pytest.mark.parametrize("nested", [False, True])
def test_rapl_wraps_around(tmp_path, nested):
    root = fake_rapl(tmp_path / "powercap", ZONES, nested=nested)
    meter = RaplMeter(root, period_s=LONG, clock=ScriptedClock([0.0, 1.0, 2.0]))
    assert meter.available()[0]
    meter.start()
    set_energy(root, "intel-rapl:0", 950_000)
    set_energy(root, "intel-rapl:0:1", 300_000, nested)
    meter.sample()
    set_energy(root, "intel-rapl:0", 50_000)            # wrapped at 1_000_000 uJ: +100_000 uJ
    set_energy(root, "intel-rapl:0:1", 400_000, nested)
    tl = meter.stop()
    assert tl.label == "measured (rapl)"
    assert sorted(tl.devices) == ["dram-0", "package-0"]  # core lies inside package: not counted twice
    assert tl.cumulative_j["package-0"] == pytest.approx([0.0, 0.05, 0.15])
    assert tl.cumulative_j["dram-0"] == pytest.approx([0.0, 0.2, 0.3])
    assert any("package-0: counter wrapped 1 time(s)" in n for n in tl.notes)


def test_rapl_unavailable_says_why(tmp_path):
    ok, why = RaplMeter(tmp_path / "nope").available()
    assert not ok and "does not exist" in why and "RAPL" in why
    fake_rapl(tmp_path / "empty", {"intel-rapl:0:0": ("core", 1, 10)})
    ok, why = RaplMeter(tmp_path / "empty").available()
    assert not ok and "no RAPL zone named package or dram" in why


# --- model ----------------------------------------------------------------------------------------------------


def steps_frame(rows):
    return pd.DataFrame(rows, columns=["replica", "step", "start_s", "end_s", "energy_j"])


def test_model_timeline_steps_and_idle():
    steps = steps_frame([(0, 0, 1.0, 2.0, 10.0), (0, 1, 2.0, 3.0, 20.0), (0, 2, 5.0, 6.0, 5.0)])
    tl = model_timeline(steps, idle_w=2.0, end_s=8.0)
    assert tl.label == MODEL_LABEL and tl.label.startswith("modelled")
    assert list(tl.times_s) == [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 8.0]
    assert tl.cumulative_j["replica0"] == pytest.approx([0.0, 2.0, 12.0, 32.0, 36.0, 41.0, 45.0])
    # the runner's figure: step energy 35 J + 2 W x (8 s - 3 s busy)
    assert tl.total_j() == pytest.approx(35.0 + 2.0 * 5.0)
    assert tl.energy_j(1.5, 2.5) == pytest.approx(15.0)
    meter = ModelMeter(steps=lambda: steps, idle_w=[2.0], end_s=8.0)
    assert meter.available()[0]
    meter.start()
    assert meter.stop().total_j() == pytest.approx(45.0)


def test_model_timeline_two_replicas_and_errors():
    steps = steps_frame([(0, 0, 0.0, 1.0, 4.0), (1, 0, 0.5, 2.0, 9.0)])
    tl = model_timeline(steps, idle_w=[1.0, 3.0])
    assert tl.devices == ("replica0", "replica1")
    assert tl.total_j("replica0") == pytest.approx(4.0 + 1.0)     # idle from 1 to 2
    assert tl.total_j("replica1") == pytest.approx(1.5 + 9.0)     # idle from 0 to 0.5
    with pytest.raises(ValueError, match=r"replica 0 step 0: energy_j is missing"):
        model_timeline(steps_frame([(0, 0, 0.0, 1.0, float("nan"))]), 1.0)
    with pytest.raises(ValueError, match=r"at the single instant 1.0 s"):
        model_timeline(steps_frame([(0, 0, 1.0, 1.0, 3.0)]), 1.0)
    with pytest.raises(ValueError, match=r"replica 0 step 1 \[0.5, 2.0\] overlaps"):
        model_timeline(steps_frame([(0, 0, 0.0, 1.0, 1.0), (0, 1, 0.5, 2.0, 1.0)]), 1.0)


# --- none, auto, idle -------------------------------------------------------------------------------------------


def test_none_gives_none_never_zero():
    meter = NoMeter()
    ok, why = meter.available()
    assert ok and why.startswith("not measured")
    assert meter.label == "not measured"
    meter.start()
    assert meter.stop() is None
    assert measure_idle(NoMeter(), 0.5, sleep=lambda s: None) is None
    assert set(METERS) == {"nvml", "rapl", "model", "none"}


def test_auto_picks_nvml_for_a_real_engine(tmp_path):
    rapl_root = fake_rapl(tmp_path / "powercap", ZONES)
    choice = choose_meter("vllm", default_meters(nvml=FakeNvml(energy={0: [0]}), rapl_root=rapl_root))
    assert choice.name == "nvml" and "1 GPU(s)" in choice.reason
    assert choice.skipped == {"model": "the power model belongs to the simulated engine; a real engine is measured",
                              "rapl": "nvml was available and is preferred", "none": "nvml was available"}
    assert choice.to_dict()["not_used"]["rapl"] == "nvml was available and is preferred"


def test_auto_falls_back_to_rapl_then_none(tmp_path):
    no_gpu = FakeNvml(init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    rapl_root = fake_rapl(tmp_path / "powercap", ZONES)
    choice = choose_meter("vllm", default_meters(nvml=no_gpu, rapl_root=rapl_root))
    assert choice.name == "rapl"
    assert "NVML Shared Library Not Found" in choice.skipped["nvml"]
    choice = choose_meter("vllm", default_meters(nvml=no_gpu, rapl_root=tmp_path / "absent"))
    assert choice.name == "none" and choice.meter.stop() is None
    assert choice.reason.startswith("not measured: no meter is available")
    assert "nvml: NVML could not start" in choice.reason and "rapl: " in choice.reason
    assert "does not exist" in choice.skipped["rapl"]


def test_auto_picks_the_model_for_the_simulated_engine():
    choice = choose_meter("sim", default_meters(nvml=FakeNvml(energy={0: [0]})))
    assert choice.name == "model" and choice.meter.label.startswith("modelled")
    assert "simulated engine" in choice.skipped["nvml"] and "simulated engine" in choice.skipped["rapl"]
    with pytest.raises(ValueError, match="engine 'gpu'"):
        choose_meter("gpu")


def test_measure_idle_over_whole_update_periods():
    # samples at 0, 0.05, 0.15, 0.25, 0.3 reading 0, 10, 25, 40, 40 J: the counter rose at 0.05 and last at 0.25,
    # so 30 J over 0.2 s = 150 W (over the whole span it would read 40 / 0.3 = 133 W: a partial update period)
    fake = FakeNvml(energy={0: [0, 0, 10_000, 25_000, 40_000, 40_000]})
    meter = NvmlMeter(period_s=LONG, nvml=fake, clock=ScriptedClock([0.0, 0.05, 0.15, 0.25, 0.3]))
    idle = measure_idle(meter, 3.0, sleep=lambda s: [meter.sample() for _ in range(3)])
    assert idle.watts == {"gpu0": pytest.approx(150.0)}
    assert idle.total_w == pytest.approx(150.0) and idle.seconds == pytest.approx(0.3)
    assert idle.energy_j(10.0) == pytest.approx(1500.0)
    # one update only: the whole span (300 J over 2 s)
    fake = FakeNvml(energy={0: [0, 0, 300_000]})
    meter = NvmlMeter(period_s=LONG, nvml=fake, clock=ScriptedClock([0.0, 2.0]))
    assert measure_idle(meter, 2.0, sleep=lambda s: None).watts["gpu0"] == pytest.approx(150.0)
    with pytest.raises(ValueError, match="seconds"):
        measure_idle(meter, 0)
