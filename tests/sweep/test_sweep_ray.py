"""Sweeps on Ray (replay.sweep.on_ray). Ray's local mode is gone from Ray 2.x (``ray.init(local_mode=True)``
raises), so the "local" cluster here is a one-CPU Ray started on this machine; the points are real Ray tasks in
Ray worker processes. Skipped where Ray is not installed."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from replay.config import RunConfig
from replay.sweep import SYNTHETIC, make_sweep, run_sweep
from replay.sweep.on_ray import _task_options, import_ray


def spec(out, **kw):
    config = RunConfig(trace=SYNTHETIC, engine="sim", mode="offline", model="llama-3.2-1b", out=str(out), **kw)
    return make_sweep(config, ["n_in=64,256", "n_out=8,32"], 6)


@pytest.fixture(scope="module")
def ray_here():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'replay-energy[ray]')")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_points_as_ray_tasks_give_the_same_run_directories_and_table(tmp_path, ray_here):
    here = run_sweep(spec(tmp_path / "here"))
    lines = []
    on_ray = run_sweep(spec(tmp_path / "ray"), ray="auto", echo=lines.append)
    assert ray_here.is_initialized()  # a Ray it did not start is left running
    assert "ray: simulated points run as CPU tasks (num_gpus=0)" in lines
    assert sum("done in" in line for line in lines) == 4
    pd.testing.assert_frame_equal(here.table, on_ray.table)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "here" / "results.csv"),
                                  pd.read_csv(tmp_path / "ray" / "results.csv"))
    for point in on_ray.spec.points():  # normal run directories, in the sweep directory
        assert (tmp_path / "ray" / point.name / "summary.json").exists()


def test_a_failing_point_on_ray_is_recorded_like_a_local_one(tmp_path, ray_here):
    config = RunConfig(trace=SYNTHETIC, engine="sim", mode="offline", out=str(tmp_path / "sw"))
    result = run_sweep(make_sweep(config, ["n_in=64", "n_out=8", "model=llama-3.2-1b,nope"], 2), ray="auto")
    assert list(result.table["status"]) == ["done", "failed"]
    assert "unknown model 'nope'" in result.table.loc[1, "error"]


def test_real_engine_points_ask_for_their_gpus_and_a_fresh_worker():
    vllm = spec("/tmp/unused", tp=2).points()[0]
    vllm = type(vllm)(vllm.index, vllm.name, vllm.values, RunConfig(trace="t", engine="vllm", tp=2, out="o"))
    assert _task_options(vllm, cluster_gpus=8) == {"num_gpus": 2, "max_calls": 1}
    assert _task_options(vllm, cluster_gpus=0) == {"num_gpus": 0, "max_calls": 1}
    sim = spec("/tmp/unused").points()[0]
    assert _task_options(sim, cluster_gpus=8) == {"num_gpus": 0, "max_calls": 0}


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ValueError, match=r"--ray needs Ray: pip install 'replay-energy\[ray\]'"):
        import_ray()
