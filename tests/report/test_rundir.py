"""replay.report.rundir: a finished run directory read back (a real simulated run), the same records from the
RunResult, and clear errors naming the file for a missing, interrupted or broken run directory."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import TRACES
from replay.config import RunConfig
from replay.report.rundir import energy_kind, from_result, load_run
from replay.run import execute


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "run"
    config = RunConfig(trace=str(TRACES / "chat.jsonl"), engine="sim", duration_s=20.0, out=str(out))
    return execute(config, progress=False)


def test_load_run_reads_every_file(sim):
    run = load_run(sim.out)
    assert run.config["engine"] == "sim" and run.engine["gpu"] == "h100-sxm"
    assert len(run.requests) == len(sim.requests) and len(run.steps) == len(sim.steps)
    assert run.summary == json.loads((sim.out / "summary.json").read_text())["summary"]
    assert run.timeline is None                              # a simulated run writes no power.csv
    assert run.energy_kind == "modelled" and run.energy_reason is None
    assert list(run.requests["id"]) == list(sim.requests["id"])


def test_from_result_holds_the_same_records(sim):
    run = from_result(sim)
    disk = load_run(sim.out)
    assert run.energy_kind == disk.energy_kind
    assert run.summary == disk.summary
    pd.testing.assert_series_equal(run.requests["energy_j"], disk.requests["energy_j"], check_names=False)
    assert run.config["model"] == disk.config["model"] and run.engine == disk.engine


def test_energy_kind():
    assert energy_kind(None) is None
    assert energy_kind("modelled (simulated engine's power model)") == "modelled"
    assert energy_kind("measured (nvml total-energy counter)") == "measured"


def _copy(sim, tmp_path, skip=()):
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("config.yaml", "requests.jsonl", "steps.jsonl", "summary.json"):
        if name not in skip:
            (out / name).write_bytes((sim.out / name).read_bytes())
    return out


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'nope'}: no such run directory"):
        load_run(tmp_path / "nope")


def test_a_file_is_not_a_run_directory(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a directory"):
        load_run(tmp_path / "x.txt")


def test_no_config_yaml(sim, tmp_path):
    with pytest.raises(ValueError, match="no config.yaml: not a run directory"):
        load_run(_copy(sim, tmp_path, skip=("config.yaml",)))


def test_interrupted_run_says_how_to_finish_it(sim, tmp_path):
    out = _copy(sim, tmp_path, skip=("summary.json",))
    with pytest.raises(ValueError, match=f"no summary.json: the run did not finish; go on with: replay run --resume {out}"):
        load_run(out)


def test_broken_files_are_named(sim, tmp_path):
    out = _copy(sim, tmp_path)
    (out / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"summary.json: not valid JSON"):
        load_run(out)
    (out / "summary.json").write_text(json.dumps({"engine": {}}))
    with pytest.raises(ValueError, match=r"summary.json: missing key 'summary'"):
        load_run(out)
    (out / "summary.json").write_bytes((sim.out / "summary.json").read_bytes())
    lines = (out / "requests.jsonl").read_text().splitlines()
    (out / "requests.jsonl").write_text("\n".join([lines[0], "{cut", *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"requests.jsonl:2: not a JSON record"):
        load_run(out)
    (out / "requests.jsonl").write_bytes((sim.out / "requests.jsonl").read_bytes())
    (out / "steps.jsonl").unlink()
    with pytest.raises(ValueError, match=r"steps.jsonl: missing"):
        load_run(out)
    (out / "steps.jsonl").write_text('{"replica": 0}\n')
    with pytest.raises(ValueError, match=r"steps.jsonl: missing field 'step'"):
        load_run(out)
    (out / "config.yaml").write_text("engine: [sim\n")
    with pytest.raises(ValueError, match=r"config.yaml: not valid YAML"):
        load_run(out)


def test_a_broken_power_csv_is_named(sim, tmp_path):
    out = _copy(sim, tmp_path)
    (out / "power.csv").write_text("time_s,gpu0_cumulative_j\n0,0\n1,\n")
    with pytest.raises(ValueError, match=r"power.csv: row 3"):
        load_run(out)
