"""Benchmark: how fast the simulated engine replays a whole trace, on one CPU core, against Vidur.

Requirement: simulating the whole of traces/chat.jsonl (19,366 requests, one hour) for Llama-3.1-8B on one H100
must take seconds on one core; report requests and steps simulated per second and how time grows with trace
length (1x, 4x, 16x); aim for at least 10x faster than Vidur on the same trace and configuration.

Cases (each run is `replay.run.execute` on a `RunConfig`, exactly what `replay run` does):

- **a**: Llama-3.1-8B on one H100 SXM, vLLM defaults (max_num_seqs 256, max_num_batched_tokens 8192, chunked
  prefill on), the chat hour at 1x, 4x and 16x its length. The k-x trace is k copies of the hour back to back:
  copy j is shifted by j times the hour's period (its span plus one mean inter-arrival gap, so the rate stays
  the same across the seam) and its ids get a "~j" suffix. Same load, k times longer.
- **b**: Vidur's measured configuration (shared/DESIGN.md, "Peers measured on this kind of machine"):
  Llama-2-7b on an A100 80GB (Vidur's `a100` device is the 80 GB SKU; DESIGN.md does not say which), TP 1,
  one replica, batch cap 128, 4096 tokens per batch, no chunked prefill (Vidur's vLLM scheduler does not
  chunk), on the chat hour and the code hour. Vidur's trace reader cuts each request's prompt so that
  prompt + output <= 4096 tokens (its `max_tokens`); the same cut is applied here, so both simulate the same
  requests (without it, 1,612 chat and 1,257 code requests would exceed Llama-2's 4096-token context and be
  rejected).

Every measurement runs in its own process, pinned to one CPU (os.sched_setaffinity before exec; the simulator
is single-threaded, and any library thread pool shares that one core), with imports inside the measured
process wall. Three times are kept per run: `process` (spawn to exit, as Vidur's wall figures are), `execute`
(`execute()`: read the trace, build the engine, simulate, build the records and the summary, write the run
directory when there is one) and `sim` (`RunResult.wall_s`: the event loop, which streams the run directory
when there is one). Each is run with no run directory (out=None) and writing one (config.yaml, steps.jsonl,
requests.jsonl, summary.json) to a temporary directory under benchmarks/_data/. Best of N by process wall (3 for the 1x traces, 1 for 4x and 16x). Peak
memory is the process's VmHWM. Pinning does not keep other work off that CPU: run on an otherwise idle machine
(each row records the load average before it, and the hash of replay/'s sources it ran, so a run whose code
changed under it says so).

Vidur baseline: the PyPI package `vidur` does not run offline (see --try-vidur and benchmarks/README.md), so the
baseline is DESIGN.md's measurement of upstream Vidur on a 2-core machine like this one: 50-53 s wall for the
chat hour (31 s of it in the simulation loop, 59k batches, 2.4 GB peak), 12-14 s for the code hour (1.9 GB).
The ratio uses the low ends (50 s, 12 s), the conservative choice, against our process wall *with* the run
directory written (Vidur writes its metrics too). Run from the repository root:

    python benchmarks/sim_speed.py              # everything (about 10 minutes on a 2-core machine)
    python benchmarks/sim_speed.py --quick      # 1x traces only, one repeat, no run directory (a smoke run)
    python benchmarks/sim_speed.py --try-vidur  # also try `pip install vidur` into a throwaway venv under /tmp

Writes benchmarks/results/sim_speed.json (unless --quick) and prints a table; derived traces go to
benchmarks/_data/ (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "_data"
RESULTS = HERE / "results" / "sim_speed.json"
sys.path.insert(0, str(ROOT))

# DESIGN.md, "Peers measured on this kind of machine (2 cores)": upstream Vidur (microsoft/vidur main 7d47513),
# Llama-2-7b, A100 profile, TP 1, one replica, vLLM scheduler, batch cap 128, 4096 tokens per batch.
VIDUR = {
    "source": "shared/DESIGN.md, 'Peers measured on this kind of machine (2 cores)': upstream Vidur "
              "(github microsoft/vidur main 7d47513), measured on a 2-core machine like this one; not re-run here",
    "chat": {"wall_s": [50.0, 53.0], "sim_loop_s": 31.0, "batches": 59_000, "peak_mb": 2400},
    "code": {"wall_s": [12.0, 14.0], "sim_loop_s": None, "batches": None, "peak_mb": 1900},
}
AIM = 10.0
VIDUR_MAX_TOKENS = 4096

CASE_A = {"model": "llama-3.1-8b", "gpu": "h100-sxm", "max_num_seqs": 256, "max_num_batched_tokens": 8192}
CASE_B = {"model": "llama-2-7b", "gpu": "a100-80gb", "tp": 1, "replicas": 1, "max_num_seqs": 128,
          "max_num_batched_tokens": 4096, "chunked_prefill": False}

CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
from replay.config import RunConfig
from replay.run import execute
import_s = time.perf_counter() - t_start
config = RunConfig(**json.loads(sys.argv[1]))
t0 = time.perf_counter()
result = execute(config, force=True, progress=False)
execute_s = time.perf_counter() - t0
s = result.summary
status = {k: int(v) for k, v in (("threads", 0), ("hwm_kb", 0))}
for line in open("/proc/self/status"):
    if line.startswith("Threads:"):
        status["threads"] = int(line.split()[1])
    elif line.startswith("VmHWM:"):
        status["hwm_kb"] = int(line.split()[1])
print(json.dumps({
    "import_s": import_s, "execute_s": execute_s, "sim_s": result.wall_s,
    "requests": int(len(result.requests)), "steps": int(len(result.steps)),
    "finished": s.finished,
    "rejected": s.rejected, "unfinished": s.unfinished, "preemptions": s.preemptions,
    "simulated_s": s.duration_s, "peak_mb": status["hwm_kb"] / 1024, "threads": status["threads"],
    "cpus_allowed": sorted(__import__("os").sched_getaffinity(0)),
}))
"""


