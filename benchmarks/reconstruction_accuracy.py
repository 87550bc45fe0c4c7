"""How good is a server run's energy split? Steps reconstructed from token times against the exact steps.

    python benchmarks/reconstruction_accuracy.py [RUN_DIR ...] [--jitter-ms 0,0.5,2] [--out FILE]

A server run cannot see the engine's steps; ``replay.energy.reconstruct`` rebuilds them from the streamed token
times. Here the same run is attributed both ways, on in-process engine runs where the exact steps are known:

- exact: the run's own steps.jsonl and token_steps / prefill_steps (``replay.energy.attribution``, by tokens);
- reconstructed: only what a client of a server sees, each request's send time (``submitted_s``) and token
  times (the end of each step it emitted in, plus an exponential delivery delay of mean ``--jitter-ms``,
  seeded, as streams reach a client late and unevenly), rebuilt into steps and attributed the same way:
  once with each prompt whole at its first token, once chunked by the run's token budget per step (its
  max_num_batched_tokens, which a server run takes from --launch or --max-num-batched-tokens).

Energy: the run's measured timeline (power.csv) where it has one; otherwise each step draws a constant power,
so energy follows the real step durations (a CPU-build run, which no meter here measures). The error is per
finished request, reconstructed / exact - 1; the target is median |error| <= 5% and p99 <= 15%.

Default runs: the H200 chat (online) and code (offline) runs in ../shared/data/gpu-h200-2026-12 (vLLM 0.26.0,
Llama-3.1-8B, NVML) and ``benchmarks/_data/chat-cpu`` (the chat slice on vLLM's CPU build, tiny-llama: made
with ``replay run traces/chat.jsonl --engine vllm --duration-s 120 --meter none`` when missing and vLLM is
installed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replay.energy.attribution import attribute  # noqa: E402
from replay.energy.reconstruct import reconstruct_steps  # noqa: E402
from replay.energy.timeline import EnergyTimeline  # noqa: E402
from replay.files import read_jsonl  # noqa: E402

H200 = ROOT.parent / "shared" / "data" / "gpu-h200-2026-12"
CPU_RUN = ROOT / "benchmarks" / "_data" / "chat-cpu"
CONSTANT_W = 100.0


def token_times(requests: pd.DataFrame, steps: pd.DataFrame, jitter_s: float, seed: int,
                until_s: float) -> list[list[float]]:
    """Each request's token times as a client would see them: the end of each step it emitted in (by replica
    and step), later by an exponential delay of mean ``jitter_s``, kept in order (and before ``until_s``, when
    the meter stopped: a real client's last token comes before the run ends)."""
    end = {(int(r), int(k)): float(e) for r, k, e in zip(steps["replica"], steps["step"], steps["end_s"])}
    rng = np.random.default_rng(seed)
    out = []
    for replica, runs in zip(requests["replica"].tolist(), requests["token_steps"].tolist()):
        t = np.array([end[(int(replica), first + j)] for first, count in runs for j in range(count)], dtype=float)
        if jitter_s > 0 and t.size:
            t = np.minimum(np.maximum.accumulate(t + rng.exponential(jitter_s, t.size)), until_s)
        out.append(t.tolist())
    return out


def constant_timeline(steps: pd.DataFrame, power_w: float) -> EnergyTimeline:
    """``power_w`` while a step runs, nothing between steps: energy follows the step durations."""
    st, en = steps["start_s"].to_numpy(float), steps["end_s"].to_numpy(float)
    t = np.concatenate([[st.min() - 1.0], np.sort(np.concatenate([st, en])), [en.max() + 1.0]])
    busy = np.zeros(t.size - 1)
    mid = (t[:-1] + t[1:]) / 2
    order = np.argsort(st)
    idx = np.searchsorted(st[order], mid, side="right") - 1
    ok = idx >= 0
    busy[ok] = mid[ok] < en[order][idx[ok]]
    cum = np.concatenate([[0.0], np.cumsum(busy * np.diff(t) * power_w)])
    return EnergyTimeline(t, {"device0": cum}, label="constant power while a step runs")


def run_budget(run: Path) -> int:
    """The run's tokens per step (vLLM's max_num_batched_tokens), as its engine resolved it."""
    import yaml
    config = yaml.safe_load((run / "config.yaml").read_text())
    return int((config.get("resolved_engine") or {}).get("max_num_batched_tokens") or config["max_num_batched_tokens"])


def compare(run: Path, jitters_ms: list[float], seed: int) -> list[dict]:
    requests = pd.DataFrame(read_jsonl(run / "requests.jsonl"))
    steps = pd.DataFrame(read_jsonl(run / "steps.jsonl"))
    if (run / "power.csv").exists():
        timeline, energy = EnergyTimeline.from_csv(run / "power.csv"), "measured (NVML, power.csv)"
    else:
        timeline, energy = constant_timeline(steps, CONSTANT_W), f"constant {CONSTANT_W:g} W while a step runs"
    exact = attribute(timeline, steps, requests, "tokens")
    fin = (requests["status"] == "finished").to_numpy()
    e_exact = exact.requests["energy_j"].to_numpy()
    rows = []
    for jitter_ms, budget in [(j, b) for b in (None, run_budget(run)) for j in jitters_ms]:
        seen = requests.copy()
        seen["token_times_s"] = token_times(requests, steps, jitter_ms / 1e3, seed, timeline.end_s)
        seen["sent_s"] = seen["submitted_s"]
        rebuilt = reconstruct_steps(seen, token_budget=budget)
        seen["token_steps"], seen["prefill_steps"] = rebuilt.token_steps, rebuilt.prefill_steps
        recon = attribute(timeline, rebuilt.steps, seen, "tokens")
        e_recon = recon.requests["energy_j"].to_numpy()
        ok = fin & (e_exact > 0)
        err = e_recon[ok] / e_exact[ok] - 1
        rows.append({
            "run": run.name, "energy": energy, "jitter_ms": jitter_ms, "token_budget": budget,
            "requests": int(ok.sum()),
            "exact_steps": int(len(steps)), "reconstructed_steps": int(len(rebuilt.steps)),
            "median_abs_error": float(np.median(np.abs(err))), "p90_abs_error": float(np.percentile(np.abs(err), 90)),
            "p99_abs_error": float(np.percentile(np.abs(err), 99)), "mean_error": float(err.mean()),
            "attributed_exact_j": float(e_exact[fin].sum()), "attributed_reconstructed_j": float(e_recon[fin].sum()),
            "steps_exact_j": exact.steps_j, "steps_reconstructed_j": recon.steps_j,
        })
        r = rows[-1]
        print(f"{run.name:>10} budget {str(budget):>5} jitter {jitter_ms:>4} ms: {r['requests']} requests, steps {r['exact_steps']} -> "
              f"{r['reconstructed_steps']}; |error| median {r['median_abs_error']:.2%}, p90 "
              f"{r['p90_abs_error']:.2%}, p99 {r['p99_abs_error']:.2%}; attributed "
              f"{r['attributed_reconstructed_j'] / r['attributed_exact_j'] - 1:+.2%} ({energy})")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--jitter-ms", default="0,0.5,2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reconstruction_accuracy.json"))
    args = p.parse_args()
    runs = list(args.runs)
    if not runs:
        runs = [d for d in (H200 / "chat", H200 / "code") if d.is_dir()]
        if not (CPU_RUN / "summary.json").exists():
            print(f"making {CPU_RUN} (the chat slice on the real engine, about 3 minutes)")
            subprocess.run([sys.executable, "-m", "replay", "run", "traces/chat.jsonl", "--engine", "vllm",
                            "--duration-s", "120", "--meter", "none", "--quiet", "--force", "--out", str(CPU_RUN)],
                           cwd=ROOT, check=True)
        runs.append(CPU_RUN)
    jitters = [float(x) for x in args.jitter_ms.split(",")]
    rows = [row for run in runs for row in compare(run, jitters, args.seed)]
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
