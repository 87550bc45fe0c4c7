"""Modelled power: energy = power x time, idle at zero utilisation, monotone and capped, tp scaling, the defaults'
place between idle and TDP, and a loose comparison with ML.ENERGY v2 measurements."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.engines.sim.perf import SHAPE_COLUMNS, PerfModel
from replay.engines.sim.power import LABEL, PowerModel, PowerParams
from replay.specs import hardware, model

LLAMA8 = model("llama-3.1-8b")
H100 = hardware("h100-sxm")
frac = st.floats(0.0, 1.0)


def decode(batch: int, context: int) -> dict:
    return dict(prefill_tokens=0, decode_tokens=batch, num_seqs=batch, sampled_seqs=batch,
                attn_pairs=batch * (context + 1), kv_read_tokens=batch * (context + 1))


def prefill(n: int) -> dict:
    return dict(prefill_tokens=n, decode_tokens=0, num_seqs=1, sampled_seqs=1, attn_pairs=n * (n + 1) / 2,
                kv_read_tokens=n)


def modelled_power_w(shape: dict, hw=H100, tp: int = 1) -> float:
    perf, power = PerfModel(LLAMA8, hw, tp=tp), PowerModel(hw, tp=tp)
    t = perf.step_time_s(**shape)
    return power.step_energy_j(perf, **shape, duration_s=t) / t


def test_label_is_modelled():
    assert LABEL == "modelled" and PowerModel(H100).label == "modelled"


def test_energy_is_power_times_time():
    perf, power = PerfModel(LLAMA8, H100), PowerModel(H100)
    for shape in (decode(1, 1024), decode(64, 3000), prefill(2048)):
        t = perf.step_time_s(**shape)
        c, m = perf.utilisation(**shape, duration_s=t)
        assert power.step_energy_j(perf, **shape, duration_s=t) == pytest.approx(power.power_w(c, m) * t, rel=1e-12)
        # the same work spread over twice the time: lower power, but never below idle
        slow = power.step_energy_j(perf, **shape, duration_s=2 * t) / (2 * t)
        assert power.idle_w <= slow < power.power_w(c, m) or power.power_w(c, m) == power.idle_w


def test_idle():
    perf, power = PerfModel(LLAMA8, H100), PowerModel(H100)
    assert power.idle_w == H100.idle_w and power.power_w(0.0, 0.0) == H100.idle_w
    empty = dict.fromkeys(SHAPE_COLUMNS, 0)
    assert power.step_energy_j(perf, **empty, duration_s=0.5) == pytest.approx(H100.idle_w * 0.5)
    assert power.idle_energy_j(10.0) == pytest.approx(H100.idle_w * 10.0)
    assert power.idle_energy_j(0.0) == 0.0


@settings(max_examples=100, deadline=None)
@given(c=frac, m=frac, dc=frac, dm=frac)
def test_monotonic_and_bounded(c, m, dc, dm):
    power = PowerModel(H100)
    p = power.power_w(c, m)
    assert H100.idle_w <= p <= H100.tdp_w
    assert power.power_w(min(1.0, c + dc), min(1.0, m + dm)) >= p


def test_saturates_at_max():
    power = PowerModel(H100)
    assert power.power_w(1.0, 1.0) == H100.tdp_w == power.max_w
    assert power.power_w(0.0, 1.0) == pytest.approx(H100.idle_w + (H100.tdp_w - H100.idle_w) * 0.7)


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tp_scaling(tp):
    one, many = PowerModel(H100), PowerModel(H100, tp=tp)
    assert many.idle_w == tp * one.idle_w and many.max_w == tp * one.max_w
    assert many.power_w(0.3, 0.4) == pytest.approx(tp * one.power_w(0.3, 0.4))
    assert many.idle_energy_j(2.0) == pytest.approx(tp * one.idle_energy_j(2.0))


def test_tp_mismatch_is_an_error():
    with pytest.raises(ValueError, match="tp"):
        PowerModel(H100, tp=2).step_energy_j(PerfModel(LLAMA8, H100), **decode(1, 10), duration_s=0.01)


def test_params_override_and_errors():
    power = PowerModel(H100, tp=2, params=PowerParams(idle_w=50, max_w=500, compute_weight=1, memory_weight=0.5))
    assert power.idle_w == 100 and power.max_w == 1000
    assert power.power_w(0.2, 0.4) == pytest.approx(2 * (50 + 450 * 0.4))
    p = PowerParams(idle_w=40.0, compute_weight=1.5)
    assert PowerParams.from_dict(p.to_dict()) == p
    assert PowerParams.from_dict({}) == PowerParams()
    with pytest.raises(ValueError, match="'idle'"):
        PowerParams.from_dict({"idle": 40})
    with pytest.raises(ValueError, match="'memory_weight'"):
        PowerParams.from_dict({"memory_weight": -0.1})
    with pytest.raises(ValueError, match="'max_w'"):
        PowerParams(idle_w=100, max_w=50)
    with pytest.raises(ValueError, match="max_w"):
        PowerModel(H100, params=PowerParams(max_w=20))     # below the H100's 70 W idle


def test_defaults_prefill_near_tdp_decode_in_published_range():
    """Llama-3.1-8B on an H100 SXM: a compute-bound prefill near TDP (Splitwise: the prompt phase runs at the
    power limit); memory-bound decode at roughly 50-75% of TDP (ML.ENERGY H100 measurements of 8B models with
    vLLM: ~300 W at batch 1 to ~600 W at batch 128)."""
    tdp = H100.tdp_w
    assert modelled_power_w(prefill(1024)) >= 0.9 * tdp
    for batch in (1, 64):
        assert 0.5 * tdp <= modelled_power_w(decode(batch, 1024)) <= 0.75 * tdp
    assert modelled_power_w(decode(1, 1024)) < modelled_power_w(decode(64, 1024)) < modelled_power_w(prefill(1024))


# --- against measurements -------------------------------------------------------------------------------------

ASSUMED_INPUT_TOKENS = 500   # the CSV has no input lengths; ML.ENERGY's chat prompts are a few hundred tokens


def test_against_mlenergy_v2(shared_data):
    """Predicted J per output token for the ML.ENERGY v2 Llama-3.1-8B chat rows (H100 and A100, TP 1): a decode
    step at the row's mean batch and a context of input + output/2, plus one prefill of the input per request
    spread over its output tokens. Measured over predicted is about 1.0-1.2 on the A100 and 1.7-1.9 on the H100.

    The band is loose on purpose: those runs used a 2024 vLLM whose steps were 2-5x slower than this roofline
    (the H100 batch-64 row's TPOT is 35 ms against a modelled 10 ms), so the GPU spent longer per token at lower
    power; the input length is assumed. The check guards against gross errors (a unit slip, a wrong
    weight count, power outside idle..TDP), not for calibration, which fit_perf and a measured run provide.
    """
    rows = pd.read_csv(shared_data / "mlenergy_v2" / "mlenergy_v2_llm_text_generation.csv")
    rows = rows[rows["Model"].str.contains("Llama-3.1-8B") & (rows["TP"] == 1) & (rows["task"] == "chat")]
    assert len(rows) >= 10
    for _, r in rows.iterrows():
        hw = hardware(r["GPU"])
        perf, power = PerfModel(LLAMA8, hw), PowerModel(hw)
        batch, out = int(round(r["Avg BS (reqs)"])), r["Avg Output Tokens"]
        step = decode(batch, int(ASSUMED_INPUT_TOKENS + out / 2))
        t = perf.step_time_s(**step)
        pre = prefill(ASSUMED_INPUT_TOKENS)
        t_pre = perf.step_time_s(**pre)
        predicted = (power.step_energy_j(perf, **step, duration_s=t) / batch
                     + power.step_energy_j(perf, **pre, duration_s=t_pre) / out)
        measured = r["Energy/req (J)"] / out
        assert 0.33 <= predicted / measured <= 1.5, (r["GPU"], batch, predicted, measured)
        # The power model alone, at the measured time per step: modelled watts against measured average watts.
        measured_w = r["Energy/req (J)"] * r["Token tput (tok/s)"] / out
        tpot = r["Avg TPOT (s)"]
        modelled_w = power.step_energy_j(perf, **step, duration_s=tpot) / tpot
        assert 0.4 <= modelled_w / measured_w <= 1.25, (r["GPU"], batch, modelled_w, measured_w)


@pytest.mark.parametrize("tp", [1, 2])
def test_decode_run_arrays_are_bit_identical_to_single_steps(tp):
    """The fused decode runs of the simulated engine must give the very numbers single steps give."""
    perf, power = PerfModel(model("llama-3.1-8b"), hardware("h100-sxm"), tp=tp), PowerModel(hardware("h100-sxm"), tp=tp)
    rng = np.random.default_rng(tp)
    for batch in (1, 7, 64, 256):
        kv = rng.integers(batch, 400_000, 50)
        times = perf.decode_times_s(batch, kv)
        energies = power.decode_energies_j(perf, batch, kv, times)
        for t, e, k in zip(times.tolist(), energies.tolist(), kv.tolist()):
            t1 = perf.step_time_s(0, batch, batch, batch, float(k), k)
            assert t == t1
            assert e == power.step_energy_j(perf, 0, batch, batch, batch, float(k), k, t1)
