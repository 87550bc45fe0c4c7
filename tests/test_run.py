"""Whole runs through ``execute``: arrival processes end to end (rate and burstiness from the records, seeds,
speed-up, rate scaling, untimed traces), [Na25] static batches and plain offline runs, the run directory, tensor
parallelism and the KV budget, and prefix caching on the Mooncake trace."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import DATA, TRACES, interrupt_after
from test_server import check_records, runs_to_steps

from replay.arrivals import UNTIMED_MESSAGE
from replay.config import RunConfig
from replay.engines.sim.engine import NON_TORCH_BYTES, SimEngine, kv_budget
from replay.integrity import LOCK_FILE
from replay.report.metrics import format_summary
from replay.run import RUN_FILES, RunResult, execute, resume
from replay.specs import hardware, model
from replay.trace import read_trace
from replay.trace.schema import Request

CHAT, CODE = str(TRACES / "chat.jsonl"), str(TRACES / "code.jsonl")
LLAMA, H100 = model("llama-3.1-8b"), hardware("h100-sxm")


def run(trace: str = CHAT, **kw) -> RunResult:
    result = execute(RunConfig(trace=trace, **kw), progress=False)
    check_records(result.requests, result.steps, result.config.max_num_batched_tokens, result.config.max_num_seqs)
    return result


def in_trace_order(result: RunResult) -> pd.DataFrame:
    """The request records in workload order (the bundled traces' ids are row numbers; copies '<id>#k')."""
    def key(rid: str) -> tuple[int, int]:
        base, _, copy = rid.partition("#")
        return int(base), int(copy or 1)
    df = result.requests
    return df.iloc[sorted(range(len(df)), key=lambda i: key(df["id"].iloc[i]))].reset_index(drop=True)


@cache
def trace(path: str) -> tuple[Request, ...]:
    return tuple(read_trace(path))


def trace_times(path: str, n: int) -> dict[str, float]:
    return {r.id: r.arrival_s for r in trace(path)[:n]}


# --- arrival processes, end to end --------------------------------------------------------------------------

@pytest.mark.parametrize("rate, cv", [(40.0, None), (40.0, 2.0), (8.0, 0.5)])
def test_rate_and_burstiness_of_a_whole_run(rate, cv):
    n = 2000
    result = run(CODE, limit=n, rate_per_s=rate, cv=cv, seed=7, kv_blocks=20_000)
    assert result.config.arrival == ("poisson" if cv is None else "gamma")
    cv = 1.0 if cv is None else cv
    df = in_trace_order(result)
    assert len(df) == n and (df["status"] == "finished").all()
    t = df["arrival_s"].to_numpy()
    assert t[0] == 0.0 and (np.diff(t) >= 0).all()
    assert (df["submitted_s"] == df["arrival_s"]).all()
    m = n - 1
    # t[-1] is a sum of m gaps of mean 1/rate and CV cv: the rate estimate has relative standard error cv/sqrt(m);
    # the sample CV of gamma gaps has standard error about cv * sqrt((1 + cv^2) / (2m)). Four standard errors:
    assert abs(m / t[-1] / rate - 1) < 4 * cv / math.sqrt(m)
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - cv) < 4 * cv * math.sqrt((1 + cv**2) / (2 * m))
    original = trace_times(CODE, n)
    assert not np.allclose(t, [original[i] for i in df["id"]])  # re-timed, not the trace's own times
    assert (df["input_tokens"].tolist(), df["output_tokens"].tolist()) == (
        [r.input_tokens for r in trace(CODE)[:n]], [r.output_tokens for r in trace(CODE)[:n]])


