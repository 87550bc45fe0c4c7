"""Which calibration a simulated run uses: the files given, the one replay ships for the GPU (H200, fitted on
measured runs), or the uncalibrated defaults; and every run says which."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import TRACES
from replay.cli import main
from replay.engines.sim.calibration import choose_calibration, shipped_calibration
from replay.engines.sim.perf import PerfParams, load_perf, save_perf
from replay.engines.sim.power import PowerParams
from replay.files import read_yaml


def test_h200_ships_perf_and_power_fitted_on_measured_runs_with_their_provenance():
    for kind in ("perf", "power"):
        path = shipped_calibration("h200", kind)
        assert path is not None
        meta = read_yaml(path)["meta"]
        assert meta["gpu"] == "h200" and meta["model"] == "llama-3.1-8b"
        assert "vLLM 0.26.0" in meta["measured"] and "gpu-h200-2026-12" in meta["data"]
        assert meta["command"].startswith("replay calibrate ") and f"--{kind}" in meta["command"]
    fit = read_yaml(shipped_calibration("h200", "power"))["fit"]
    assert {e["run"].rsplit("/", 1)[-1] for e in fit["held_out"]} == {"chat", "code", "grid"}
    assert shipped_calibration("h100-sxm", "perf") is None


def test_the_shipped_calibration_is_the_default_and_says_so():
    c = choose_calibration(None, None, "h200", "llama-3.1-8b")
    assert c.perf == load_perf(shipped_calibration("h200", "perf")) and c.perf != PerfParams()
    assert c.power is not None and c.power.idle_w > 100          # measured idle with the engine loaded
    assert c.perf_from.startswith("shipped for h200 (fitted on llama-3.1-8b")
    other = choose_calibration(None, None, "h200", "llama-3.1-70b")
    assert "used here for llama-3.1-70b" in other.power_from
    none = choose_calibration("none", "None", "h200", "llama-3.1-8b")
    assert (none.perf, none.power) == (None, None) and "--perf none" in none.perf_from
    bare = choose_calibration(None, None, "h100-sxm", "llama-3.1-8b")
    assert (bare.perf, bare.power) == (None, None) and "ships no calibration for h100-sxm" in bare.power_from


def test_a_file_given_wins_and_a_bad_one_is_named(tmp_path):
    perf = save_perf(tmp_path / "p.yaml", PerfParams(compute_efficiency=0.3))
    c = choose_calibration(str(perf), None, "h200", "llama-3.1-8b")
    assert c.perf == PerfParams(compute_efficiency=0.3) and c.perf_from == f"--perf {perf}"
    assert c.power_from.startswith("shipped for h200")
    with pytest.raises(ValueError, match="p.yaml: missing key 'power_params'"):
        choose_calibration(None, str(perf), "h200", "llama-3.1-8b")


def test_replay_run_says_which_calibration_it_used(tmp_path):
    runner = CliRunner()
    out, said = {}, {}
    for name, extra in (("shipped", []), ("none", ["--perf", "none", "--power", "none"])):
        out[name] = tmp_path / name
        result = runner.invoke(main, ["run", str(TRACES / "chat.jsonl"), "--engine", "sim", "--gpu", "h200",
                                      "--limit", "40", "--out", str(out[name]), "--quiet", *extra])
        assert result.exit_code == 0, result.output
        said[name] = result.output
    assert "calibration: step time and power: shipped for h200 (fitted on llama-3.1-8b" in said["shipped"]
    assert ("calibration: step time: uncalibrated defaults (--perf none); power: uncalibrated defaults "
            "(--power none)") in said["none"]
    report = runner.invoke(main, ["report", str(out["shipped"])])
    assert report.exit_code == 0 and "calibration: step time and power: shipped for h200" in report.output
    shipped = json.loads((out["shipped"] / "summary.json").read_text())
    bare = json.loads((out["none"] / "summary.json").read_text())
    assert shipped["engine"]["calibration"]["power"].startswith("shipped for h200")
    assert bare["engine"]["calibration"]["perf"] == "uncalibrated defaults (--perf none)"
    assert shipped["engine"]["power"]["idle_w"] != bare["engine"]["power"]["idle_w"]
    assert shipped["summary"]["energy_total_j"] != bare["summary"]["energy_total_j"]
    assert bare["engine"]["power"] == PowerParams().to_dict() | {"idle_w": None, "max_w": None}


def test_power_and_perf_are_for_the_simulated_engine_only(tmp_path):
    power = tmp_path / "p.yaml"
    power.write_text("power_params: {}\n")
    result = CliRunner().invoke(main, ["run", str(TRACES / "chat.jsonl"), "--engine", "vllm", "--power", str(power),
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "--perf and --power set the simulated engine" in result.output
