"""replay.report.estimates: the hardware and model the estimates assume for a run, the default estimators, the
--estimator names, and an estimator that raises becoming a reason instead of stopping the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from replay.estimate import estimators as est_module
from replay.estimate.forms import Theta, preset
from replay.report.estimates import default_estimators, parse_estimators, run_context, run_estimates
from replay.report.rundir import RunData

REQUESTS = pd.DataFrame({"id": ["a", "b"], "status": ["finished", "finished"], "input_tokens": [100, 200],
                         "output_tokens": [10, 20], "generated_tokens": [10, 20], "energy_j": [1.0, 2.0]})


def run(config: dict, engine: dict | None = None) -> RunData:
    cfg = {**config, "resolved_engine": engine or {}}
    summary = {"energy_source": "measured (nvml)", "energy_total_j": 3.0}
    return RunData(None, cfg, REQUESTS, pd.DataFrame(), summary, {"summary": summary}, None)


def test_a_simulated_run_assumes_its_gpu():
    ctx, a = run_context(run({"model": "llama-3.1-8b", "gpu": "a100-80gb", "tp": 2}, {"engine": "sim"}))
    assert ctx.hardware.key == "a100-80gb" and a.hardware == "a100-80gb" and ctx.tp == 2 and a.tp == 2
    assert ctx.model.key == "llama-3.1-8b" and a.dtype == "bfloat16"
    assert "a100-80gb" in a.notes[0]


def test_a_real_run_on_the_cpu_build_assumes_the_cpu_entry_and_says_so():
    ctx, a = run_context(run({"model": "tiny-llama", "gpu": "h100-sxm"}, {"engine": "vllm", "platform": "cpu"}))
    assert ctx.hardware.key == "cpu"
    assert "CPU build" in a.notes[0] and "'cpu'" in a.notes[0] and "h100-sxm" in a.notes[0]


def test_a_real_run_on_an_unnamed_gpu_platform_falls_back_to_the_gpu_option_with_a_note():
    ctx, a = run_context(run({"model": "tiny-llama", "gpu": "a100-40gb"}, {"engine": "vllm", "platform": "cuda"}))
    assert ctx.hardware.key == "a100-40gb" and "'cuda'" in a.notes[0]
    ctx, _ = run_context(run({"model": "tiny-llama", "gpu": "a100-40gb"},
                             {"engine": "vllm", "platform": "NVIDIA H100 80GB HBM3"}))
    assert ctx.hardware.key == "h100-sxm"    # hardware.yaml knows the name NVML reports


def test_gpu_override_and_unknown_hardware():
    ctx, a = run_context(run({"model": "tiny-llama", "gpu": "h100-sxm"}, {"engine": "vllm", "platform": "cpu"}),
                         gpu="a100-80gb")
    assert ctx.hardware.key == "a100-80gb" and "--gpu" in a.notes[0]
    with pytest.raises(ValueError, match="unknown hardware 'nope'"):
        run_context(run({"model": "tiny-llama", "gpu": "h100-sxm"}), gpu="nope")


def test_missing_model_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="missing key 'model'"):
        run_context(run({"gpu": "h100-sxm"}))


def test_the_model_comes_from_the_resolved_engine_when_the_options_lack_it():
    ctx, _ = run_context(run({"gpu": "h100-sxm"}, {"engine": "sim", "model": "llama-3.2-1b"}))
    assert ctx.model.key == "llama-3.2-1b"


def test_default_estimators():
    ctx, _ = run_context(run({"model": "llama-3.1-8b", "gpu": "h100-sxm"}))
    assert default_estimators(ctx) == ["flops", "roofline", "sweetspot"]          # a Table 5 preset exists
    ctx, _ = run_context(run({"model": "tiny-llama", "gpu": "h100-sxm"}))
    assert default_estimators(ctx) == ["flops", "roofline"]                       # none for tiny-llama
    eq4 = Theta("eq4", (1e-3, 1e-8, 1e-6, 1e-4, 1e-6), "tiny-llama", "cpu", "a test fit")
    ctx, a = run_context(run({"model": "tiny-llama", "gpu": "h100-sxm"}), theta=eq4)
    assert default_estimators(ctx) == ["flops", "roofline", "sweetspot-flops"]
    assert any("eq4" in n for n in a.notes)
    be = pd.DataFrame({"input_bin": [128], "output_bin": [16], "batch_size": [8], "energy_j": [10.0]})
    ctx, _ = run_context(run({"model": "llama-3.1-8b", "gpu": "h100-sxm"}), batch_energies=be)
    assert default_estimators(ctx)[-1] == "binned"


def test_parse_estimators():
    ctx, _ = run_context(run({"model": "llama-3.1-8b", "gpu": "h100-sxm"}))
    assert parse_estimators(None, ctx) == default_estimators(ctx)
    assert parse_estimators(["roofline", "flops", "roofline"], ctx) == ["roofline", "flops"]
    assert parse_estimators(["all"], ctx) == list(est_module.ESTIMATORS)
    with pytest.raises(ValueError, match="--estimator 'flop': unknown; expected one of flops"):
        parse_estimators(["flop"], ctx)


def test_estimates_of_the_requests_and_one_that_raises_becomes_its_reason(monkeypatch):
    ctx, _ = run_context(run({"model": "llama-3.1-8b", "gpu": "h100-sxm"}))

    def broken(requests, ctx):
        raise ValueError("the model lacks a shape this estimator needs")

    monkeypatch.setitem(est_module.ESTIMATORS, "b1", broken)
    out = run_estimates(REQUESTS, ctx, ["flops", "sweetspot", "b1"])
    assert out["flops"].total_j > 0 and np.isfinite(out["flops"].per_request_j).all()
    want = preset("llama-3.1-8b").e_request_j(np.array([100, 200]), np.array([10, 20]))
    assert out["sweetspot"].per_request_j == pytest.approx(want)
    assert out["b1"].total_j is None and np.isnan(out["b1"].per_request_j).all()
    assert out["b1"].reason == "the model lacks a shape this estimator needs"


def test_a_model_directory_not_found_from_here_falls_back_to_where_the_engine_resolved_it():
    from replay.specs import MODELS_DIR
    resolved = str(MODELS_DIR / "tiny-llama")
    ctx, _ = run_context(run({"model": "some/relative/dir", "gpu": "h100-sxm"},
                             {"engine": "vllm", "platform": "cpu", "model": resolved}))
    assert ctx.model.hidden_size == 128
    with pytest.raises(ValueError, match="some/relative/dir"):
        run_context(run({"model": "some/relative/dir", "gpu": "h100-sxm"}))