def test_same_seed_same_bytes_other_seed_other_arrivals(tmp_path):
    kw = dict(trace=CHAT, limit=150, rate_per_s=12.0, cv=1.5, kv_blocks=400, max_num_batched_tokens=1024)
    a = execute(RunConfig(**kw, seed=5, out=str(tmp_path / "a")), progress=False)
    execute(RunConfig(**kw, seed=5, out=str(tmp_path / "b")), progress=False)
    assert a.summary.preemptions > 0  # a run with preemptions and queueing, not a trivial one
    for name in ("requests.jsonl", "steps.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    ca, cb = (yaml.safe_load((tmp_path / d / "config.yaml").read_text()) for d in "ab")
    assert {**ca, "out": None} == {**cb, "out": None}
    c = execute(RunConfig(**kw, seed=6), progress=False)
    ta, tc = in_trace_order(a)["arrival_s"].to_numpy(), in_trace_order(c)["arrival_s"].to_numpy()
    assert (ta != tc).sum() >= len(ta) - 1  # all but the first (0) differ


def test_timed_speedup_divides_arrival_times():
    n = 200
    one = in_trace_order(run(CHAT, limit=n))
    two = in_trace_order(run(CHAT, limit=n, speedup=2.0))
    original = trace_times(CHAT, n)
    assert one["arrival_s"].tolist() == [original[i] for i in one["id"]]
    assert two["arrival_s"].tolist() == [original[i] / 2.0 for i in two["id"]]
    assert (two["arrival_s"] * 2.0 == one["arrival_s"]).all()
    assert two["ttft_s"].mean() >= one["ttft_s"].mean()  # twice the load waits at least as long on average


def test_rate_scale_compress_and_thin_dup():
    n = 300
    original = trace_times(CHAT, n)
    base = in_trace_order(run(CHAT, limit=n))
    comp = in_trace_order(run(CHAT, limit=n, rate_scale=2.0))
    assert comp["id"].tolist() == base["id"].tolist()  # the same requests, the timeline halved
    assert comp["arrival_s"].tolist() == [original[i] / 2.0 for i in comp["id"]]
    thin = in_trace_order(run(CHAT, limit=n, rate_scale=1.5, rate_scale_how="thin-dup", seed=3))
    # each request once, plus a copy with probability 0.5: the count is binomial around 1.5 n
    assert abs(len(thin) - 1.5 * n) <= 4 * math.sqrt(n * 0.25)
    ids = thin["id"].tolist()
    assert len(set(ids)) == len(ids) and set(original) <= {i.partition("#")[0] for i in ids}
    for rid, t in zip(ids, thin["arrival_s"]):
        base_id, _, copy = rid.partition("#")
        if copy:
            assert copy == "2" and t >= original[base_id]
        else:
            assert t == original[base_id]  # the timeline is kept
    t_end = max(original.values())
    assert thin["arrival_s"].max() <= t_end and comp["arrival_s"].max() == t_end / 2.0


def lengths_csv(tmp_path, n: int = 40):
    """A length-only CSV (no arrival times) of the first n chat requests."""
    path = tmp_path / "lengths.csv"
    rows = [(r.input_tokens, r.output_tokens) for r in trace(CHAT)[:n]]
    path.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def test_untimed_trace_needs_an_arrival_process(tmp_path):
    path = lengths_csv(tmp_path)
    with pytest.raises(ValueError) as exc:
        execute(RunConfig(trace=str(path)), progress=False)  # online, timed: the default
    assert str(exc.value) == UNTIMED_MESSAGE
    with pytest.raises(ValueError, match="needs --rate"):
        execute(RunConfig(trace=str(path), arrival="poisson"), progress=False)
    with pytest.raises(ValueError, match="no arrival times"):
        execute(RunConfig(trace=str(path), rate_per_s=2.0, rate_scale=2.0), progress=False)
    result = run(str(path), rate_per_s=4.0)
    assert len(result.requests) == 40 and (result.requests["status"] == "finished").all()
    assert run(str(path), mode="offline").requests["arrival_s"].eq(0.0).all()


def test_a_run_that_cannot_start_leaves_no_run_directory(tmp_path):
    """Regression: the arrival process is checked against the workload before the run directory is written, so
    a run that never started does not make the corrected rerun need --force."""
    path, out = lengths_csv(tmp_path), tmp_path / "run"
    with pytest.raises(ValueError, match="no arrival times"):
        execute(RunConfig(trace=str(path), out=str(out)), progress=False)
    assert not out.exists() or not any(out.iterdir())
    execute(RunConfig(trace=str(path), rate_per_s=2.0, out=str(out)), progress=False)  # the corrected rerun


def test_closed_loop_keeps_the_concurrency():
    c = 4
    df = in_trace_order(run(CHAT, limit=80, concurrency=c))
    start, end = df["submitted_s"].to_numpy(), df["finished_s"].to_numpy()
    assert (start[:c] == 0).all()
    for t in start:  # just after each submit: at most c requests submitted and not finished
        assert ((start <= t) & (end > t)).sum() <= c
    assert set(start[c:]) <= set(end)  # each later request went when an earlier one finished


# --- offline -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b, kv_blocks", [(8, None), (5, 300)])
def test_static_batches_one_at_a_time(b, kv_blocks):
    n = 43
    result = run(CHAT, limit=n, mode="offline", batch_size=b, kv_blocks=kv_blocks)
    assert result.config.arrival == "static"
    df = in_trace_order(result)
    assert (df["status"] == "finished").all()
    batches = [df.iloc[i:i + b] for i in range(0, n, b)]
    assert batches[0]["arrival_s"].eq(0.0).all()
    for before, after in zip(batches, batches[1:]):
        assert after["arrival_s"].nunique() == 1
        assert after["arrival_s"].min() == before["finished_s"].max()  # submitted when the last one finished
    # the engine never holds requests of two batches: every step serves one batch only
    batch_of = {rid: i // b for i, rid in enumerate(df["id"])}
    serving: dict[int, set[int]] = {}
    for rid, token_steps in zip(df["id"], df["token_steps"]):
        for k in runs_to_steps(token_steps):
            serving.setdefault(k, set()).add(batch_of[rid])
    assert all(len(s) == 1 for s in serving.values())
    steps = result.steps
    assert (steps["running"] + steps["waiting"] <= b).all()
    if kv_blocks is not None:
        assert result.summary.preemptions > 0


def test_offline_everything_at_zero_and_the_queue_drains():
    n = 120
    result = run(CHAT, limit=n, mode="offline")
    assert result.config.arrival == "offline"
    df = result.requests
    assert len(df) == n and df["arrival_s"].eq(0.0).all() and (df["status"] == "finished").all()
    steps = result.steps
    assert steps["start_s"].iloc[0] == 0.0
    queued = (steps["running"] + steps["waiting"]).to_numpy()
    assert queued[0] + (df["finished_s"] == steps["end_s"].iloc[0]).sum() == n
    assert (np.diff(steps["waiting"].to_numpy()) <= 0).all()  # nothing arrives later; nothing is preempted
    assert queued[-1] == 0 and df["finished_s"].max() == steps["end_s"].iloc[-1]


# --- the run directory -----------------------------------------------------------------------------------------

def test_run_directory_holds_the_results(tmp_path):
    out = tmp_path / "run"
    result = execute(RunConfig(trace=CHAT, limit=120, kv_blocks=500, out=str(out)), progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, LOCK_FILE])   # .lock: see integrity.py
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["trace"] == CHAT and config["arrival"] == "timed" and config["limit"] == 120
    assert config["resolved_engine"]["kv_blocks"] == 500 == result.engine["kv_blocks"]
    steps = pd.DataFrame([json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()])
    pd.testing.assert_frame_equal(steps, result.steps, check_dtype=False, check_exact=True)
    requests = pd.DataFrame([json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()])
    pd.testing.assert_frame_equal(requests, result.requests, check_dtype=False, check_exact=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"] == result.summary.to_dict()
    assert summary["simulation"]["steps"] == len(result.steps) and summary["simulation"]["requests"] == 120

    with pytest.raises(ValueError, match="already holds a run.*--force"):
        execute(RunConfig(trace=CHAT, limit=10, out=str(out)), progress=False)
    assert len((out / "requests.jsonl").read_text().splitlines()) == 120  # untouched
    again = execute(RunConfig(trace=CHAT, limit=10, out=str(out)), force=True, progress=False)
    assert len((out / "requests.jsonl").read_text().splitlines()) == 10 == len(again.requests)
    assert len((out / "steps.jsonl").read_text().splitlines()) == len(again.steps)


# --- tensor parallelism and the KV budget ------------------------------------------------------------------------

def test_kv_budget_splits_weights_and_kv_heads_over_tp():
    budgets = {tp: kv_budget(LLAMA, H100, tp) for tp in (1, 2, 4)}
    for tp, b in budgets.items():
        assert b.weight_bytes == LLAMA.weight_bytes / tp
        assert b.usable_bytes == pytest.approx(0.9 * H100.memory_bytes)
        per_block = 2 * LLAMA.num_layers * max(1, LLAMA.num_kv_heads / tp) * LLAMA.head_dim * LLAMA.dtype_bytes * 16
        assert b.kv_bytes_per_block == per_block
        free = b.usable_bytes - b.weight_bytes - b.activation_bytes - b.non_torch_bytes
        assert b.non_torch_bytes == NON_TORCH_BYTES and b.activation_bytes > 0
        assert b.num_blocks > 0 and b.num_blocks * per_block <= free < (b.num_blocks + 1) * per_block
    assert budgets[1].num_blocks < budgets[2].num_blocks < budgets[4].num_blocks
    assert budgets[2].num_blocks > 2 * budgets[1].num_blocks  # half the weights and half of each block per GPU
    assert kv_budget(LLAMA, H100, 1, gpu_memory_utilization=0.5).num_blocks < budgets[1].num_blocks
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="gpu_memory_utilization"):
            kv_budget(LLAMA, H100, 1, gpu_memory_utilization=bad)


def test_a_model_that_does_not_fit_is_a_clear_error(tmp_path):
    big = model("llama-3.1-70b")
    with pytest.raises(ValueError) as exc:
        kv_budget(big, H100, 1)
    text = str(exc.value)
    assert "does not fit" in text and big.key in text and "--tp" in text and "weights" in text
    assert kv_budget(big, H100, 4).num_blocks > 0
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="does not fit"):
        execute(RunConfig(trace=CHAT, limit=5, model="llama-3.1-70b", out=str(out)), progress=False)
    assert not out.exists()  # nothing written for a run that could not start
    assert execute(RunConfig(trace=CHAT, limit=5, model="llama-3.1-70b", tp=4), progress=False).summary.finished == 5