# --- traces --------------------------------------------------------------------------------------------------

def _read(path: Path):
    from replay.trace import read_trace
    return read_trace(path)


def _write(table: pa.Table, path: Path) -> Path:
    from replay.trace import Workload, write_trace
    write_trace(Workload(table), path)
    return path


def repeated(src: Path, k: int) -> Path:
    """``src`` k times back to back: copy j shifted by j periods (span + one mean gap), ids suffixed ``~j``."""
    path = DATA / f"{src.stem}_x{k}.parquet"
    if path.exists():
        return path
    table = _read(src).table
    t = table.column("arrival_s").to_numpy()
    period = float(t[-1] - t[0]) * len(t) / (len(t) - 1)
    ids = table.column("id").to_pylist()
    copies = []
    for j in range(k):
        copy = table.set_column(table.schema.get_field_index("id"), "id",
                                pa.array([f"{i}~{j}" for i in ids], pa.string()))
        copy = copy.set_column(copy.schema.get_field_index("arrival_s"), "arrival_s", pa.array(t + j * period))
        copies.append(copy)
    return _write(pa.concat_tables(copies), path)


def vidur_cut(src: Path) -> Path:
    """Vidur's trace reader's cut: the prompt loses what prompt + output exceeds max_tokens (4096) by."""
    path = DATA / f"{src.stem}_vidur{VIDUR_MAX_TOKENS}.parquet"
    if path.exists():
        return path
    table = _read(src).table
    inp, out = table.column("input_tokens").to_numpy(), table.column("output_tokens").to_numpy()
    cut = inp - np.clip(inp + out - VIDUR_MAX_TOKENS, 0, None)
    assert (cut >= 1).all() and (cut + out <= VIDUR_MAX_TOKENS).all()
    table = table.set_column(table.schema.get_field_index("input_tokens"), "input_tokens", pa.array(cut))
    return _write(table, path)


# --- measuring -----------------------------------------------------------------------------------------------

