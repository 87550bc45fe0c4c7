"""The estimator family against values worked out by hand on a 2-layer toy model and round-number hardware:
flops (dense and sparse), roofline (batch 1, and one run's steps split over its requests), the [SS26] forms,
and the [Na25] binned estimate; NaN and reasons for what cannot be estimated."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from replay.config import RunConfig
from replay.energy.attribution import request_step_work
from replay.estimate.binned import check_batch_energies
from replay.estimate.counting import step_counts
from replay.estimate.estimators import ESTIMATORS, EstimateContext, estimate
from replay.estimate.forms import Theta, preset
from replay.run import execute
from replay.specs import hardware, load_hardware, load_model, model

REPO = Path(__file__).resolve().parents[2]

# A 2-layer llama (see tests/estimate/test_counting.py for its counts by hand): per token 9376 FLOPs, LM head
# 3200, 128 a causal pair; weights 12576 bytes, KV 64 bytes a token, activations 960 a token and 232 a
# sampled sequence.
TOY = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "intermediate_size": 32, "vocab_size": 100, "tie_word_embeddings": False,
       "torch_dtype": "bfloat16"}
HW_YAML = """
devices:
  toy-gpu:
    name: Toy GPU
    memory_gb: 1
    memory_bandwidth_gbs: 1          # 1e9 bytes/s
    peak_tflops:
      bf16: {dense: 1, sparse: 2}    # 1e12 FLOP/s dense
      fp32: {dense: 0.5}
    tdp_w: 100
    idle_w: 10
    interconnect_gbs: 1
    source: made up for tests
  toy-slow:
    name: Toy slow GPU
    memory_gb: 1
    memory_bandwidth_gbs: 1000       # 1e12 bytes/s
    peak_tflops:
      bf16: {dense: 0.001}           # 1e9 FLOP/s: everything compute-bound
    tdp_w: 100
    idle_w: 10
    interconnect_gbs: 1
    source: made up for tests