def single_step(engine: SimEngine):
    """One iteration and no more (the next request could arrive at once, so no fused decode run)."""
    step = engine.step(0.0)
    assert getattr(step, "run", None) is None
    return step


def test_tp2_steps_are_faster_for_the_same_batches():
    requests = [Request(r.id, 0.0, r.input_tokens, r.output_tokens) for r in trace(CHAT)[:40]]
    engines = {tp: SimEngine(LLAMA, H100, tp=tp, num_blocks=20_000) for tp in (1, 2)}
    for e in engines.values():
        for r in requests:
            assert e.add(r) is None
    count = 0
    while engines[1].has_work():
        one, two = single_step(engines[1]), single_step(engines[2])
        assert one.shape == two.shape and one.emitted == two.emitted  # the same batch
        assert two.duration_s < one.duration_s
        count += 1
    assert not engines[2].has_work() and count > 100


def test_tp2_run_has_more_kv_and_shorter_steps():
    kw = dict(trace=CHAT, limit=100, mode="offline")
    one, two = run(**kw), run(**kw, tp=2)
    assert two.engine["kv_blocks"] > 2 * one.engine["kv_blocks"] and two.engine["gpus"] == 2
    cols = ["prefill_tokens", "decode_tokens", "num_seqs"]
    assert one.summary.preemptions == two.summary.preemptions == 0
    pd.testing.assert_frame_equal(one.steps[cols], two.steps[cols])  # ample KV either way: the same schedule
    assert (two.steps["duration_s"] < one.steps["duration_s"]).all()


