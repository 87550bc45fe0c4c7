"""The `replay` command line through click's CliRunner: help, exit codes, one-line errors, files left behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import DATA, TRACES, leftovers
from replay.cli import main
from replay.trace import read_trace
from replay.trace.formats.burstgpt import FAILED

COMMANDS = ["convert", "stats", "bins", "synth", "run", "calibrate", "plan", "sweep", "sweetspot"]


def run(*args: str):
    """Invoke the CLI. ``run`` commands default to --engine auto, the real engine where vLLM is installed (the
    test environment has it): these tests are about the simulated engine's runs unless they say otherwise."""
    args = [str(a) for a in args]
    if args[0] == "run" and "--resume" not in args and "--engine" not in args:
        args += ["--engine", "sim"]
    return CliRunner().invoke(main, args)


def assert_one_error_line(result, *needles: str):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:"), lines[0]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- help ----------------------------------------------------------------------------------------------------

def test_main_help_has_an_example():
    result = run("--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_has_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    assert f"replay {command} " in result.output


def test_short_help_flag_and_version():
    assert run("stats", "-h").exit_code == 0
    result = run("--version")
    assert result.exit_code == 0 and "replay" in result.output


def test_convert_help_lists_every_format():
    from replay.trace import FORMATS
    result = run("convert", "--help")
    for name in FORMATS:
        assert name in result.output


# --- convert -------------------------------------------------------------------------------------------------

def test_convert_sample(tmp_path):
    dst = tmp_path / "chat.jsonl"
    result = run("convert", DATA / "azure2023_conv_head.csv", dst, "--kind", "chat", "--limit", "50")
    assert result.exit_code == 0, result.output
    assert "wrote 50 requests" in result.stdout and "as azure" in result.stdout
    assert result.stderr == ""
    assert dst.read_bytes().splitlines() == (TRACES / "chat.jsonl").read_bytes().splitlines()[:50]


def test_convert_window_to_parquet(tmp_path):
    dst = tmp_path / "w.parquet"
    result = run("convert", DATA / "mooncake_head.jsonl", dst, "--start-s", "10", "--duration-s", "20")
    assert result.exit_code == 0, result.output
    w = read_trace(dst)
    assert w[0].arrival_s == 0.0 and w.arrival_s.max() < 20
    assert f"wrote {len(w)} requests" in result.stdout


def test_convert_reports_exclusions(tmp_path):
    src = tmp_path / "burst.csv"
    src.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                   "1,M,5,5,10,x\n2,M,5,0,5,x\n3,M,5,6,11,x\n4,M,7,0,7,x\n5,M,7,0,7,x\n")
    result = run("convert", src, tmp_path / "out.jsonl")
    assert result.exit_code == 0, result.output
    assert "wrote 2 requests" in result.stdout and "read 5 rows" in result.stdout
    assert f"excluded 3: {FAILED}" in result.stdout


def test_convert_sort_warns_on_stderr(tmp_path):
    src = tmp_path / "v.csv"
    src.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n2,1,1\n1,2,2\n3,3,3\n")
    dst = tmp_path / "out.jsonl"
    refused = run("convert", src, dst)
    assert_one_error_line(refused, "v.csv:3:", "arrived_at", "--sort")
    assert not dst.exists()
    result = run("convert", src, dst, "--sort")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning:") and "1 requests" in result.stderr
    assert "warning" not in result.stdout
    assert [r.input_tokens for r in read_trace(dst)] == [2, 1, 3]
    assert list(read_trace(dst).arrival_s) == [0.0, 1.0, 2.0]


