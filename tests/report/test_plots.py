"""replay.report.plots: every plot of a simulated run's report is a valid PNG; plots whose data a run lacks are
skipped with a note saying why (and leave no stale file); the modelled power curve keeps the energy it draws."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest

from conftest import TRACES
from replay.config import RunConfig
from replay.energy.timeline import EnergyTimeline
from replay.report.build import build_report
from replay.report.plots import MAX_POINTS, _step_power, plot_power, write_plots
from replay.report.rundir import RunData
from replay.run import execute

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> tuple[int, int]:
    """A valid PNG: signature, IHDR first with a positive size, IEND last, and matplotlib can decode it."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    import matplotlib.image
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert np.ptp(pixels) > 0            # not a blank image
    return width, height


def sim_run(root, name, duration_s=20.0, **kw):
    """A simulated run of the chat trace's first ``duration_s`` seconds, written to ``root / name``."""
    config = RunConfig(trace=str(TRACES / "chat.jsonl"), engine="sim", duration_s=duration_s, out=str(root / name),
                       **kw)
    return execute(config, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    return sim_run(root, "modelled"), sim_run(root, "unmeasured", meter="none")


def test_every_plot_of_a_modelled_run_is_a_valid_png(runs, tmp_path):
    report = build_report(runs[0].out)
    plots = write_plots(report, tmp_path)
    assert [p.name for p in plots] == ["power", "estimates", "bins", "latency"]
    for p in plots:
        assert p.path is not None and p.path.parent == tmp_path and p.path.name == f"{p.name}.png", p
        assert_png(p.path)
    assert all(p.to_dict()["file"] == f"{p.name}.png" for p in plots)


def test_a_run_without_energy_skips_what_needs_it_and_says_why(runs, tmp_path):
    write_plots(build_report(runs[0].out), tmp_path)            # an earlier report in the same place
    report = build_report(runs[1].out)
    plots = {p.name: p for p in write_plots(report, tmp_path)}
    for name in ("power", "estimates"):
        assert plots[name].path is None
        assert "not measured" in plots[name].note and "--meter none" in plots[name].note
        assert not (tmp_path / f"{name}.png").exists()         # no stale file from the earlier report
    # the bin grid shows what an estimator predicts, and says so
    assert plots["bins"].path is not None and "flops" in plots["bins"].note
    assert_png(plots["bins"].path)
    assert_png(plots["latency"].path)


def test_measured_power_per_device_from_the_timeline(runs, tmp_path):
    base = build_report(runs[0].out).run
    t = np.linspace(0.0, 20.0, 201)
    tl = EnergyTimeline(t, {"gpu0": 50.0 * t, "gpu1": 80.0 * t + np.sin(t)}, label="measured (nvml)")
    summary = {**base.summary, "energy_source": "measured (nvml)"}
    run = RunData(None, base.config, base.requests, base.steps, summary, {"summary": summary}, tl)
    plot = plot_power(run, tmp_path / "power.png")
    assert plot.path is not None and plot.note is None
    assert_png(plot.path)


def test_no_power_without_a_timeline_or_step_energy(runs, tmp_path):
    base = build_report(runs[0].out).run
    summary = {**base.summary, "energy_source": "measured (nvml)"}
    run = RunData(None, base.config, base.requests, base.steps.drop(columns="energy_j"), summary,
                  {"summary": summary}, None)
    plot = plot_power(run, tmp_path / "power.png")
    assert plot.path is None and "no power.csv and no step energies" in plot.note


def test_step_power_draws_each_step_and_the_idle_gaps():
    start, end = np.array([0.0, 1.0, 3.0]), np.array([1.0, 2.0, 4.0])   # back to back, then a 1 s gap
    t, w = _step_power(start, end, np.array([10.0, 20.0, 30.0]), idle_w=5.0)
    assert list(t) == [0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0]
    assert list(w) == [10.0, 10.0, 20.0, 20.0, 5.0, 5.0, 30.0, 30.0]
    # the area under the curve is the steps' energy plus idle power over the gap
    assert np.trapezoid(w, t) == pytest.approx(60.0 + 5.0)


def test_binned_step_power_keeps_the_energy():
    rng = np.random.default_rng(0)
    n = 3 * MAX_POINTS
    dur = rng.uniform(0.001, 0.02, n)
    gaps = np.where(rng.random(n) < 0.3, rng.uniform(0.0, 0.05, n), 0.0)
    start = np.cumsum(np.concatenate(([0.0], (dur + gaps)[:-1])))
    end = start + dur
    energy = dur * rng.uniform(100, 700, n)
    t, w = _step_power(start, end, energy, idle_w=70.0)
    assert len(t) == MAX_POINTS
    width = (end[-1] - start[0]) / MAX_POINTS
    assert (w * width).sum() == pytest.approx(energy.sum() + 70.0 * (end[-1] - start[0] - dur.sum()), rel=1e-9)
    t, w = _step_power(start, end, energy, idle_w=None)   # unknown idle: mean power while a step runs
    assert np.nanmin(w) >= 100 - 1e-9 and np.nanmax(w) <= 700 + 1e-9


def test_latency_plot_without_finished_requests(tmp_path):
    from replay.report.plots import plot_latency
    p = plot_latency(pd.DataFrame({"status": ["rejected"]}), tmp_path / "latency.png")
    assert p.path is None and p.note == "no finished requests"