# --- prefix caching on the Mooncake trace --------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["sample", "shared"])
def test_mooncake_with_prefix_caching_hits(source, request):
    if source == "sample":
        path = DATA / "mooncake_head.jsonl"
    else:
        path = request.getfixturevalue("shared_data") / "mooncake" / "synthetic_trace.jsonl"
        if not path.exists():
            pytest.skip(f"{path} is absent")
    on = run(str(path), limit=200, prefix_caching=True)
    off = run(str(path), limit=200, prefix_caching=False)
    fin = on.requests[on.requests["status"] == "finished"]
    # hits at each request's first admission (a re-admission's own blocks are not hits: issue 12, item 13); at
    # this load most shared prefixes are still being computed when the next request comes
    assert (fin["cached_tokens"] > 0).sum() >= 3
    assert (off.requests["cached_tokens"] == 0).all()
    assert (fin["cached_tokens"] < fin["input_tokens"]).all()       # never the whole prompt
    assert on.steps["prefill_tokens"].sum() < off.steps["prefill_tokens"].sum()


# --- interrupted runs ------------------------------------------------------------------------------------------

def interrupted_run(tmp_path, monkeypatch, after: int, **options):
    """A run stopped by Ctrl-C (KeyboardInterrupt) after ``after`` request records, as a user would stop it."""
    config = RunConfig(trace=str(TRACES / "chat.jsonl"), limit=300, out=str(tmp_path / "run"), **options)
    interrupt_after(monkeypatch, after, lambda: execute(config, progress=False))
    return config


