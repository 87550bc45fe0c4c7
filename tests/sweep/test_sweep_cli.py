"""`replay sweep` through click's CliRunner: the synthetic default runs offline, the same command again goes
on, --resume takes nothing else, bad grids are one clear line, failed points make a non-zero exit."""

from __future__ import annotations

import pandas as pd
import yaml
from click.testing import CliRunner

from conftest import TRACES
from replay.cli import main

SIM = ["--engine", "sim", "--model", "llama-3.2-1b"]


def sweep(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)])


def test_a_synthetic_sweep_runs_offline_prints_the_table_and_goes_on(tmp_path):
    out = tmp_path / "sw"
    first = sweep("--grid", "n_in=64,128", "--grid", "n_out=8", "--requests", 5, *SIM, "--out", out)
    assert first.exit_code == 0, first.output
    assert "0 done already, 2 to run" in first.output and f"results: {out}/results.csv" in first.output
    assert "energy: modelled" in first.output
    assert yaml.safe_load((out / "sweep.yaml").read_text())["base"]["mode"] == "offline"
    table = pd.read_csv(out / "results.csv")
    assert list(table["n_in"]) == [64, 128] and list(table["finished"]) == [5, 5]
    again = sweep("--grid", "n_in=64,128", "--grid", "n_out=8", "--requests", 5, *SIM, "--out", out)
    assert again.exit_code == 0 and "2 done already, 0 to run" in again.output
    resumed = sweep("--resume", out)
    assert resumed.exit_code == 0 and "2 done already" in resumed.output
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)


def test_online_is_the_users_choice(tmp_path):
    result = sweep("--grid", "n_in=64", "--grid", "n_out=8", "--requests", 20, "--online", "--rate", 50, *SIM,
                   "--out", tmp_path / "sw")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(next((tmp_path / "sw").glob("0-*/config.yaml")).read_text())
    assert config["mode"] == "online" and config["arrival"] == "poisson" and config["rate_per_s"] == 50


def test_a_trace_sweep(tmp_path):
    result = sweep(TRACES / "code.jsonl", "--grid", "max_num_seqs=4,64", "--limit", 30, *SIM, "--out", tmp_path / "sw")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "sw" / "results.csv")
    assert list(table["max_num_seqs"]) == [4, 64] and list(table["finished"]) == [30, 30]


def test_a_different_grid_against_the_same_out_is_refused(tmp_path):
    assert sweep("--grid", "n_in=64", "--grid", "n_out=8", "--requests", 2, *SIM, "--out", tmp_path).exit_code == 0
    result = sweep("--grid", "n_in=64", "--grid", "n_out=16", "--requests", 2, *SIM, "--out", tmp_path)
    assert result.exit_code == 1
    assert "records another sweep (grid n_out: [8] there, [16] here)" in result.stderr


def test_usage_errors(tmp_path):
    no_out = sweep("--grid", "n_in=64")
    assert no_out.exit_code == 2 and "give --out DIR" in no_out.stderr
    bad_key = sweep("--grid", "batchsize=4", "--out", tmp_path / "a")
    assert bad_key.exit_code == 1 and "unknown key 'batchsize'; valid keys: n_in, n_out" in bad_key.stderr
    assert len(bad_key.stderr.strip().splitlines()) == 1
    (tmp_path / "b").mkdir()
    mixed = sweep("--resume", tmp_path / "b", "--grid", "n_in=64")
    assert mixed.exit_code == 2 and "drop grid" in mixed.stderr
    not_a_sweep = sweep("--resume", tmp_path / "b")
    assert not_a_sweep.exit_code == 1 and "no sweep.yaml: not a sweep directory" in not_a_sweep.stderr


def test_failed_points_are_shown_and_the_exit_status_says_so(tmp_path):
    result = sweep("--grid", "n_in=64", "--grid", "n_out=8", "--grid", "model=llama-3.2-1b,nope", "--engine", "sim",
                   "--requests", 2, "--out", tmp_path / "sw")
    assert result.exit_code == 1
    assert "failed 1-n_in=64,n_out=8,model=nope: unknown model 'nope'" in result.output
    assert "1 of 2 points failed" in result.stderr
