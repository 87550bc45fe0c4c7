"""``replay calibrate --form``: the [SS26] energy forms fitted to real run directories of the simulated engine
(modelled energy, labelled so), per-(input, output) E_tok, exclusions, held-out error and the errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from replay.calibrate import calibrate_forms, energy_points, parse_forms
from replay.cli import main
from replay.config import RunConfig
from replay.estimate.forms import FORMS, load_theta, mape
from replay.run import execute
from replay.trace.schema import Request, Workload
from replay.trace.synth import parse_length_spec, synthesize
from replay.trace.writers import write_trace

N_IN = (64, 256, 1024)
N_OUT = (16, 64, 256)


def _run(tmp, name: str, workload: Workload, **options) -> str:
    trace = tmp / f"{name}.jsonl"
    write_trace(workload, trace)
    out = tmp / name
    execute(RunConfig(trace=str(trace), engine="sim", mode="offline", out=str(out), **options), progress=False)
    return str(out)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny [SS26]-style sweep: one offline run of 4 fixed-length requests per (n_in, n_out) point."""
    tmp = tmp_path_factory.mktemp("sweep")
    dirs = []
    for i in N_IN:
        for o in N_OUT:
            w = synthesize(requests=4, input=parse_length_spec(f"const:{i}"),
                           output=parse_length_spec(f"const:{o}"), arrival="none", seed=0)
            dirs.append(_run(tmp, f"p{i}-{o}", w))
    return dirs


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _requests(run_dir) -> pd.DataFrame:
    return pd.read_json(f"{run_dir}/requests.jsonl", lines=True)


def test_points_are_energy_over_output_tokens_per_length_pair(sweep):
    points = energy_points(sweep)
    f = points.frame
    assert len(f) == 9 and set(zip(f.input_tokens, f.output_tokens)) == {(i, o) for i in N_IN for o in N_OUT}
    assert points.measured is False and points.energy_source.startswith("modelled")
    assert (points.model, points.hardware) == ("llama-3.1-8b", "h100-sxm")
    assert points.requests_used == 36 and points.excluded == {}
    for run_dir in sweep:
        r = _requests(run_dir)
        i, o = int(r.input_tokens[0]), int(r.output_tokens[0])
        row = f[(f.input_tokens == i) & (f.output_tokens == o)].iloc[0]
        assert row.requests == 4
        assert row.e_tok_j == pytest.approx(r.energy_j.sum() / r.generated_tokens.sum(), rel=1e-12)


def test_fit_is_written_labelled_modelled_with_held_out_error(sweep, tmp_path):
    result = calibrate_forms(sweep, ("eq4",), folds=3, out=tmp_path / "theta.yaml")
    theta = load_theta(tmp_path / "theta.yaml")
    assert theta == result.fits[0].theta
    assert (theta.form, theta.model, theta.hardware) == ("eq4", "llama-3.1-8b", "h100-sxm")
    assert "not measured" in theta.source and "modelled" in theta.source and "measured energy" not in theta.source
    assert theta.fit["energy"] == "modelled"
    f = result.points.frame
    in_sample = mape(theta.e_tok(f.input_tokens, f.output_tokens), f.e_tok_j)
    assert theta.fit["in_sample_mape_pct"] == pytest.approx(in_sample)
    assert theta.fit["folds"] == 3 and len(theta.fit["per_fold_mape_pct"]) == 3
    assert theta.fit["heldout_mape_pct"] > theta.fit["in_sample_mape_pct"] > 0
    assert theta.fit["n_points"] == 9 and theta.fit["requests"] == 36


def test_cli_one_form_prints_coefficients_and_both_errors(sweep, tmp_path):
    out = tmp_path / "eq5.yaml"
    result = _cli("calibrate", *sweep, "--form", "eq5", "--folds", 3, "--out", out)
    assert result.exit_code == 0, result.output
    theta = load_theta(out)
    for j, value in enumerate(theta.theta):
        assert f"th{j} = {value: .6e}" in result.output
    assert "in-sample MAPE" in result.output and "3-fold held-out MAPE" in result.output
    assert "not measured" in result.output and f"wrote {out}" in result.output