@pytest.mark.parametrize("options", [{}, {"replicas": 2, "rate_scale": 3.0}, {"arrival": "closed", "concurrency": 8},
                                     {"mode": "offline", "batch_size": 40}])
def test_resume_finishes_the_same_requests_as_one_whole_run(tmp_path, monkeypatch, options):
    config = interrupted_run(tmp_path, monkeypatch, 120, **options)
    out = Path(config.out)
    kept = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(kept) == 120 and not (out / "summary.json").exists()
    steps_before = (out / "steps.jsonl").read_text().splitlines()
    with open(out / "requests.jsonl", "ab") as f:  # an interruption can also cut a line short
        f.write(b'{"id": "27", "kind": "ch')
    result = resume(out, progress=False)
    whole = execute(replace(config, out=None), progress=False)
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 300                        # nobody served twice, nobody lost
    assert set(ids) == set(whole.requests["id"])
    assert records[:120] == kept                                   # what was finished is kept as it was
    assert all(r["generated_tokens"] == r["output_tokens"] for r in records)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps[:len(steps_before)] == [json.loads(line) for line in steps_before]
    for replica in {s["replica"] for s in steps}:                  # numbering and the clock go on
        mine = [s for s in steps if s["replica"] == replica]
        assert [s["step"] for s in mine] == list(range(len(mine)))
        assert all(a["end_s"] <= b["start_s"] for a, b in zip(mine, mine[1:]))
    assert result.summary.finished == 300
    assert json.loads((out / "summary.json").read_text())["summary"]["finished"] == 300
    if "arrival" not in options and "mode" not in options:         # open loop: arrival times are the trace's
        by_id = {r["id"]: r["arrival_s"] for r in records}
        assert all(by_id[i] == pytest.approx(t) for i, t in zip(whole.requests["id"], whole.requests["arrival_s"]))


def test_resume_refuses_a_complete_run_and_a_non_run(tmp_path):
    config = RunConfig(trace=str(TRACES / "code.jsonl"), limit=10, out=str(tmp_path / "run"))
    execute(config, progress=False)
    with pytest.raises(ValueError, match="complete"):
        resume(tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="not a run directory"):
        resume(tmp_path, progress=False)


