"""The server engine's parts that need no server: URLs, --launch commands (their environment, tensor-parallel
size and address), the GPUs a server run measures, a launch that fails, the run options' checks, and
bench.json beside the summary. The server itself is tested in test_http.py and test_http_launch.py."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from conftest import TRACES
from replay.cli import main
from replay.config import RunConfig
from replay.engines.http import check_url, is_local, launch, launch_settings, server_gpus
from replay.report.metrics import Energy, summarize
from replay.run import execute

CHAT = str(TRACES / "chat.jsonl")


def test_urls():
    assert check_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_url("http://host:8000/v1") == "http://host:8000"
    for bad in ("127.0.0.1:8000", "ftp://x", "http://"):
        with pytest.raises(ValueError, match="expected an http:// or https:// URL"):
            check_url(bad)
    assert is_local("http://localhost:1") and is_local("http://127.0.0.2:1") and not is_local("http://10.1.2.3:1")


def test_launch_settings_read_the_environment_tp_and_address_of_the_command():
    argv, env, tp, url = launch_settings("CUDA_VISIBLE_DEVICES=2,3 VLLM_X=1 vllm serve m --port 8123 -tp 2")
    assert argv[:3] == ["vllm", "serve", "m"] and env == {"CUDA_VISIBLE_DEVICES": "2,3", "VLLM_X": "1"}
    assert (tp, url) == (2, "http://127.0.0.1:8123")
    assert launch_settings("vllm serve m --host 0.0.0.0 --tensor-parallel-size=4")[2:] == (4, "http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="no command to run"):
        launch_settings("A=1")
    with pytest.raises(ValueError, match="expected an integer >= 1"):
        launch_settings("vllm serve m -tp two")


def test_the_gpus_a_server_run_measures():
    assert server_gpus("0, GPU-abc", None, None) == ([0, "GPU-abc"], "--target-gpus 0, GPU-abc")
    gpus, why = server_gpus(None, "CUDA_VISIBLE_DEVICES=3,1 vllm serve m -tp 2", None)
    assert gpus == [3, 1] and "tp 2" in why
    assert server_gpus(None, None, ["http://127.0.0.1:8000"])[0] is None          # a local server: all GPUs here
    with pytest.raises(ValueError, match="not on this machine"):
        server_gpus(None, None, ["http://10.0.0.7:8000"])
    with pytest.raises(ValueError, match="neither a GPU index nor"):
        server_gpus("gpu0", None, None)


def test_a_remote_server_is_not_measured_and_says_why(tmp_path):
    """No server answers there, but the meter is chosen first: the reason would be in every output."""
    from replay.run import _meter, _meters
    config = RunConfig(trace=CHAT, engine="server", targets=["http://10.0.0.7:8000"])
    meter, choice = _meter(config, _meters(config, {}, lambda: 0.0))
    assert meter is None and "not measured" in choice["reason"] and "not on this machine" in choice["reason"]
    with pytest.raises(ValueError, match="--meter nvml: not available here"):
        _meter(RunConfig(trace=CHAT, engine="server", targets=["http://10.0.0.7:8000"], meter="nvml"),
               _meters(config, {}, lambda: 0.0))


def test_a_launch_that_exits_or_never_gets_ready_is_one_line_naming_its_log(tmp_path):
    port = 1 + (hash(str(tmp_path)) % 20000) + 30000
    exits = f"{sys.executable} -c \"print('no GPU found'); raise SystemExit(3)\" --port {port}"
    with pytest.raises(ValueError, match=r"exited with code 3 before it was ready.*last line: no GPU found"):
        launch(exits, tmp_path / "a.log", timeout_s=30, say=lambda _line: None)
    sleeps = f"{sys.executable} -c \"import time; time.sleep(60)\" --port {port}"
    with pytest.raises(ValueError, match=r"not ready at .* after 1 s \(stopped\)"):
        launch(sleeps, tmp_path / "b.log", timeout_s=1, say=lambda _line: None)


def test_run_options_for_a_server_are_checked():
    with pytest.raises(ValueError, match="--target and --launch drive a running server"):
        RunConfig(trace=CHAT, engine="sim", targets=["http://x:1"])
    with pytest.raises(ValueError, match="needs the server's URL"):
        RunConfig(trace=CHAT, engine="server")
    with pytest.raises(ValueError, match="replay starts one server"):
        RunConfig(trace=CHAT, engine="auto", launch="vllm serve m", targets=["http://a:1", "http://b:1"])
    with pytest.raises(ValueError, match="request_timeout_s"):
        RunConfig(trace=CHAT, engine="server", targets=["http://a:1"], request_timeout_s=0)
    result = CliRunner().invoke(main, ["run", CHAT, "--target", "localhost:8000"])
    assert result.exit_code != 0 and "expected an http:// or https:// URL" in result.output


def test_bench_json_holds_vllm_bench_fields_beside_the_summary(tmp_path):
    out = tmp_path / "run"
    result = execute(RunConfig(trace=CHAT, engine="sim", duration_s=60.0, out=str(out)), progress=False)
    bench = json.loads((out / "bench.json").read_text())
    s = result.summary
    assert bench["completed"] == s.finished and bench["num_prompts"] == s.requests
    for metric, dist in (("ttft", s.ttft), ("tpot", s.tpot), ("itl", s.itl), ("e2el", s.e2el)):
        assert bench[f"mean_{metric}_ms"] == pytest.approx(dist.mean_s * 1000)
        assert bench[f"median_{metric}_ms"] == pytest.approx(dist.median_s * 1000)
        assert bench[f"p99_{metric}_ms"] == pytest.approx(dist.p99_s * 1000)
        assert bench[f"std_{metric}_ms"] > 0
    assert bench["output_throughput"] == pytest.approx(s.output_throughput)
    assert len(bench["ttfts"]) == len(bench["input_lens"]) == len(bench["itls"]) == s.requests
    assert bench["energy_source"] == s.energy_source and bench["energy_total_j"] == pytest.approx(s.energy_total_j)


def test_failures_are_counted_by_kind_and_flat_in_the_summary():
    import pandas as pd
    rows = [{"id": str(i), "status": st, "error": err, "input_tokens": 5, "generated_tokens": 2, "preemptions": 0,
             "ttft_s": 0.1, "tpot_s": 0.01, "e2e_s": 0.2, "queue_s": None, "finished_s": 1.0, "arrival_s": 0.0,
             "submitted_s": 0.0, "replica": 0, "token_steps": [[0, 2]]}
            for i, (st, err) in enumerate([("finished", None), ("failed", "timeout"), ("failed", "http 503"),
                                           ("failed", "timeout"), ("rejected", "http 400")])]
    from replay.server import STEP_FIELDS
    steps = pd.DataFrame({name: [0, 0] for name in STEP_FIELDS}).assign(step=[0, 1], end_s=[0.5, 1.0])
    s = summarize(pd.DataFrame(rows), steps, Energy(source=None, reason="test"))
    assert (s.finished, s.failed, s.rejected) == (1, 3, 1)
    assert s.failures == (("http 503", 1), ("timeout", 2))
    d = s.to_dict()
    assert d["failed_timeout"] == 2 and d["failed_http_503"] == 1