def test_cli_all_forms_prints_the_comparison_table(sweep, tmp_path):
    result = _cli("calibrate", *sweep, "--form", "all", "--folds", 3, "--out", tmp_path / "thetas")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines()
            if line.split()[:1] and line.split()[0] in ("B1", "B2", "B3", "B4", "Eq.")]
    assert [r.split()[0] + (r.split()[1] if r.startswith("Eq.") else "") for r in rows] == [
        "B1", "B2", "B3", "B4", "Eq.4", "Eq.5"]
    thetas = {f: load_theta(tmp_path / "thetas" / f"theta-{f}.yaml") for f in FORMS}
    # [SS26]'s ordering of the forms holds on the simulator's energy too: B1 worst, the FLOP forms far better
    assert thetas["b1"].fit["in_sample_mape_pct"] > 10 * thetas["eq4"].fit["in_sample_mape_pct"]
    assert thetas["eq5"].fit["in_sample_mape_pct"] <= thetas["eq4"].fit["in_sample_mape_pct"]


def test_trace_run_groups_by_length_pair_and_excludes_rejected(tmp_path):
    pairs = [(64, 16), (64, 16), (64, 16), (512, 16), (512, 128), (128, 128), (2000, 100)]
    w = Workload.from_requests([Request(str(n), None, i, o) for n, (i, o) in enumerate(pairs)])
    run_dir = _run(tmp_path, "trace", w, max_model_len=2048)
    r = _requests(run_dir)
    assert list(r.status[r.input_tokens == 2000]) == ["rejected"]
    points = energy_points([run_dir])
    assert points.excluded == {"rejected": 1} and points.requests_used == 6
    f = points.frame.set_index(["input_tokens", "output_tokens"])
    assert list(f.index) == [(64, 16), (128, 128), (512, 16), (512, 128)]
    first = r[(r.input_tokens == 64)]
    assert f.loc[(64, 16), "requests"] == 3
    assert f.loc[(64, 16), "e_tok_j"] == pytest.approx(first.energy_j.sum() / first.generated_tokens.sum())
    text = _cli("calibrate", run_dir, "--form", "b2", "--folds", 2, "--out", tmp_path / "b2.yaml").output
    assert "left out: 1 rejected" in text