def test_meter_none_on_the_simulator_says_not_measured_never_zero(tmp_path):
    result = execute(RunConfig(trace=str(TRACES / "code.jsonl"), limit=30, meter="none", out=str(tmp_path / "r")),
                     progress=False)
    s = result.summary
    assert s.energy_source is None and s.energy_total_j is None and s.energy_per_request_j is None
    assert "not measured" in s.energy_not_measured_reason or "--meter none" in s.energy_not_measured_reason
    doc = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert doc["meter"]["meter"] == "none" and doc["summary"]["energy_total_j"] is None
    records = [json.loads(line) for line in (tmp_path / "r" / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 30 and all(r["energy_j"] is None for r in records)
    assert result.requests["energy_j"].isna().all()


def test_the_real_engine_is_refused_clearly_where_vllm_is_missing_or_misused(tmp_path):
    from replay.engines import vllm
    config = RunConfig(trace=str(TRACES / "code.jsonl"), limit=5, engine="vllm", out=str(tmp_path / "r"))
    if not vllm.available():
        with pytest.raises(ValueError, match="needs vLLM"):
            execute(config, progress=False)
    with pytest.raises(ValueError, match="one replica per process"):
        execute(replace(config, replicas=2), progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("gpu", [False, True])
def test_the_real_engines_defaults_are_chosen_and_said(monkeypatch, tmp_path, gpu):
    """--engine vllm without a model or a window: the tiny model and the trace's first 120 s without a GPU (an
    untimed trace: its first 500 requests), Llama-3.1-8B and the whole trace with one. The GPU is faked at
    its boundary (NVML's device count), as this machine has none."""
    import replay.run as run
    monkeypatch.setattr(run, "_has_nvidia_gpu", lambda: gpu)
    config, notes = run.choose_engine(RunConfig(trace=CHAT, engine="vllm"))
    assert config.model == ("llama-3.1-8b" if gpu else "tiny-llama")
    assert config.duration_s == (None if gpu else run.CPU_WINDOW_S) and config.limit is None
    assert any("model:" in n for n in notes) and any("bound:" in n for n in notes) != gpu
    untimed = tmp_path / "untimed.jsonl"
    untimed.write_text("".join(json.dumps({"id": str(i), "arrival_s": None, "input_tokens": 10,
                                           "output_tokens": 5}) + "\n" for i in range(3)))
    config, _ = run.choose_engine(RunConfig(trace=str(untimed), engine="vllm", mode="offline"))
    assert (config.limit, config.duration_s) == ((None, None) if gpu else (run.CPU_LIMIT, None))
    for given in ({"limit": 7}, {"duration_s": 5.0}, {"start_s": 1.0}, {"model": "tiny-llama"}):
        config, notes = run.choose_engine(RunConfig(trace=CHAT, engine="vllm", **given))
        assert all(getattr(config, k) == v for k, v in given.items())
        assert ("model" in given) == (not any("model:" in n for n in notes))
    assert run.choose_engine(RunConfig(trace=CHAT, engine="sim")) == (RunConfig(trace=CHAT, engine="sim"), [])


def test_auto_is_the_real_engine_where_installed_and_allowed(monkeypatch):
    """auto: vllm where the package is importable (its presence faked both ways) and the options allow, with
    the reason said when it falls back to the simulated engine."""
    import replay.run as run
    from replay.engines import vllm
    monkeypatch.setattr(run, "_has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(vllm, "available", lambda: True)
    config, notes = run.choose_engine(RunConfig(trace=CHAT, engine="auto"))
    assert config.engine == "vllm" and "real vLLM engine" in notes[0]
    for options, why in (({"replicas": 2}, "--replicas 2"), ({"perf": "perf.yaml"}, "--perf")):
        config, notes = run.choose_engine(RunConfig(trace=CHAT, engine="auto", **options))
        assert config.engine == "sim" and why in notes[0] and config.duration_s is None
    monkeypatch.setattr(vllm, "available", lambda: False)
    config, notes = run.choose_engine(RunConfig(trace=CHAT, engine="auto"))
    assert config.engine == "sim" and "not installed" in notes[0]
    result = execute(RunConfig(trace=CHAT, engine="auto", limit=20), progress=False)
    assert result.config.engine == "sim" and result.summary.finished == 20


# --- the GPU a real engine runs on -----------------------------------------------------------------------------

def test_gpu_not_given_is_the_one_nvml_names_here(monkeypatch):
    """--gpu not given: a real engine takes the hardware NVML names (NVML faked at the module boundary: this
    machine has no GPU); an unknown name falls back to the default and says so; a given --gpu is kept."""
    import sys

    from energy.energy_fakes import FakeNvml

    from replay.run import _choose_gpu as choose
    from replay.run import _nvidia_gpu_name

    def _choose_gpu(config, here):
        return choose(config, here, _nvidia_gpu_name() if here else None)
    chat = str(TRACES / "chat.jsonl")
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(count=1, names={0: "NVIDIA H200"}))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    config, note = _choose_gpu(RunConfig(trace=chat, engine="vllm"), True)
    assert config.gpu == "h200" and "NVML names this machine's GPU 'NVIDIA H200'" in note
    config, note = _choose_gpu(RunConfig(trace=chat, engine="vllm", gpu="a100"), True)
    assert config.gpu == "a100" and note is None
    config, note = _choose_gpu(RunConfig(trace=chat, engine="server", targets=["http://10.0.0.7:1"]), False)
    assert config.gpu == "h100-sxm" and "another machine" in note      # NVML here says nothing of that server
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(count=1, names={0: "NVIDIA Z9000"}))
    config, note = _choose_gpu(RunConfig(trace=chat, engine="vllm"), True)
    assert config.gpu == "h100-sxm" and "'NVIDIA Z9000', which replay/specs/hardware.yaml does not know" in note
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(count=0))
    config, note = _choose_gpu(RunConfig(trace=chat, engine="vllm"), True)
    assert config.gpu == "h100-sxm" and "no NVIDIA GPU here" in note


def test_the_simulator_keeps_its_default_gpu():
    assert RunConfig(trace=str(TRACES / "chat.jsonl")).resolve().gpu == "h100-sxm"
    with pytest.raises(ValueError, match="key 'gpu': expected a string, got 7"):  # the type first (issue 12)
        RunConfig(trace=str(TRACES / "chat.jsonl"), gpu=7)
    with pytest.raises(ValueError, match="gpu: expected a hardware name"):
        RunConfig(trace=str(TRACES / "chat.jsonl"), gpu="")


# --- issue 12: failures before the first record, the engine info's energy --------------------------------------

def test_a_run_that_fails_before_its_first_record_leaves_nothing_that_needs_force(tmp_path, monkeypatch):
    """Issue 12 item 8: a run that fails after its directory is made but before any record (its meter not
    available here, the engine failing at its first step) takes back its config.yaml and empty record files, so
    the same command again needs no --force; one that failed after recording keeps everything (--resume)."""
    import replay.run as run_module
    out = tmp_path / "run"
    config = RunConfig(trace=CHAT, limit=10, out=str(out))

    def no_meter(*args, **kwargs):
        raise ValueError("--meter nvml: not available here: NVML could not start")

    original_step = SimEngine.step

    def first_step_fails(self, horizon_s=float("inf")):
        raise RuntimeError("CUDA error: out of memory")

    for patch, error in ((("_meter", no_meter, run_module), ValueError), (("step", first_step_fails, SimEngine),
                                                                        RuntimeError)):
        name, fake, where = patch
        with monkeypatch.context() as m:
            m.setattr(where, name, fake)
            with pytest.raises(error):
                execute(config, progress=False)
        assert not out.exists() or not ({p.name for p in out.iterdir()} - {LOCK_FILE}), sorted(out.iterdir())
        assert execute(config, progress=False).summary.finished == 10  # the same run again: no --force
        assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, LOCK_FILE])
        for name in RUN_FILES:
            (out / name).unlink()
    calls = {"n": 0}

    def later_step_fails(self, horizon_s=float("inf")):
        calls["n"] += 1
        if calls["n"] > 200:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original_step(self, horizon_s)

    monkeypatch.setattr(SimEngine, "step", later_step_fails)
    with pytest.raises(RuntimeError):
        execute(RunConfig(trace=CHAT, limit=100, out=str(out)), progress=False)
    assert (out / "config.yaml").exists() and (out / "requests.jsonl").read_text()  # kept for --resume