def code_version() -> dict:
    """The code a measurement ran: HEAD, and a hash of replay/'s sources as they are on disk now (so a run
    whose code changed under it, say by a concurrent edit, shows it)."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted((ROOT / "replay").rglob("*")):
        if f.is_file() and f.suffix in (".py", ".yaml", ".json"):
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.rstrip()  # noqa: E731
    return {"head": git("rev-parse", "--short", "HEAD") or None,
            "replay_dirty": sorted(line[3:] for line in git("status", "--porcelain", "--", "replay").splitlines()),
            "replay_sha256": h.hexdigest()[:16]}


def measure(config: dict, cpu: int, write_out: bool) -> dict:
    out_dir = tempfile.mkdtemp(prefix="run-", dir=DATA) if write_out else None
    cfg = {**config, "out": out_dir}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if hasattr(os, "sched_setaffinity") else None
    code = code_version()["replay_sha256"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True,
                          cwd=ROOT, env=env, preexec_fn=pin)
    process_s = time.perf_counter() - t0
    try:
        if proc.returncode:
            raise SystemExit(f"measurement failed ({cfg}):\n{proc.stderr}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if out_dir is not None:
            row["out_mb"] = sum(f.stat().st_size for f in Path(out_dir).iterdir()) / 1e6
    finally:
        if out_dir is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
    return {"process_s": process_s, **row, "replay_sha256": code, "loadavg_1m_before": load}


def run_case(label: str, case: str, trace: Path, k: int, config: dict, cpu: int, repeat: int,
             outs: tuple[bool, ...]) -> list[dict]:
    rows = []
    runs: dict[bool, list[dict]] = {o: [] for o in outs}
    for _ in range(repeat):  # interleaved, so drift in machine load hits both alike
        for o in outs:
            runs[o].append(measure({"trace": str(trace), **config}, cpu, o))
    for o in outs:
        best = min(runs[o], key=lambda r: r["process_s"])
        row = {"label": label, "case": case, "trace": str(trace.relative_to(ROOT)), "copies": k,
               "out": "run directory" if o else "none", "repeats": repeat,
               "process_s_all": [r["process_s"] for r in runs[o]], **best,
               "requests_per_s": best["requests"] / best["sim_s"], "steps_per_s": best["steps"] / best["sim_s"],
               "requests_per_s_process": best["requests"] / best["process_s"]}
        rows.append(row)
        print(f"  {label:<34} out={row['out']:<13} process {row['process_s']:7.2f} s  execute "
              f"{row['execute_s']:7.2f} s  sim {row['sim_s']:7.2f} s  {row['requests']:>7,} req "
              f"{row['steps']:>9,} steps  peak {row['peak_mb']:6.0f} MB", flush=True)
    return rows


# --- Vidur ---------------------------------------------------------------------------------------------------

VIDUR_ARGS = ["--replica_config_model_name", "meta-llama/Llama-2-7b-hf", "--replica_config_device", "a100",
              "--replica_config_tensor_parallel_size", "1", "--cluster_config_num_replicas", "1",
              "--replica_scheduler_config_type", "vllm", "--vllm_scheduler_config_batch_size_cap", "128",
              "--vllm_scheduler_config_max_tokens_in_batch", "4096"]


def try_vidur(venv: Path, budget_s: float = 600.0) -> dict:
    """Install PyPI `vidur` into a throwaway venv (unless it is there) and start it on case b's configuration
    (its own synthetic requests: whether it runs at all is the question); record what happened."""
    log: dict = {"venv": str(venv), "command": ["python", "-m", "vidur.main", *VIDUR_ARGS]}
    t0 = time.monotonic()
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    if subprocess.run([py, "-c", "import vidur"], capture_output=True).returncode:
        inst = subprocess.run([py, "-m", "pip", "install", "-q", "vidur"], capture_output=True, text=True,
                              timeout=budget_s)
        log["install_rc"], log["install_tail"] = inst.returncode, (inst.stdout + inst.stderr)[-2000:]
        if inst.returncode:
            return log
    ver = subprocess.run([py, "-m", "pip", "show", "vidur"], capture_output=True, text=True)
    log["version"] = next((line.split(":", 1)[1].strip() for line in ver.stdout.splitlines()
                           if line.startswith("Version:")), None)
    left = max(30.0, budget_s - (time.monotonic() - t0))
    with tempfile.TemporaryDirectory(prefix="vidur-", dir=DATA) as cwd:
        t1 = time.perf_counter()
        try:
            run = subprocess.run([py, "-m", "vidur.main", *VIDUR_ARGS], capture_output=True, text=True,
                                 timeout=left, cwd=cwd)
            log["run_rc"], text = run.returncode, run.stdout + run.stderr
        except subprocess.TimeoutExpired:
            log["run_rc"], text = "timeout", ""
        log["run_s"] = time.perf_counter() - t1
    errors = [line for line in text.splitlines() if "Error" in line and not line.startswith(" ")]
    log["error"] = errors[-1] if errors else None
    log["run_tail"] = text[-1500:]
    return log


# --- report --------------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    import pandas
    import simpy
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "pyarrow": pa.__version__, "pandas": pandas.__version__, "simpy": simpy.__version__,
            "loadavg_at_start": list(os.getloadavg())}


def table(rows: list[dict]) -> list[str]:
    lines = [f"| case | trace | out | process s | execute s | sim s | requests | steps | req/s (sim) | "
             f"steps/s (sim) | peak MB | vs 1x |", "|" + "---|" * 12]
    for r in rows:
        ref = next((b for b in rows if b["case"] == r["case"] == "a" and b["copies"] == 1 and b["out"] == r["out"]),
                   None) if r["copies"] > 1 else None
        growth = f"{r['sim_s'] / ref['sim_s']:.1f}x sim, {r['execute_s'] / ref['execute_s']:.1f}x exec" if ref \
            else ""
        r["time_vs_1x_sim"] = r["sim_s"] / ref["sim_s"] if ref else None
        r["time_vs_1x_execute"] = r["execute_s"] / ref["execute_s"] if ref else None
        lines.append(f"| {r['case']} | {r['label']} | {r['out']} | {r['process_s']:.2f} | {r['execute_s']:.2f} | "
                     f"{r['sim_s']:.2f} | {r['requests']:,} | {r['steps']:,} | {r['requests_per_s']:,.0f} | "
                     f"{r['steps_per_s']:,.0f} | {r['peak_mb']:.0f} | {growth} |")
    return lines


def vidur_lines(rows: list[dict]) -> tuple[list[str], list[dict]]:
    lines = ["| trace | Vidur wall s (DESIGN.md) | ours: process s | ours: run directory | ratio (Vidur low end / "
             "ours) | aim 10x | Vidur loop s | ours: sim s | loop ratio | Vidur peak MB | ours peak MB |",
             "|" + "---|" * 11]
    out = []
    for name in ("chat", "code"):
        mine = [r for r in rows if r["case"] == "b" and r["label"].startswith(name)]
        if not mine:
            continue
        written = next((r for r in mine if r["out"] == "run directory"), mine[0])
        plain = next((r for r in mine if r["out"] == "none"), written)
        v = VIDUR[name]
        ratio = v["wall_s"][0] / written["process_s"]
        loop = v["sim_loop_s"] / written["sim_s"] if v["sim_loop_s"] else None
        out.append({"trace": name, "vidur_wall_s": v["wall_s"], "ours_process_s": written["process_s"],
                    "ours_out": written["out"], "ratio_wall": ratio, "aim": AIM, "aim_met": ratio >= AIM,
                    "ours_process_s_no_run_dir": plain["process_s"],
                    "ratio_wall_no_run_dir": v["wall_s"][0] / plain["process_s"],
                    "vidur_sim_loop_s": v["sim_loop_s"], "ours_sim_s": written["sim_s"], "ratio_sim_loop": loop,
                    "vidur_batches": v["batches"], "ours_steps": written["steps"],
                    "vidur_peak_mb": v["peak_mb"], "ours_peak_mb": written["peak_mb"]})
        lines.append(f"| {name} hour | {v['wall_s'][0]:.0f}-{v['wall_s'][1]:.0f} | {written['process_s']:.2f} | "
                     f"{'written' if written['out'] != 'none' else 'none'} | "
                     f"{ratio:.1f}x | {'met' if ratio >= AIM else 'NOT met'} | "
                     f"{v['sim_loop_s'] if v['sim_loop_s'] else '-'} | {written['sim_s']:.2f} | "
                     f"{f'{loop:.1f}x' if loop else '-'} | {v['peak_mb']} | {written['peak_mb']:.0f} |")
    return lines, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1x traces only, one repeat, no run directory; no JSON")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the 1x traces (4x and 16x: once)")
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 4, 16], help="lengths of the case-a scaling")
    ap.add_argument("--try-vidur", action="store_true", help="pip install vidur into a venv under /tmp and try it")
    ap.add_argument("--vidur-venv", type=Path, default=Path(tempfile.gettempdir()) / "sim_speed_vidur_venv",
                    help="the throwaway venv for --try-vidur (created if missing)")
    args = ap.parse_args()
    DATA.mkdir(exist_ok=True)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    cpu = allowed[-1]
    facts = machine()
    print(f"{facts['cpu']}, {facts['cpus']} CPUs, Python {facts['python']}; each run pinned to CPU {cpu}; "
          f"load average {facts['loadavg_at_start'][0]:.2f}")
    copies = [1] if args.quick else args.copies
    repeat = 1 if args.quick else args.repeat
    outs = (False,) if args.quick else (False, True)
    chat, code = ROOT / "traces" / "chat.jsonl", ROOT / "traces" / "code.jsonl"

    rows: list[dict] = []
    print("case a: Llama-3.1-8B, H100 SXM, vLLM defaults (256 seqs, 8192 tokens, chunked prefill)")
    for k in copies:
        trace = chat if k == 1 else repeated(chat, k)
        rows += run_case(f"chat {k}x" if k > 1 else "chat 1x", "a", trace, k, CASE_A, cpu,
                         repeat if k == 1 else 1, outs)
    print("case b: Vidur's configuration: Llama-2-7b, A100 80GB, TP 1, 128 seqs, 4096 tokens, no chunked "
          "prefill, prompts cut to prompt + output <= 4096")
    for name, src in (("chat", chat), ("code", code)):
        rows += run_case(f"{name} 1x (Vidur cut)", "b", vidur_cut(src), 1, CASE_B, cpu, repeat, outs)

    code = code_version()
    measured = {r["replay_sha256"] for r in rows}
    if measured != {code["replay_sha256"]}:
        print(f"\nWARNING: replay/ changed during this run ({len(measured | {code['replay_sha256']})} versions of "
              "its sources seen): the measurements are not of one code version; run again", flush=True)
    lines = table(rows)
    vlines, ratios = vidur_lines(rows)
    print("\n" + "\n".join(lines))
    print("\nAgainst Vidur (baseline NOT re-run here: " + VIDUR["source"] + ")")
    print("\n".join(vlines))
    print("\nprocess = spawn to exit (imports included); execute = replay.run.execute(); sim = the event loop "
          "(RunResult.wall_s); req/s and steps/s are over sim. Single-threaded, pinned to one CPU.")

    vidur_try = try_vidur(args.vidur_venv) if args.try_vidur else None
    if vidur_try is not None:
        print("\nvidur from PyPI:", json.dumps({k: v for k, v in vidur_try.items() if not k.endswith("tail")}))
    if args.quick:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {**facts, "loadavg_at_end": list(os.getloadavg())}, "pinned_cpu": cpu, "code": code,
        "code_changed_during_run": measured != {code["replay_sha256"]},
        "cases": {"a": CASE_A, "b": {**CASE_B, "trace_cut": f"prompt + output <= {VIDUR_MAX_TOKENS} (Vidur's)"}},
        "baseline": VIDUR, "vs_vidur": ratios, "vidur_pypi_attempt": vidur_try, "results": rows,
        "notes": "process: spawn to exit; execute: replay.run.execute(); sim: RunResult.wall_s (event loop). "
                 "Best of `repeats` by process wall; process_s_all lists every repeat. The k-x chat trace is k "
                 "copies shifted by the hour's span plus one mean gap, ids suffixed ~j.",
    }, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