"""


@pytest.fixture
def toy(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TOY))
    (tmp_path / "hw.yaml").write_text(HW_YAML)
    devices = load_hardware(tmp_path / "hw.yaml")
    return EstimateContext(load_model(d), devices["toy-gpu"]), devices


def workload(*lengths) -> pd.DataFrame:
    return pd.DataFrame({"id": [str(i) for i in range(len(lengths))], "input_tokens": [a for a, _ in lengths],
                         "output_tokens": [b for _, b in lengths]})


# --- flops ---------------------------------------------------------------------------------------------------


def test_flops_by_hand(toy):
    ctx, _ = toy
    e = estimate("flops", workload((4, 3), (1, 1)), ctx)
    # (4, 3): 68544 FLOPs (test_counting); (1, 1): prefill only, 9376 + 3200 + 128 x 1 = 12704; 100 W / 1e12
    np.testing.assert_allclose(e.per_request_j, [100 * 68544 / 1e12, 100 * 12704 / 1e12], rtol=1e-12)
    assert e.total_j == pytest.approx(100 * (68544 + 12704) / 1e12, rel=1e-12)
    assert e.reason is None and e.n_estimated == 2
    assert e.assumptions["peak"] == "dense" and e.assumptions["flops_hw"] == 1e12 and e.assumptions["tdp_w"] == 100
    assert "dense" in e.label and "309.7" in e.label and "sparse" in e.label   # says what [Na25] used


def test_sparse_peak_halves_flops_exactly(toy):
    ctx, _ = toy
    w = workload((4, 3), (100, 7), (1, 1))
    dense = estimate("flops", w, ctx)
    sparse = estimate("flops", w, dataclasses.replace(ctx, peak="sparse"))
    np.testing.assert_allclose(dense.per_request_j, 2 * sparse.per_request_j, rtol=1e-15)
    assert sparse.assumptions["peak"] == "sparse" and sparse.assumptions["flops_hw"] == 2e12
    assert "sparse" in sparse.label.split(";")[0]


def test_tp_does_not_change_the_flops_estimate(toy):
    ctx, _ = toy
    w = workload((4, 3), (100, 7))
    np.testing.assert_array_equal(estimate("flops", w, ctx).per_request_j,
                                  estimate("flops", w, dataclasses.replace(ctx, tp=4)).per_request_j)


def test_no_such_peak_is_a_reason_not_a_zero(toy):
    ctx, _ = toy
    e = estimate("flops", workload((4, 3)), dataclasses.replace(ctx, dtype="fp32", peak="sparse"))
    assert e.total_j is None and np.isnan(e.per_request_j).all()
    assert "no sparse peak" in e.reason


def test_rejected_and_unfinished_requests_are_nan_and_counted(toy):
    ctx, _ = toy
    w = pd.DataFrame({"id": ["a", "b", "c", "d"], "input_tokens": [4, 4, 9, 1], "output_tokens": [3, 3, 9, 5],
                      "generated_tokens": [3, 0, 2, 1], "status": ["finished", "rejected", "unfinished",
                                                                   "finished"]})
    e = estimate("flops", w, ctx)
    assert np.isnan(e.per_request_j[[1, 2]]).all()
    # "d" finished with 1 generated token (not its 5 asked): the prefill alone, 12704 FLOPs
    assert e.per_request_j[3] == pytest.approx(100 * 12704 / 1e12, rel=1e-12)
    assert e.total_j == pytest.approx(100 * (68544 + 12704) / 1e12, rel=1e-12)
    assert e.assumptions["left_out"] == {"rejected": 1, "unfinished": 1}
    assert "2 of 4 requests not estimated: 1 rejected, 1 unfinished" in e.reason
    every = estimate("flops", w[w["status"] == "rejected"], ctx)
    assert every.total_j is None and "none of the 1 requests" in every.reason


# --- roofline ------------------------------------------------------------------------------------------------


def test_roofline_batch_one_by_hand(toy):
    ctx, devices = toy
    e = estimate("roofline", workload((4, 3)), ctx)
    # memory-bound on toy-gpu (1e9 B/s): prefill 12576 + 4x64 read + 4x64 written + 4x960 + 232 = 17160 bytes;
    # decode 2 x 12576 + (5 + 6) x 64 + 2 x 64 + 2 x (960 + 232) = 28368 bytes; x 100 W
    assert e.per_request_j[0] == pytest.approx(100 * (17160 + 28368) / 1e9, rel=1e-12)
    assert "batch 1" in e.label and e.assumptions["batch"] == 1
    # compute-bound on toy-slow (1e9 FLOP/s): 41984 + 26560 FLOPs
    slow = estimate("roofline", workload((4, 3)), dataclasses.replace(ctx, hardware=devices["toy-slow"]))
    assert slow.per_request_j[0] == pytest.approx(100 * (41984 + 26560) / 1e9, rel=1e-12)


def run_records() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two steps by hand: step 0 prefills a's 4-token prompt; step 1 decodes a (context 4) and prefills b's
    2-token prompt; c was rejected; d is unfinished (its prompt chunk of 2 rode in step 1 too)."""
    steps = pd.DataFrame({"replica": [0, 0], "step": [0, 1], "start_s": [0.0, 0.5], "end_s": [0.5, 0.6],
                          "prefill_tokens": [4, 4], "decode_tokens": [0, 1], "num_seqs": [1, 3],
                          "sampled_seqs": [1, 2], "attn_pairs": [10.0, 5 + 3 + 3], "kv_read_tokens": [4, 5 + 2 + 2]})
    requests = pd.DataFrame({
        "id": ["a", "b", "c", "d"], "replica": [0, 0, 0, 0],
        "status": ["finished", "finished", "rejected", "unfinished"],
        "input_tokens": [4, 2, 10**6, 8], "output_tokens": [2, 1, 5, 4], "generated_tokens": [2, 1, 0, 0],
        "token_steps": [[[0, 2]], [[1, 1]], [], []], "prefill_steps": [[[0, 4]], [[1, 2]], [], [[1, 2]]]})
    return steps, requests


