"""Benchmark: splitting step energy over requests on the simulated chat hour, vectorised against the old loop.

Claim (the closing note of issues 4 and 5): `replay.energy.attribution.request_step_work`, vectorised over all
records at once, is about 9x faster than the per-request loop it replaced, with the same output; a measured run's
split by tokens and by FLOPs computes it once.

What it does: simulates traces/chat.jsonl (19,366 requests) on the default simulated engine (`replay run
traces/chat.jsonl --engine sim`, no run directory), then times, best of --repeat each, in this process:
- `request_step_work(requests)` (the library) against the reference loop kept in
  tests/energy/test_attribution.py (`reference_request_step_work`, the code it replaced), checking both give the
  same frame;
- the split a measured run makes (`attribute` by tokens and by FLOPs, over the power model's timeline of the run)
  with the work table computed once, against computing it in each call as before.

    python benchmarks/attribution_speed.py               # about a minute on 2 cores

Writes benchmarks/results/attribution_speed.json and prints the ratios. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "attribution_speed.json"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "energy"))


def best_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import pandas as pd

    from replay.config import RunConfig
    from replay.energy.attribution import FlopCoefficients, attribute, request_step_work
    from replay.energy.meters import model_timeline
    from replay.engines.sim.perf import PerfModel
    from replay.run import execute
    from replay.specs import hardware, model
    from test_attribution import reference_request_step_work

    result = execute(RunConfig(trace=str(ROOT / "traces" / "chat.jsonl"), engine="sim"), progress=False)
    requests, steps = result.requests, result.steps
    new, old = request_step_work(requests), reference_request_step_work(requests)
    pd.testing.assert_frame_equal(new.reset_index(drop=True), old.reset_index(drop=True), check_exact=True)
    timeline = model_timeline(steps, idle_w=[0.0])
    flops = FlopCoefficients.from_perf(PerfModel(model("llama-3.1-8b"), hardware("h100-sxm")))

    def split_once():
        work = request_step_work(requests)
        attribute(timeline, steps, requests, "tokens", work=work)
        attribute(timeline, steps, requests, "flops", flops, work=work)

    def split_twice():
        attribute(timeline, steps, requests, "tokens")
        attribute(timeline, steps, requests, "flops", flops)

    rows = {
        "request_step_work_s": best_s(lambda: request_step_work(requests), args.repeat),
        "reference_loop_s": best_s(lambda: reference_request_step_work(requests), args.repeat),
        "split_work_once_s": best_s(split_once, args.repeat),
        "split_work_twice_s": best_s(split_twice, args.repeat),
    }
    ratios = {"request_step_work_speedup": rows["reference_loop_s"] / rows["request_step_work_s"],
              "split_speedup_work_once": rows["split_work_twice_s"] / rows["split_work_once_s"]}
    print(f"chat hour: {len(requests):,} requests, {len(steps):,} steps, {len(new):,} request-step rows")
    for k, v in rows.items():
        print(f"  {k:<22} {v:8.3f} s")
    print(f"  request_step_work vs the reference loop: {ratios['request_step_work_speedup']:.1f}x faster "
          "(same frame, checked)")
    print(f"  tokens + FLOPs split, work computed once vs per call: {ratios['split_speedup_work_once']:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "loadavg": list(os.getloadavg())},
        "requests": len(requests), "steps": len(steps), "work_rows": len(new), "repeat": args.repeat,
        "seconds": rows, "ratios": ratios,
        "command": "python benchmarks/attribution_speed.py",
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