BAD = {
    "negative": ("a.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,-4,1\n", "a.csv:3:",
                 "num_prefill_tokens"),
    "zero": ("a.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,4,0\n", "a.csv:3:",
             "num_decode_tokens"),
    "fraction": ("a.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n\n1,3.5,1\n", "a.csv:4:",
                 "num_prefill_tokens"),
    "missing value": ("a.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,,1\n", "a.csv:3:",
                      "num_prefill_tokens"),
    "non-numeric": ("a.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,many,1\n", "a.csv:3:",
                    "num_prefill_tokens"),
    "timestamp": ("az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,1,1\r\n"
                  "yesterday,1,1", "az.csv:3:", "TIMESTAMP"),
    "backwards": ("az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,1,1\r\n"
                  "2023-11-16 18:15:45.0000000,1,1", "az.csv:3:", "TIMESTAMP"),
    "missing column": ("b.csv", "Timestamp,Model,Request tokens,Total tokens,Log Type\n1,M,1,1,x\n", "b.csv:1:",
                       "Response tokens"),
    "too many fields": ("a.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,1,1,1\n", "a.csv:3:",
                        "fields"),
    "bad json": ("c.jsonl", '{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n{"id":\n', "c.jsonl:2:",
                 "JSON"),
    "not an object": ("c.jsonl", '{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n"x"\n',
                      "c.jsonl:2:", "object"),
    "missing input_tokens": ("c.jsonl", '{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n'
                             '{"id":"b","arrival_s":1,"output_tokens":1}\n', "c.jsonl:2:", "input_tokens"),
    "blank file": ("e.jsonl", "\n \n", "e.jsonl", "empty"),
    "zero-byte file": ("e.csv", "", "e.csv", "empty"),
    "header only": ("h.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\r\n", "h.csv", "no requests"),
    "unknown header": ("u.csv", "a,b,c\n1,2,3\n", "u.csv:1:", "--format"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_convert_errors(tmp_path, case, suffix):
    name, content, where, what = BAD[case]
    src = tmp_path / name
    src.write_text(content, newline="")
    fmt = ["--format", "burstgpt"] if case == "missing column" else []
    out = tmp_path / "out"
    out.mkdir()
    result = run("convert", src, out / f"dst{suffix}", *fmt)
    assert_one_error_line(result, where, what)
    assert leftovers(out) == []  # neither the destination nor a temporary .part file


@pytest.mark.parametrize("args,needle", [
    (["--limit", "0"], "--limit"),
    (["--start-s", "-1"], "--start-s"),
    (["--duration-s", "0"], "--duration-s"),
    (["--duration-s", "inf"], "--duration-s"),
    (["--start-s", "1e300"], "--start-s"),
    (["--start-s", "nan"], "--start-s"),
])
def test_convert_bad_options(tmp_path, args, needle):
    result = run("convert", DATA / "azure2023_code_head.csv", tmp_path / "o.jsonl", *args)
    assert_one_error_line(result, needle)
    assert leftovers(tmp_path) == []


def test_convert_window_on_untimed_trace(tmp_path):
    src = tmp_path / "l.csv"
    src.write_text("num_prefill_tokens,num_decode_tokens\n1,2\n")
    result = run("convert", src, tmp_path / "o.jsonl", "--duration-s", "5")
    assert_one_error_line(result, "l.csv", "timed")
    assert leftovers(tmp_path) == ["l.csv"]


def test_convert_unknown_format_and_missing_source(tmp_path):
    result = run("convert", DATA / "azure2023_code_head.csv", tmp_path / "o.jsonl", "--format", "excel")
    assert result.exit_code == 2  # a usage error from click
    result = run("convert", tmp_path / "nope.csv", tmp_path / "o.jsonl")
    assert_one_error_line(result, "nope.csv", "no such file")
    result = run("convert", DATA / "azure2023_code_head.csv", tmp_path / "o.txt")
    assert_one_error_line(result, "o.txt", ".jsonl")
    assert leftovers(tmp_path) == []


# --- stats, bins, synth --------------------------------------------------------------------------------------

def test_stats_json():
    result = run("stats", TRACES / "code.jsonl", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert set(stats) == {"requests", "duration_s", "rate_per_s", "interarrival_cv", "input_tokens", "output_tokens"}
    assert set(stats["input_tokens"]) == {"mean", "std", "median", "p99", "min", "max"}
    assert stats["requests"] == 8_819
    summary = {k: tuple(stats[k][s] for s in ("min", "median", "max")) for k in ("input_tokens", "output_tokens")}
    assert summary == {"input_tokens": (3, 1469, 7437), "output_tokens": (6, 13, 1899)}


def test_stats_table_on_any_format():
    result = run("stats", DATA / "azure2023_conv_head.csv")
    assert result.exit_code == 0, result.output
    assert "300" in result.stdout
    result = run("stats", DATA / "mooncake_head.jsonl", "--format", "mooncake")
    assert result.exit_code == 0 and "200" in result.stdout


def test_stats_error_is_one_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n'
                   '{"id":"b","arrival_s":1,"input_tokens":1.5,"output_tokens":1}\n')
    assert_one_error_line(run("stats", src), "bad.jsonl:2:", "input_tokens")
    assert_one_error_line(run("bins", src), "bad.jsonl:2:", "input_tokens")


def test_bins_csv_and_json():
    result = run("bins", TRACES / "chat.jsonl", "--csv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "input_bin,output_bin,requests"
    counts = [int(line.split(",")[2]) for line in lines[1:]]
    assert len(counts) == 8 * 7 and 0 < sum(counts) <= 19_366
    result = run("bins", TRACES / "chat.jsonl", "--json", "--input-bins", "512,2048", "--output-bins", "64,256")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["input_bins"] == [512, 2048]
    assert run("bins", TRACES / "chat.jsonl", "--json", "--csv").exit_code == 2


def test_synth_writes_what_stats_reads(tmp_path):
    dst = tmp_path / "s.jsonl"
    result = run("synth", dst, "--input", "const:100", "--output", "uniform:5,10", "--requests", "40",
                 "--rate", "4", "--seed", "3", "--kind", "syn")
    assert result.exit_code == 0, result.output
    assert "wrote 40" in result.stdout
    stats = json.loads(run("stats", dst, "--json").stdout)
    assert stats["requests"] == 40 and stats["input_tokens"]["min"] == stats["input_tokens"]["max"] == 100
    assert {r.kind for r in read_trace(dst)} == {"syn"}
    like = tmp_path / "like.parquet"
    result = run("synth", like, "--like", TRACES / "code.jsonl", "--requests", "30")
    assert result.exit_code == 0, result.output
    assert len(read_trace(like)) == 30
    again = tmp_path / "again.jsonl"
    run("synth", again, "--input", "const:100", "--output", "uniform:5,10", "--requests", "40",
        "--rate", "4", "--seed", "3", "--kind", "syn")
    assert again.read_bytes() == dst.read_bytes()  # seeded


def test_synth_bad_spec_is_one_line(tmp_path):
    result = run("synth", tmp_path / "s.jsonl", "--input", "weird:1", "--output", "const:1", "--requests", "3")
    assert_one_error_line(result)
    assert leftovers(tmp_path) == []


# --- run and calibrate ---------------------------------------------------------------------------------------

def test_run_writes_a_run_directory_and_prints_the_summary(tmp_path):
    out = tmp_path / "run"
    result = run("run", TRACES / "chat.jsonl", "--limit", 200, "--out", out, "--quiet", "--slo", "ttft=1s")
    assert result.exit_code == 0, result.output
    for needle in ("TTFT", "TPOT", "ITL", "E2E", "goodput", "modelled", f"run directory: {out}"):
        assert needle in result.output, needle
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["finished"] == 200
    config = (out / "config.yaml").read_text()
    assert "arrival: timed" in config and "limit: 200" in config
    assert len((out / "requests.jsonl").read_text().splitlines()) == 200


def test_run_refuses_to_overwrite_a_run_without_force(tmp_path):
    out = tmp_path / "run"
    assert run("run", TRACES / "code.jsonl", "--limit", 20, "--out", out, "--quiet").exit_code == 0
    before = (out / "requests.jsonl").read_bytes()
    assert_one_error_line(run("run", TRACES / "code.jsonl", "--limit", 20, "--out", out, "--quiet"),
                          "already holds a run", "--force")
    assert (out / "requests.jsonl").read_bytes() == before
    result = run("run", TRACES / "code.jsonl", "--limit", 10, "--out", out, "--quiet", "--force")
    assert result.exit_code == 0, result.output
    assert len((out / "requests.jsonl").read_text().splitlines()) == 10


def test_run_config_file_with_command_line_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"trace: {TRACES / 'chat.jsonl'}\nlimit: 50\nmode: offline\nbatch_size: 10\nmax_num_seqs: 8\n")
    out = tmp_path / "run"
    result = run("run", "--config", cfg, "--max-num-seqs", 4, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    config = (out / "config.yaml").read_text()
    assert "arrival: static" in config and "max_num_seqs: 4" in config and "batch_size: 10" in config
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert max(s["num_seqs"] for s in steps) <= 4


def test_config_file_booleans_are_checked_and_eager_is_kept(tmp_path):
    """A run config's true/false keys must be booleans (a quoted "no" is a mistake, named); --eager/--no-eager
    is kept in config.yaml (null when not given: the engine's own choice)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"trace: {TRACES / 'chat.jsonl'}\nlimit: 5\nchunked_prefill: 'no'\n")
    assert_one_error_line(run("run", "--config", cfg, "--out", tmp_path / "a", "--quiet"), "chunked_prefill", "'no'")
    cfg.write_text(f"trace: {TRACES / 'chat.jsonl'}\nlimit: 5\nenforce_eager: 1\n")
    assert_one_error_line(run("run", "--config", cfg, "--out", tmp_path / "b", "--quiet"), "enforce_eager")
    for flag, want in ((), "null"), (("--eager",), "true"), (("--no-eager",), "false"):
        out = tmp_path / f"r{want}"
        assert run("run", TRACES / "chat.jsonl", "--limit", 5, "--out", out, "--quiet", *flag).exit_code == 0
        assert f"enforce_eager: {want}" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("args, needles", [
    (["--model", "no-such-model"], ["no-such-model"]),
    (["--gpu", "tpu9"], ["tpu9"]),
    (["--arrival", "static"], ["static", "online"]),
    (["--rate", "-1"], ["rate_per_s"]),
    (["--slo", "ttft=fast"], ["ttft"]),
])
def test_run_bad_options_are_one_line(tmp_path, args, needles):
    result = run("run", TRACES / "chat.jsonl", "--limit", 5, "--out", tmp_path / "run", "--quiet", *args)
    assert_one_error_line(result, *needles)
    assert not (tmp_path / "run" / "requests.jsonl").exists()


def test_run_untimed_trace_needs_a_rate_or_offline(tmp_path):
    untimed = tmp_path / "untimed.jsonl"
    untimed.write_text('{"id":"a","arrival_s":null,"input_tokens":10,"output_tokens":5}\n')
    assert_one_error_line(run("run", untimed, "--out", tmp_path / "r1", "--quiet"), "--rate", "--offline")
    assert run("run", untimed, "--out", tmp_path / "r2", "--quiet", "--offline").exit_code == 0
    assert run("run", untimed, "--out", tmp_path / "r3", "--quiet", "--rate", 2).exit_code == 0


def test_calibrate_perf_recovers_the_simulators_own_parameters(tmp_path):
    """A run of the simulator with known performance parameters, fitted back from its steps.jsonl."""
    perf = tmp_path / "true.yaml"
    perf.write_text("perf_params: {compute_efficiency: 0.35, memory_efficiency: 0.6, overhead_s: 0.002, "
                    "per_seq_s: 2.0e-5}\n")
    out = tmp_path / "run"
    assert run("run", TRACES / "chat.jsonl", "--limit", 300, "--perf", perf, "--out", out, "--quiet").exit_code == 0
    result = run("calibrate", out, "--perf", "--out", tmp_path / "fitted.yaml")
    assert result.exit_code == 0, result.output
    assert "held-out MAPE" in result.output
    from replay.engines.sim.perf import load_perf
    fitted = load_perf(tmp_path / "fitted.yaml")
    assert fitted.compute_efficiency == pytest.approx(0.35, rel=0.05)
    assert fitted.memory_efficiency == pytest.approx(0.6, rel=0.05)
    assert fitted.overhead_s == pytest.approx(0.002, rel=0.1)


def test_calibrate_needs_a_mode_and_a_run_directory(tmp_path):
    result = run("calibrate", tmp_path)
    assert result.exit_code == 2 and "--perf" in result.output
    assert_one_error_line(run("calibrate", tmp_path, "--perf"), "steps.jsonl")


def test_plan_prints_the_answer_and_writes_plan_json(tmp_path):
    out = tmp_path / "plan"
    result = run("plan", TRACES / "chat.jsonl", "--limit", 200, "--rate-scale", 10, "--gpu", "a100-40gb",
                 "--target", "p99_ttft=2s", "--max-replicas", 8, "--out", out)
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["replicas"] is not None and "answer:" in result.output
    assert (out / f"replicas-{plan['replicas']}" / "summary.json").exists()


def test_plan_refuses_replicas_and_bad_targets(tmp_path):
    result = run("plan", TRACES / "chat.jsonl", "--replicas", 2, "--target", "p99_ttft=1s", "--out", tmp_path / "p")
    assert result.exit_code == 2 and "--replicas" in result.output
    assert_one_error_line(run("plan", TRACES / "chat.jsonl", "--target", "p99_ttft", "--out", tmp_path / "q"),
                          "STAT_METRIC=VALUE")


def test_gpus_means_replicas_of_tp_gpus(tmp_path):
    out = tmp_path / "run"
    result = run("run", TRACES / "chat.jsonl", "--limit", 40, "--gpus", 4, "--tp", 2, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    config = (out / "config.yaml").read_text()
    assert "replicas: 2" in config and "tp: 2" in config and "gpus: 4" in config
    bad = run("run", TRACES / "chat.jsonl", "--gpus", 3, "--tp", 2, "--out", tmp_path / "x", "--quiet")
    assert bad.exit_code == 2 and "multiple of --tp" in bad.output
    both = run("run", TRACES / "chat.jsonl", "--gpus", 2, "--replicas", 2, "--out", tmp_path / "y", "--quiet")
    assert both.exit_code == 2 and "not both" in both.output


def test_interrupt_then_resume_from_the_command_line(tmp_path, monkeypatch):
    import replay.server
    out = tmp_path / "run"
    original = replay.server.Recorder.request
    seen = []

    def request(self, record):
        if len(seen) == 30:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        seen.append(record["id"])
        original(self, record)

    monkeypatch.setattr(replay.server.Recorder, "request", request)
    first = run("run", TRACES / "chat.jsonl", "--limit", 80, "--out", out, "--quiet")
    monkeypatch.setattr(replay.server.Recorder, "request", original)
    line = assert_one_error_line(first, "interrupted", f"replay run --resume {out}")
    assert len((out / "requests.jsonl").read_text().splitlines()) == 30, line
    refused = run("run", "--resume", out, "--limit", 5)
    assert refused.exit_code == 2 and "--resume takes the run's own config.yaml" in refused.output
    resumed = run("run", "--resume", out, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    ids = [json.loads(x)["id"] for x in (out / "requests.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 80


def test_an_engine_crash_mid_run_is_one_line_and_keeps_what_finished(tmp_path, monkeypatch):
    """An engine that fails mid-run (faked: the simulated engine's step raises after 50 calls, standing in for a
    vLLM error) stops the run with one line, the traceback in error.log, and every finished request kept, so
    --resume goes on."""
    from replay.engines.sim.engine import SimEngine
    original, calls = SimEngine.step, {"n": 0}

    def step(self, horizon_s=float("inf")):
        calls["n"] += 1
        if calls["n"] > 50:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return original(self, horizon_s)

    monkeypatch.setattr(SimEngine, "step", step)
    out = tmp_path / "run"
    result = run("run", TRACES / "chat.jsonl", "--limit", 100, "--out", out, "--quiet")
    assert_one_error_line(result, "the run stopped: RuntimeError: CUDA error", "error.log", "--resume")
    kept = (out / "requests.jsonl").read_text().splitlines()
    assert 0 < len(kept) < 100 and f"the {len(kept)} request records" in result.stderr
    assert "illegal memory access" in (out / "error.log").read_text()
    monkeypatch.setattr(SimEngine, "step", original)
    assert run("run", "--resume", out, "--quiet").exit_code == 0
    assert len((out / "requests.jsonl").read_text().splitlines()) == 100


def test_an_engine_that_fails_to_start_says_nothing_was_recorded(tmp_path, monkeypatch):
    """An engine failing before the run begins (faked: the simulated engine's constructor raises, standing in for
    vLLM's start-up) is one line that offers no --resume: there is no run directory to go on with."""
    from replay.engines.sim.engine import SimEngine

    def fail(self, *args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(SimEngine, "__init__", fail)
    result = run("run", TRACES / "chat.jsonl", "--limit", 5, "--out", tmp_path / "run", "--quiet")
    line = assert_one_error_line(result, "the run stopped: RuntimeError: CUDA error", "nothing was recorded")
    assert "--resume" not in result.stderr
    # the traceback is kept even without a run directory: in a file of its own, whose path the line gives
    # (the H200 check met "(the traceback could not be written)" when vLLM failed to import flashinfer)
    found = re.search(r"traceback in (\S+\.log)", line)
    assert found and "could not be written" not in line, line
    log = Path(found.group(1))
    assert "CUDA error: out of memory" in log.read_text() and "Traceback" in log.read_text()
    log.unlink()


def test_an_engine_cross_check_mismatch_is_said_after_the_summary(tmp_path):
    """summary.json's engine_check (the in-process adapter's per-step cross-check) with mismatches gives one line;
    none, or no check at all (the simulated engine), gives nothing."""
    from replay.cli import _engine_check
    (tmp_path / "summary.json").write_text(json.dumps({"engine_check": {
        "steps": 1200, "mismatches": 2, "first": ["step 7: scheduler says ['a'] emit, outputs say [] emitted"]}}))
    line = _engine_check(tmp_path)
    assert line.startswith("engine check: 2 of 1,200 steps") and "step 7" in line
    (tmp_path / "summary.json").write_text(json.dumps({"engine_check": {"steps": 5, "mismatches": 0, "first": []}}))
    assert _engine_check(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({}))
    assert _engine_check(tmp_path) is None and _engine_check(None) is None


# --- issue 12: wrong types, contradictory or out-of-range arrival options, the not-measured reason once ----------

@pytest.mark.parametrize("line, message", [
    ("model: 123", "key 'model': expected a string, got 123"),
    ("gpu: [h100-sxm, h200]", "key 'gpu': expected a string, got ['h100-sxm', 'h200']"),
    ("slo: 5", "key 'slo': expected a string, got 5"),
    ("arrival: [timed]", "key 'arrival': expected a string, got ['timed']"),
    ("tp: 2.0", "key 'tp': expected an integer, got 2.0"),
    ("seed: true", "key 'seed': expected an integer, got True"),
    ("speedup: fast", "key 'speedup': expected a number, got 'fast'"),
    ("targets: [8000]", "key 'targets': expected a list of strings, got [8000]"),
    ("router: random", "router: expected one of round-robin, least-outstanding, got 'random'"),
])
def test_a_config_files_wrong_types_name_the_key(tmp_path, line, message):
    """Issue 12 item 8: a wrong type in a run config is one line naming the file and the key (it was a Python
    TypeError, or a run directory left behind), and nothing is written under --out."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"trace: {TRACES / 'chat.jsonl'}\nlimit: 5\n{line}\n")
    out = tmp_path / "run"
    assert_one_error_line(run("run", "--config", cfg, "--out", out, "--quiet"), f"Error: {cfg}: {message}")
    assert not out.exists()


def test_an_unreadable_trace_leaves_no_run_directory(tmp_path):
    """Issue 12 item 8: a trace that cannot be read stops the run before its directory exists."""
    trace = tmp_path / "broken.jsonl"
    trace.write_text("this is not a trace\n")
    out = tmp_path / "run"
    assert_one_error_line(run("run", trace, "--out", out, "--quiet"), "broken.jsonl")
    assert not out.exists()


def test_a_run_that_fails_before_recording_needs_no_force_the_next_time(tmp_path, monkeypatch):
    """Issue 12 item 8: a run whose meter is not available (faked: the meter choice raises, as --meter nvml does
    on a machine without NVML) left config.yaml and empty record files, so the corrected rerun needed --force."""
    import replay.run as run_module

    def no_meter(*args, **kwargs):
        raise ValueError("--meter nvml: not available here: NVML could not start")

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(run_module, "_meter", no_meter)
        assert_one_error_line(run("run", TRACES / "chat.jsonl", "--limit", 5, "--out", out, "--quiet"),
                              "--meter nvml: not available here")
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
    result = run("run", TRACES / "chat.jsonl", "--limit", 5, "--out", out, "--quiet")  # no --force
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, message", [
    (["--rate", 5, "--concurrency", 4],
     "--rate 5 is ignored by the closed arrival process that --concurrency 4 chooses: drop --rate or --concurrency"),
    (["--cv", 2, "--concurrency", 4], "--cv 2 is ignored by the closed arrival process"),
    (["--speedup", 2, "--rate", 4], "--speedup 2 is ignored by the poisson arrival process that --rate 4 chooses"),
    (["--arrival", "poisson", "--rate", 2, "--concurrency", 3],
     "--concurrency 3 is ignored by the poisson arrival process that --arrival poisson chooses: drop --concurrency"),
    (["--arrival", "timed", "--rate", 2], "--rate 2 is ignored by the timed arrival process"),
    (["--offline", "--rate", 3], "--rate 3 is ignored offline (every request at t = 0): drop --rate, or run --online"),
    (["--offline", "--batch-size", 4, "--speedup", 3], "--speedup 3 is ignored by the static arrival process"),
    (["--batch-size", 8], "--batch-size 8 is for offline static batches: drop --batch-size, or add --offline"),
    (["--speedup", "1e-300"], "speedup: expected a number from 0.001 to 1,000,000, got 1e-300"),
    (["--speedup", "1e7"], "speedup: expected a number from 0.001 to 1,000,000"),
    (["--rate", "1e9"], "rate_per_s: expected a number from 1e-06 to 1,000,000, got 1000000000.0"),
    (["--rate", "1e-9"], "rate_per_s: expected a number from 1e-06 to 1,000,000"),
    (["--rate-scale", "1e-5"], "rate_scale: expected a number from 0.001 to 1,000, got 1e-05"),
    (["--rate-scale", "1e6"], "rate_scale: expected a number from 0.001 to 1,000"),
])
def test_contradictory_or_out_of_range_arrival_options_are_one_line(tmp_path, args, message):
    """Issue 12 item 12: `--rate X --concurrency N` ran a closed loop and dropped the rate silently; an option
    the chosen arrival process ignores is now one line saying which to drop. `--speedup 1e-300` was accepted;
    speedup, rate and rate scale have bounds, said in the line."""
    out = tmp_path / "run"
    assert_one_error_line(run("run", TRACES / "chat.jsonl", "--limit", 5, "--out", out, "--quiet", *args), message)
    assert not out.exists()


@pytest.mark.parametrize("args", [["--speedup", "0.001"], ["--speedup", "1e6"], ["--rate", 5, "--cv", 2],
                                  ["--concurrency", 4], ["--offline", "--batch-size", 4], ["--rate-scale", 1000]])
def test_arrival_options_that_agree_and_bounds_are_accepted(tmp_path, args):
    result = run("run", TRACES / "chat.jsonl", "--limit", 5, "--out", tmp_path / "run", "--quiet", *args)
    assert result.exit_code == 0, result.output


def test_why_energy_is_not_measured_is_said_once(tmp_path):
    """Issue 12 item 15: the end of a run printed the not-measured reason twice (the summary's energy line, then
    the short report's); the short report now points up to it."""
    result = run("run", TRACES / "chat.jsonl", "--limit", 5, "--out", tmp_path / "run", "--quiet", "--meter", "none")
    assert result.exit_code == 0, result.output
    assert result.output.count("--meter none:") == 1, result.output
    assert "energy            not measured: --meter none: " in result.output
    assert "energy vs estimates: not measured (why: above)" in result.output