def test_roofline_with_steps_by_hand(toy):
    ctx, _ = toy
    steps, requests = run_records()
    e = estimate("roofline", requests, dataclasses.replace(ctx, steps=steps))
    # step 0: 17160 bytes (as a's prefill above); step 1: weights 12576 + KV read 9 x 64 + written 5 x 64
    # + activations 5 x 960 + 2 x 232 = 18736 bytes; both memory-bound (step 1: 9376 x 5 + 3200 x 2 + 128 x 11
    # = 54688 FLOPs is 5.5e-8 s); x 100 W
    e0, e1 = 100 * 17160 / 1e9, 100 * 18736 / 1e9
    # step 1's 5 tokens: a 1 (decode), b 2, d 2 (unfinished: not estimated, its share reported)
    assert e.per_request_j[0] == pytest.approx(e0 + e1 / 5, rel=1e-12)
    assert e.per_request_j[1] == pytest.approx(e1 * 2 / 5, rel=1e-12)
    assert np.isnan(e.per_request_j[2:]).all()
    assert e.assumptions["steps_j"] == pytest.approx(e0 + e1, rel=1e-12)
    assert e.assumptions["unfinished_share_j"] == pytest.approx(e1 * 2 / 5, rel=1e-12)
    assert e.assumptions["left_out"] == {"rejected": 1, "unfinished": 1}
    assert "run's batches" in e.label and "tokens" in e.label


def test_roofline_with_steps_needs_the_run_records(toy):
    ctx, _ = toy
    steps, requests = run_records()
    with pytest.raises(ValueError, match="token_steps"):
        estimate("roofline", requests.drop(columns=["token_steps"]), dataclasses.replace(ctx, steps=steps))


def test_roofline_on_a_run_shares_weight_reads(tmp_path):
    """On a simulated run with batching on two replicas, every step's estimated energy goes to its requests,
    and the run's batches cost less than each request alone (weights are read once per step, not per request)."""
    run = execute(RunConfig(trace=str(REPO / "traces" / "chat.jsonl"), limit=40, rate_scale=20.0, replicas=2,
                            model="llama-3.2-1b", out=str(tmp_path / "run")), progress=False)
    assert (run.requests["status"] == "finished").all() and (run.steps["num_seqs"] > 1).any()
    assert run.steps["replica"].nunique() == 2
    ctx = EstimateContext(model("llama-3.2-1b"), hardware("h100-sxm"))
    alone = estimate("roofline", run.requests, ctx)
    batched = estimate("roofline", run.requests, dataclasses.replace(ctx, steps=run.steps))
    assert batched.total_j == pytest.approx(batched.assumptions["steps_j"], rel=1e-9)
    # each request's share, recomputed directly: sum over its steps of E_step x its tokens / the step's tokens
    steps = run.steps.reset_index(drop=True)
    sc = step_counts(ctx.model, steps)
    hw = ctx.hardware
    step_j = hw.tdp_w * np.maximum(sc.flops / hw.peak_flops("bf16"), sc.bytes / hw.memory_bandwidth_bps)
    work = request_step_work(run.requests).merge(
        steps.assign(step_j=step_j, step_tokens=steps["prefill_tokens"] + steps["decode_tokens"])[
            ["replica", "step", "step_j", "step_tokens"]], on=["replica", "step"], validate="many_to_one")
    direct = np.bincount(work["row"], work["step_j"] * work["tokens"] / work["step_tokens"], minlength=40)
    np.testing.assert_allclose(batched.per_request_j, direct, rtol=1e-9)
    assert batched.total_j < alone.total_j
    assert batched.n_estimated == alone.n_estimated == 40


def test_roofline_splits_the_estimated_step_energies_as_they_are(tmp_path):
    """The roofline's split takes the estimated step energies directly (replay.energy.attribution's
    split_step_energy; no timeline made up to be read back): the steps it splits hold exactly those joules, the
    estimate is the token split of them, and what the records do not claim is 0 on a run that finished."""
    from replay.energy.attribution import split_step_energy
    from replay.estimate.estimators import _split_by_tokens

    run = execute(RunConfig(trace=str(REPO / "traces" / "chat.jsonl"), limit=40, rate_scale=20.0, replicas=2,
                            max_num_batched_tokens=512, model="llama-3.2-1b", out=str(tmp_path / "run")),
                  progress=False)
    ctx = EstimateContext(model("llama-3.2-1b"), hardware("h100-sxm"), steps=run.steps)
    sc = step_counts(ctx.model, run.steps)
    hw = ctx.hardware
    step_j = hw.tdp_w * np.maximum(sc.flops / hw.peak_flops("bf16"), sc.bytes / hw.memory_bandwidth_bps)
    shares, split = _split_by_tokens(step_j, run.steps, run.requests)
    assert split.steps["energy_j"].to_numpy().tobytes() == step_j.tobytes()
    assert split.steps_j == float(step_j.sum()) and split.unattributed_j == pytest.approx(0.0, abs=1e-9)
    direct = split_step_energy(step_j, run.steps, run.requests, "tokens")
    assert shares.tobytes() == direct.requests["energy_j"].to_numpy().tobytes()
    batched = estimate("roofline", run.requests, ctx)
    assert batched.per_request_j.tobytes() == shares.tobytes()
    assert batched.assumptions["unattributed_j"] == split.unattributed_j