def test_the_engine_info_says_whether_a_real_run_is_measured(tmp_path, monkeypatch):
    """Issue 12 item 15: summary.json's engine "energy" said "measured by the meter" for a real-engine run that
    was not measured (--meter none, or --meter auto finding no meter); it now says not measured and why. The
    real engine is stood in for by the simulated one under the real engine's wall clock (no vLLM started), and
    the machine's meters by an NVML that cannot start and an empty RAPL tree."""
    from energy.energy_fakes import FakeNvml, NVMLError

    import replay.run as run_module

    build = run_module.build_engines

    def sim_as_vllm(config, *args, **kwargs):
        if config.engine != "vllm":
            return build(config, *args, **kwargs)
        engine = build(replace(config, engine="sim", block_size=None, gpu_memory_utilization=None).resolve())[0]
        engine.info = lambda: {"engine": "vllm", "model": config.model}
        return [engine]

    monkeypatch.setattr(run_module, "build_engines", sim_as_vllm)
    monkeypatch.setattr(run_module, "_has_nvidia_gpu", lambda: False)
    boundary = {"nvml": FakeNvml(init_error=NVMLError("no driver")), "rapl_root": str(tmp_path / "no-rapl")}
    for meter, why in (("none", "not measured: --meter none"), ("auto", "not measured: no meter is available")):
        out = tmp_path / meter
        result = execute(RunConfig(trace=CODE, engine="vllm", model="tiny-llama", gpu="h100-sxm", mode="offline",
                                   limit=2, meter=meter, idle_s=0.0, out=str(out)),
                         progress=False, hardware_boundary=boundary)
        assert result.energy.total_j is None
        energy = json.loads((out / "summary.json").read_text())["engine"]["energy"]
        assert energy.startswith(why) and energy == result.engine["energy"], energy
        assert "measured by" not in yaml.safe_load((out / "config.yaml").read_text())["resolved_engine"]["energy"] \
            or meter == "auto"  # before the run, auto has not picked: config.yaml says it picks (summary.json: meter)
    info = run_module._engine_info(RunConfig(trace=CODE, engine="vllm", meter="rapl", gpu="h100-sxm"),
                                   type("Engine", (), {"info": lambda self: {}})())
    assert info["energy"] == "measured by the meter"


