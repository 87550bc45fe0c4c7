"""The sweep's table (replay.sweep.table): energy per static batch, the [Na25] batch-energy frame, "not measured"
never shown as 0, and the printed table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TRACES
from replay.config import RunConfig
from replay.sweep import SYNTHETIC, batch_energies, format_table, make_sweep, results_table, run_sweep

MODEL = "llama-3.2-1b"


def static_sweep(out: Path, grid, requests, **kw):
    config = RunConfig(trace=SYNTHETIC, mode="offline", model=MODEL, out=str(out), **{"engine": "sim", **kw})
    return run_sweep(make_sweep(config, list(grid), requests))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_energy_per_full_batch_is_the_runs_energy_split_over_its_batches(tmp_path):
    result = static_sweep(tmp_path / "sw", ["n_in=100,600", "n_out=20", "batch_size=4,8"], 16)
    for point, row in zip(result.spec.points(), result.table.to_dict("records")):
        steps_j = sum(s["energy_j"] for s in lines(Path(point.config.out) / "steps.jsonl"))
        batches = 16 // point.config.batch_size
        assert row["full_batches"] == batches
        assert row["energy_per_batch_j"] == pytest.approx(steps_j / batches, rel=1e-9)
        assert row["energy_per_batch_j"] == pytest.approx(row["energy_total_j"] / batches, rel=1e-9)  # no idle gap
    t = result.table.set_index(["n_in", "batch_size"])
    assert t.loc[(600, 8), "energy_per_batch_j"] > t.loc[(600, 4), "energy_per_batch_j"]  # more work a batch
    assert t.loc[(600, 8), "e_tok_j"] < t.loc[(600, 4), "e_tok_j"]  # but cheaper per token: the weights amortised


def test_a_last_smaller_batch_is_left_out_of_the_mean(tmp_path):
    result = static_sweep(tmp_path / "sw", ["n_in=64", "n_out=8", "batch_size=4"], 10)
    row = result.table.iloc[0]
    records = {r["id"]: r["energy_j"] for r in lines(Path(result.spec.points()[0].config.out) / "requests.jsonl")}
    firsts = [sum(records[f"synth-{i}"] for i in range(k * 4, k * 4 + 4)) for k in (0, 1)]
    assert row["full_batches"] == 2
    assert row["energy_per_batch_j"] == pytest.approx(sum(firsts) / 2)
    assert row["energy_per_batch_j"] > row["energy_total_j"] / 3  # the partial third batch would drag it down


def test_batch_energies_bin_the_points_as_na25_bins_requests(tmp_path):
    static_sweep(tmp_path / "sw", ["n_in=100,128,600", "n_out=8,20", "batch_size=4,8"], 8)
    table = results_table(tmp_path / "sw")
    every = batch_energies(tmp_path / "sw", every_batch_size=True)
    assert list(every.columns[:4]) == ["input_bin", "output_bin", "batch_size", "energy_j"]
    # 100 and 128 share the 128 bin: the point at the edge stands for it; 600 goes up to 1024; 20 up to 32
    assert sorted(set(zip(every["input_bin"], every["n_in"]))) == [(128, 128), (1024, 600)]
    assert sorted(set(zip(every["output_bin"], every["n_out"]))) == [(8, 8), (32, 20)]
    assert len(every) == 2 * 2 * 2 and not every.duplicated(["input_bin", "output_bin", "batch_size"]).any()
    by_point = table.set_index("dir")
    for row in every.to_dict("records"):
        assert row["energy_j"] == by_point.loc[row["point"], "energy_per_batch_j"]
        assert row["batch_size"] == by_point.loc[row["point"], "batch_size"]
        assert row["modelled"] is True and row["source"].startswith("modelled")
    assert every.attrs["left_out"] == {"not done": 0, "not static batches": 0, "energy not measured": 0,
                                       "above the largest bins": 0}
    # [Na25]'s B: the largest batch per bin, one row per bin (what the binned estimator takes)
    largest = batch_energies(tmp_path / "sw")
    assert len(largest) == 4 and set(largest["batch_size"]) == {8}
    assert not largest.duplicated(["input_bin", "output_bin"]).any()
    narrow = batch_energies(tmp_path / "sw", input_bins=(128, 256), output_bins=(8, 16, 32), every_batch_size=True)
    assert set(narrow["input_bin"]) == {128} and narrow.attrs["left_out"]["above the largest bins"] == 4


def test_batch_energies_of_auto_points_run_on_the_simulator_are_labelled_modelled(tmp_path, monkeypatch):
    """--engine auto (the CLI default) falls back to the simulated engine where vLLM is missing (faked so here):
    its batch energies are the power model's and say so, whatever the engine key in the grid's config."""
    from replay.engines import vllm
    monkeypatch.setattr(vllm, "available", lambda: False)
    static_sweep(tmp_path / "sw", ["n_in=64", "n_out=8", "batch_size=4"], 8, engine="auto")
    row = batch_energies(tmp_path / "sw").iloc[0]
    assert row["modelled"] and row["source"].startswith("modelled")


def test_a_batch_too_large_to_run_leaves_the_largest_that_ran_as_b(tmp_path, monkeypatch):
    import replay.sweep.runner as runner
    original = runner.execute

    def out_of_memory_above_8(config, **kw):
        if config.batch_size > 8:
            raise RuntimeError("CUDA out of memory (pretend)")
        return original(config, **kw)

    monkeypatch.setattr(runner, "execute", out_of_memory_above_8)
    result = static_sweep(tmp_path / "sw", ["n_in=128", "n_out=8", "batch_size=4,8,16"], 16)
    assert list(result.table["status"]) == ["done", "done", "failed"]
    frame = batch_energies(tmp_path / "sw")
    assert frame[["input_bin", "output_bin", "batch_size"]].values.tolist() == [[128, 8, 8]]
    assert frame.attrs["left_out"]["not done"] == 1


def test_the_frame_is_what_the_binned_estimator_takes(tmp_path):
    binned = pytest.importorskip("replay.estimate.binned")
    static_sweep(tmp_path / "sw", ["n_in=128,512", "n_out=8,32", "batch_size=4,8"], 8)
    clean = binned.check_batch_energies(batch_energies(tmp_path / "sw"))
    assert len(clean) == 4 and set(clean["batch_size"]) == {8}


def test_not_measured_is_null_and_said_never_zero(tmp_path):
    result = static_sweep(tmp_path / "sw", ["n_in=64", "n_out=8", "batch_size=2"], 4, meter="none")
    row = result.table.iloc[0]
    for name in ("energy_source", "energy_total_j", "energy_per_request_j", "e_tok_j", "energy_per_batch_j",
                 "output_tokens_per_j"):
        assert row[name] is None
    assert "meter none" in row["energy_not_measured_reason"]
    assert "not measured" in format_table(result.table, result.spec)
    assert ",,," in (tmp_path / "sw" / "results.csv").read_text().splitlines()[1]  # empty CSV cells, not 0
    with pytest.raises(ValueError, match=r"no point gives a batch energy \(1 energy not measured\)"):
        batch_energies(tmp_path / "sw")


def test_batch_energies_need_static_batches_of_a_synthetic_sweep(tmp_path):
    static_sweep(tmp_path / "cb", ["n_in=64", "n_out=8"], 4)
    with pytest.raises(ValueError, match=r"\(1 not static batches\).*--offline --batch-size B"):
        batch_energies(tmp_path / "cb")
    config = RunConfig(trace=str(TRACES / "code.jsonl"), engine="sim", model=MODEL, limit=8, mode="offline",
                       out=str(tmp_path / "tr"))
    run_sweep(make_sweep(config, ["batch_size=4"]))
    with pytest.raises(ValueError, match="batch energies need a synthetic sweep"):
        batch_energies(tmp_path / "tr")


def test_the_printed_table_has_a_row_per_point_and_names_the_energy_source(tmp_path):
    result = static_sweep(tmp_path / "sw", ["n_in=64,128", "n_out=8", "batch_size=2"], 4)
    text = format_table(result.table, result.spec).splitlines()
    assert text[0].split()[:4] == ["n_in", "n_out", "batch_size", "status"] and "J/batch" in text[0]
    assert [line.split()[:4] for line in text[1:3]] == [["64", "8", "2", "done"], ["128", "8", "2", "done"]]
    assert text[3] == "energy: modelled (simulated engine's power model)"


def test_an_axis_named_like_a_metric_gets_a_grid_prefix(tmp_path):
    config = RunConfig(trace=str(TRACES / "chat.jsonl"), engine="sim", model=MODEL, out=str(tmp_path / "sw"))
    table = run_sweep(make_sweep(config, ["duration_s=5,10"])).table
    assert list(table["grid_duration_s"]) == [5.0, 10.0]
    assert table["duration_s"].iloc[0] < table["duration_s"].iloc[1]  # the run's duration, from its summary