# --- [SS26] forms --------------------------------------------------------------------------------------------


def test_forms_by_hand(toy):
    ctx, _ = toy
    w = workload((4, 3), (100, 10))
    b1 = estimate("b1", w, dataclasses.replace(ctx, theta=Theta("b1", (0.5,), "toy", "toy-gpu", "test")))
    np.testing.assert_allclose(b1.per_request_j, [0.5 * 3, 0.5 * 10])            # th0 x n_out
    b2 = estimate("b2", w, dataclasses.replace(ctx, theta=Theta("b2", (0.5, 2.0), "toy", "toy-gpu", "test")))
    np.testing.assert_allclose(b2.per_request_j, [0.5 * 3 + 2, 0.5 * 10 + 2])     # (th0 + th1 / n_out) n_out
    eq4 = Theta("eq4", (1.0, 1e-3, 1e-2, 0.1, 1e-4), "toy", "toy-gpu", "test")
    e = estimate("sweetspot-flops", w, dataclasses.replace(ctx, theta=eq4))
    # E_tok x n_out = th0 n_out + th1 n_in^2 + th2 n_in n_out + th3 n_in + th4 n_out^2
    assert e.per_request_j[1] == pytest.approx(10 + 1e-3 * 1e4 + 1e-2 * 1000 + 0.1 * 100 + 1e-4 * 100)
    assert e.reason is None and "different" not in e.label and e.assumptions["same_hardware"]


def test_sweetspot_uses_the_table5_preset_and_says_when_the_hardware_differs():
    m = model("llama-3.1-8b")
    w = workload((512, 128), (64, 4096))
    h100 = estimate("sweetspot", w, EstimateContext(m, hardware("h100-sxm")))
    np.testing.assert_allclose(h100.per_request_j, preset("llama-3.1-8b").e_request_j([512, 64], [128, 4096]))
    assert "Table 5" in h100.label and "this run is on" not in h100.label
    a100 = estimate("sweetspot", w, EstimateContext(m, hardware("a100-80gb")))
    assert "h100-sxm, this run is on a100-80gb" in a100.label and not a100.assumptions["same_hardware"]


def test_forms_without_coefficients_say_why(toy):
    ctx, _ = toy
    w = workload((4, 3))
    e = estimate("sweetspot", w, ctx)
    assert e.total_j is None and np.isnan(e.per_request_j).all()
    assert "no [SS26] Table 5 preset for model 'toy'" in e.reason and "replay calibrate --form eq5" in e.reason
    assert "replay calibrate --form b3" in estimate("b3", w, ctx).reason
    wrong = estimate("sweetspot", w, dataclasses.replace(ctx, theta=Theta("b1", (0.5,), "toy", "toy-gpu", "t")))
    assert wrong.total_j is None and "'b1'" in wrong.reason and "eq5" in wrong.reason


# --- binned --------------------------------------------------------------------------------------------------

BATCHES = pd.DataFrame({"input_bin": [32, 128], "output_bin": [8, 16], "batch_size": [4, 2],
                        "energy_j": [2.0, 3.0]})


def test_binned_two_bins_by_hand(toy):
    ctx, _ = toy
    w = workload((10, 5), (100, 16), (32, 8), (200, 8), (9000, 5), (9000, 600))
    e = estimate("binned", w, dataclasses.replace(ctx, batch_energies=BATCHES))
    # (10, 5) and (32, 8) in bin (32, 8): 2.0 J / 4; (100, 16) in (128, 16): 3.0 J / 2; (200, 8) in (256, 8):
    # no measured batch; (9000, ...) above the largest input bin, one of them above the output bins too
    np.testing.assert_allclose(e.per_request_j[:3], [0.5, 1.5, 0.5])
    assert np.isnan(e.per_request_j[3:]).all()
    # [Na25]: N / B x E_batch = 2 / 4 x 2.0 + 1 / 2 x 3.0
    assert e.total_j == pytest.approx(2 / 4 * 2.0 + 1 / 2 * 3.0)
    assert e.assumptions["left_out"] == {"above_input": 1, "above_both": 1, "bin_not_measured": 1}
    assert "3 of 6 requests not estimated" in e.reason and "without a measured batch" in e.reason
    bins = e.assumptions["bins"]
    assert bins[["input_bin", "output_bin", "requests", "batches"]].values.tolist() == [[32, 8, 2, 0.5],
                                                                                       [128, 16, 1, 0.5]]
    assert e.assumptions["unmeasured_bins"].values.tolist() == [[256, 8, 1]]
    json.dumps(e.to_dict(), allow_nan=False)                      # DataFrames and NaN made plain