def test_null_energy_is_left_out_and_counted(sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep[0], copy)
    lines = (copy / "requests.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["energy_j"] = None
    (copy / "requests.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    points = energy_points([copy, *sweep[1:]])
    assert points.excluded == {"finished without energy": 1} and points.requests_used == 35
    row = points.frame.iloc[0]
    assert row.requests == 3


def test_not_measured_run_is_an_error_saying_why(tmp_path):
    w = synthesize(requests=3, input=parse_length_spec("const:64"), output=parse_length_spec("const:8"),
                   arrival="none")
    run_dir = _run(tmp_path, "none", w, meter="none")
    reason = json.loads((tmp_path / "none" / "summary.json").read_text())["summary"]["energy_not_measured_reason"]
    with pytest.raises(ValueError, match="energy not measured") as err:
        energy_points([run_dir])
    assert reason in str(err.value) and run_dir in str(err.value)
    result = _cli("calibrate", run_dir, "--form", "eq5")
    assert result.exit_code == 1 and "not measured" in result.output


def test_measured_and_modelled_runs_do_not_mix(sweep, tmp_path):
    # a copy relabelled as an NVML measurement (the hardware this machine lacks)
    copy = tmp_path / "measured"
    shutil.copytree(sweep[0], copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["summary"]["energy_source"] = "measured by NVML (GPU 0)"
    (copy / "summary.json").write_text(json.dumps(summary))
    assert energy_points([copy]).measured is True
    with pytest.raises(ValueError, match="mix modelled energy .* and measured energy"):
        energy_points([copy, sweep[1]])


def test_run_directory_errors(sweep, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no summary.json"):
        energy_points([empty])
    broken = tmp_path / "broken"
    shutil.copytree(sweep[0], broken)
    (broken / "requests.jsonl").write_text('{"status": "finished", "input_tokens": 4}\n')
    with pytest.raises(ValueError, match=r"requests.jsonl:1: missing field 'output_tokens'"):
        energy_points([broken])
    # a bad value names the file, the request and the field
    tokens, joules = "expected a whole number of tokens >= 1", "expected a finite number of joules >= 0"
    for fields, message in [({"input_tokens": None}, f"field 'input_tokens': {tokens}, got null"),
                            ({"output_tokens": 2.5}, f"field 'output_tokens': {tokens}, got 2.5"),
                            ({"energy_j": "abc"}, f"field 'energy_j': {joules}, got 'abc'")]:
        record = {"id": "r1", "status": "finished", "input_tokens": 4, "output_tokens": 2, "energy_j": 1.0, **fields}
        (broken / "requests.jsonl").write_text(json.dumps(record) + "\n")
        with pytest.raises(ValueError, match=rf"requests.jsonl: request 'r1': {message}"):
            energy_points([broken])


def test_too_few_points_for_a_form(sweep, tmp_path):
    with pytest.raises(ValueError, match="6 coefficients but there are only 2 points"):
        calibrate_forms(sweep[:2], ("eq5",), out=tmp_path / "t.yaml")
    # with several forms the ones that cannot be fitted are reported, the others written
    result = _cli("calibrate", *sweep[:3], "--form", "b1,b2,eq5", "--folds", 2, "--out", tmp_path / "few")
    assert result.exit_code == 0, result.output
    assert "not fitted" in result.output and (tmp_path / "few" / "theta-b2.yaml").exists()
    assert not (tmp_path / "few" / "theta-eq5.yaml").exists()


def test_cli_option_errors(sweep):
    assert _cli("calibrate", sweep[0], "--form", "eq5", "--perf").exit_code == 2
    result = _cli("calibrate", sweep[0], "--form", "eq9")
    assert result.exit_code == 1 and "unknown form 'eq9'" in result.output
    assert _cli("calibrate", *sweep, "--form", "b1", "--folds", 1).exit_code == 1
    assert parse_forms("all") == ("b1", "b2", "b3", "b4", "eq4", "eq5")
    assert parse_forms("eq5, b4,eq5") == ("eq5", "b4")


def test_held_out_is_reported_not_computed_when_folds_exceed_points(sweep, tmp_path):
    result = calibrate_forms(sweep[:3], ("b1",), folds=5, out=tmp_path / "b1.yaml")
    stats = result.fits[0].theta.fit
    assert stats["heldout_mape_pct"] is None and "needs at least 5 points" in stats["heldout_not_computed"]
    assert np.isfinite(stats["in_sample_mape_pct"])


def test_a_run_whose_requests_all_lack_energy_is_an_error(sweep, tmp_path):
    copy = tmp_path / "none"
    shutil.copytree(sweep[0], copy)
    rows = [dict(json.loads(line), energy_j=None) for line in (copy / "requests.jsonl").read_text().splitlines()]
    (copy / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="no finished request with energy .*left out: 4 finished without energy"):
        energy_points([copy])


def test_a_sweep_directory_stands_for_its_finished_points(tmp_path):
    out = tmp_path / "sweep"
    made = _cli("sweep", "--engine", "sim", "--grid", "n_in=64..256", "--grid", "n_out=16..64", "--requests", 3,
                "--out", out)
    assert made.exit_code == 0, made.output
    points = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(points) == 9
    (points[0] / "summary.json").unlink()           # as if that point had not finished
    result = _cli("calibrate", out, "--form", "eq4", "--folds", 2)
    assert result.exit_code == 0, result.output
    assert "1 of 9 sweep points not finished" in result.output
    theta = load_theta(out / "theta-eq4.yaml")
    assert theta.fit["n_points"] == 8 and theta.fit["requests"] == 24 and len(theta.fit["runs"]) == 8


def test_the_model_is_the_name_the_run_was_given_not_the_path_its_engine_loaded(tmp_path):
    """A real engine's resolved model is the directory it loaded on its own machine (the H200 runs say
    /tmp/stage/.../llama-3.1-8b); the fit names the model as the run did, so a report does not see a mismatch."""
    w = Workload.from_requests([Request(str(n), None, i, 16) for n, i in enumerate((64, 64, 128))])
    run_dir = Path(_run(tmp_path, "named", w))
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["resolved_engine"]["model"] = "/elsewhere/models/" + cfg["model"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert energy_points([run_dir]).model == cfg["model"]