def test_prefix_cache_hits_count_once_per_request_and_never_beat_an_unlimited_cache():
    """Issue 12, item 13: after a preemption a request found its own blocks again and counted them as hits (68%
    reported on Mooncake where an unlimited cache gives 37%, cached_tokens up to 5x the prompt). A small KV cache
    forces preemptions; the hit rate is in the summary, at most the ideal one computed here from the hash ids."""
    path = DATA / "mooncake_head.jsonl"
    result = run(str(path), limit=200, prefix_caching=True, kv_blocks=6000, block_size=16)
    fin = result.requests[result.requests["status"] == "finished"]
    assert result.summary.preemptions > 0
    assert (fin["cached_tokens"] <= fin["input_tokens"]).all()
    rows = [json.loads(line) for line in path.read_text().splitlines()[:200]]
    seen, ideal = set(), {}
    for i, r in enumerate(rows):               # leading 512-token blocks some earlier request already had
        k = 0
        while k < len(r["hash_ids"]) and r["hash_ids"][k] in seen:
            k += 1
        ideal[str(i)] = min(k * 512, r["input_length"])
        seen.update(r["hash_ids"])
    ideal_rate = sum(ideal[i] for i in fin["id"]) / fin["input_tokens"].sum()
    rate = result.summary.prefix_cache_hit_rate
    assert rate is not None and 0 < rate <= ideal_rate + 1e-9
    assert json.loads(json.dumps(result.summary.to_dict()))["prefix_cache_hit_rate"] == rate
    assert f"prefix cache hits {rate:.1%} of prompt tokens" in format_summary(result.summary)