def test_binned_uses_the_largest_batch_of_a_bin(toy):
    ctx, _ = toy
    sweep = pd.concat([BATCHES, pd.DataFrame({"input_bin": [32], "output_bin": [8], "batch_size": [16],
                                              "energy_j": [4.0]})], ignore_index=True)
    e = estimate("binned", workload((10, 5), (100, 16)), dataclasses.replace(ctx, batch_energies=sweep))
    np.testing.assert_allclose(e.per_request_j, [4.0 / 16, 1.5])


def test_binned_says_when_its_batch_energies_are_modelled(toy):
    ctx, _ = toy
    e = estimate("binned", workload((10, 5)), dataclasses.replace(ctx, batch_energies=BATCHES.assign(
        modelled=[True, False], source=["modelled (sim)", "measured (nvml)"])))
    assert "modelled" in e.label and e.assumptions["batch_energy_sources"] == ["measured (nvml)", "modelled (sim)"]
    assert "modelled" not in estimate("binned", workload((10, 5)),
                                      dataclasses.replace(ctx, batch_energies=BATCHES)).label


def test_binned_without_batch_energies_says_why(toy):
    ctx, _ = toy
    e = estimate("binned", workload((4, 3)), ctx)
    assert e.total_j is None and "no measured batch energies" in e.reason


@pytest.mark.parametrize("change, message", [
    (lambda f: f.assign(input_bin=[32, 100]), "row 1: field 'input_bin': expected one of the bin edges"),
    (lambda f: f.assign(energy_j=[2.0, 0.0]), "row 1: field 'energy_j'"),
    (lambda f: f.assign(batch_size=[4, 1.5]), "row 1: field 'batch_size'"),
    (lambda f: f.drop(columns=["batch_size"]), "missing column 'batch_size'"),
    (lambda f: f.assign(input_bin=[32, 32], output_bin=[8, 8], batch_size=[4, 4]),
     r"rows 0, 1: bin \(32, 8\) with batch size 4 given more than once"),
])
def test_bad_batch_energies_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        check_batch_energies(change(BATCHES))


# --- the registry and bad input ----------------------------------------------------------------------------


def test_registry_names():
    assert set(ESTIMATORS) == {"flops", "roofline", "sweetspot", "sweetspot-flops", "b1", "b2", "b3", "b4",
                               "binned"}


def test_bad_input_is_named(toy):
    ctx, _ = toy
    with pytest.raises(ValueError, match="unknown estimator 'flop'; the estimators are: flops, roofline"):
        estimate("flop", workload((4, 3)), ctx)
    with pytest.raises(ValueError, match="peak 'half'"):
        dataclasses.replace(ctx, peak="half")
    with pytest.raises(ValueError, match="missing column 'input_tokens'"):
        estimate("flops", pd.DataFrame({"output_tokens": [3]}), ctx)
    with pytest.raises(ValueError, match="request '0': field 'output_tokens': expected a whole number"):
        estimate("flops", workload((4, 2.5)), ctx)
    bad = pd.DataFrame({"id": ["x"], "input_tokens": [4], "generated_tokens": [3], "status": ["done"]})
    with pytest.raises(ValueError, match="request 'x': field 'status'"):
        estimate("flops", bad, ctx)


def test_every_estimate_is_plain_json(toy):
    ctx, _ = toy
    ctx = dataclasses.replace(ctx, batch_energies=BATCHES, theta=Theta("b1", (0.5,), "toy", "toy-gpu", "test"))
    steps, requests = run_records()
    for name in ESTIMATORS:
        for c in (ctx, dataclasses.replace(ctx, steps=steps)):
            d = estimate(name, requests, c).to_dict()
            json.dumps(d, allow_nan=False)
            assert d["n_requests"] == 4 and len(d["per_request_j"]) == 4
