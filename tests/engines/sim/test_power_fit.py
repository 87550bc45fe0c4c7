"""The power fit: recovering known power parameters from steps and a meter's timeline, held-out errors, the cap,
and the YAML round trip.

The "measured" runs here are simulated runs whose power model has known parameters: their steps (real scheduler
output with start, end, shape and the power model's energy) are turned into the cumulative-joules timeline a meter
would have sampled every 0.1 s. The fit sees only what a measured run gives (steps without energy, the timeline,
the idle power) and must find the parameters again.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TRACES
from replay import specs
from replay.config import RunConfig
from replay.energy.timeline import EnergyTimeline
from replay.engines.sim.perf import PerfModel
from replay.engines.sim.power import PowerParams
from replay.engines.sim.power_fit import MeasuredRun, fit_power, load_power, save_power
from replay.run import execute

H200, LLAMA8 = specs.hardware("h200"), specs.model("llama-3.1-8b")
TRUE = PowerParams(idle_w=110.0, max_w=700.0, compute_weight=2.2, memory_weight=0.9, busy_w=35.0)


def sampled(steps, idle_w: float, period_s: float = 0.1) -> EnergyTimeline:
    """What a meter sampling every ``period_s`` reads: idle power, plus each step's energy above idle spread evenly
    over the step."""
    s, e = steps["start_s"].to_numpy(), steps["end_s"].to_numpy()
    above = steps["energy_j"].to_numpy() - idle_w * (e - s)
    t = np.arange(0.0, e.max() + period_s, period_s)
    frac = np.clip((t[:, None] - s[None, :]) / (e - s)[None, :], 0.0, 1.0)
    return EnergyTimeline(t, {"gpu0": idle_w * t + frac @ above})


def simulated_run(tmp_path, name: str, **kw) -> MeasuredRun:
    power = tmp_path / "true-power.yaml"
    save_power(power, TRUE)
    result = execute(RunConfig(engine="sim", model="llama-3.1-8b", gpu="h200", power=str(power), perf="none",
                               out=str(tmp_path / name), **kw), progress=False)
    steps = result.steps
    timeline = sampled(steps, TRUE.idle_w)
    return MeasuredRun(name, steps.drop(columns="energy_j"), timeline, TRUE.idle_w)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("power-fit")
    chat = simulated_run(tmp, "chat", trace=str(TRACES / "chat.jsonl"), mode="online", duration_s=60.0)
    code = simulated_run(tmp, "code", trace=str(TRACES / "code.jsonl"), mode="offline", limit=150)
    return {"chat": chat, "code": code}


def test_fit_finds_the_parameters_that_made_the_energy(runs):
    fit = fit_power([runs["chat"], runs["code"]], PerfModel(LLAMA8, H200))
    p = fit.params
    assert p.idle_w == pytest.approx(TRUE.idle_w) and p.max_w == H200.tdp_w
    assert p.compute_weight == pytest.approx(TRUE.compute_weight, rel=0.03)
    assert p.memory_weight == pytest.approx(TRUE.memory_weight, rel=0.03)
    assert p.busy_w == pytest.approx(TRUE.busy_w, rel=0.1)
    for e in fit.in_sample:
        assert abs(e.energy_error_pct) < 0.5 and e.window_mape < 1.0
        assert e.measured_j == pytest.approx(runs[e.run].timeline.total_j(), rel=1e-6)
    # held out: each run predicted by a fit on the other; decode-only chat cannot pin the compute weight for
    # code's prefills, so held out is worse, but it is computed from the other run alone
    assert fit.held_out_how.startswith("each run") and [e.run for e in fit.held_out] == ["chat", "code"]
    assert any(h.energy_error_pct != i.energy_error_pct for h, i in zip(fit.held_out, fit.in_sample))


def test_one_run_holds_out_every_fifth_window_and_idle_is_fitted_when_not_measured(runs):
    chat = runs["chat"]
    fit = fit_power([MeasuredRun("chat", chat.steps, chat.timeline, None)], PerfModel(LLAMA8, H200))
    assert "fifth window" in fit.held_out_how and len(fit.held_out) == 1
    assert fit.held_out[0].windows == len([i for i in range(fit.windows) if i % 5 == 4])
    assert "fitted" in fit.idle_source
    assert fit.params.idle_w == pytest.approx(TRUE.idle_w, rel=0.05)
    assert abs(fit.held_out[0].energy_error_pct) < 2.0


def test_steps_above_the_cap_are_held_at_the_cap(tmp_path):
    """A GPU capped at 400 W: the prefills of the code run sit at the cap; fitted with that cap, the model puts
    them there and reproduces the run; a fit that ignored the cap (700 W) would not."""
    capped = PowerParams(**{**TRUE.to_dict(), "max_w": 400.0})
    power = tmp_path / "capped.yaml"
    save_power(power, capped)
    result = execute(RunConfig(engine="sim", model="llama-3.1-8b", gpu="h200", power=str(power), perf="none",
                               trace=str(TRACES / "code.jsonl"), mode="offline", limit=150, out=str(tmp_path / "r")),
                     progress=False)
    run = MeasuredRun("code", result.steps.drop(columns="energy_j"), sampled(result.steps, TRUE.idle_w),
                      TRUE.idle_w)
    fit = fit_power([run], PerfModel(LLAMA8, H200), max_w=400.0)
    assert fit.params.max_w == 400.0 and fit.capped_steps > 0
    assert abs(fit.in_sample[0].energy_error_pct) < 0.5 and fit.in_sample[0].window_mape < 1.0
    uncapped = fit_power([run], PerfModel(LLAMA8, H200))
    assert uncapped.capped_steps == 0 and uncapped.in_sample[0].window_mape > fit.in_sample[0].window_mape


def test_saved_parameters_load_back_and_bad_files_name_the_key(runs, tmp_path):
    fit = fit_power([runs["chat"], runs["code"]], PerfModel(LLAMA8, H200))
    path = save_power(tmp_path / "power.yaml", fit, {"model": "llama-3.1-8b", "gpu": "h200"})
    assert load_power(path) == fit.params
    bad = tmp_path / "bad.yaml"
    bad.write_text("perf_params: {}\n")
    with pytest.raises(ValueError, match="bad.yaml: missing key 'power_params'"):
        load_power(bad)
    bad.write_text("power_params: {busy_w: -3}\n")
    with pytest.raises(ValueError, match="bad.yaml: key 'power_params'.*'busy_w'"):
        load_power(bad)


def test_a_run_the_fit_cannot_use_is_an_error(runs):
    chat = runs["chat"]
    short = EnergyTimeline([0.0, 0.1], {"gpu0": [0.0, 11.0]})
    with pytest.raises(ValueError, match="chat: the meter's timeline has 1 window"):
        fit_power([MeasuredRun("chat", chat.steps, short, 110.0)], PerfModel(LLAMA8, H200))
    with pytest.raises(ValueError, match="missing field 'start_s'"):
        fit_power([MeasuredRun("chat", chat.steps.drop(columns="start_s"), chat.timeline, 110.0)],
                  PerfModel(LLAMA8, H200))
