"""Numbers for docs/gpu_validation.md derived from replay's own outputs (summary.json, report.json, power.csv).

Usage: python docs/gpu_validation/derived.py /tmp/gpuval   (after the `replay report` commands of that document)
"""
import csv
import json
import os
import statistics
import sys

os.chdir(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpuval")
DENSE, SPARSE = 989.4, 1978.9   # H200 bf16 peak TFLOP/s, replay/specs/hardware.yaml


def totals(path):
    return {t["estimator"]: t for t in json.load(open(path))["comparison"]["totals"]}


for run in ("chat", "code", "grid"):
    s = json.load(open(f"{run}/summary.json"))["summary"]
    dense, sparse = totals(f"{run}/report/report.json"), totals(f"sparse-{run}/report.json")
    n, above, power = s["requests"], s["energy_above_idle_j"], s["energy_total_j"] / s["duration_s"]
    print(f"{run}: mean input {s['total_input_tokens'] / n:.0f}, "
          f"mean output {s['total_output_tokens'] / n:.0f} tokens; "
          f"mean power {power:.0f} W ({power / 700:.0%} of the 700 W TDP), above idle {above / s['duration_s']:.0f} W")
    d = dense["flops"]
    print(f"  flops gap: dense {d['gap']:+.1%}, sparse (report) {sparse['flops']['gap']:+.1%}, "
          f"dense gap x peak ratio {SPARSE}/{DENSE}: {(1 + d['gap']) * SPARSE / DENSE - 1:+.1%}")
    for est in ("flops", "roofline", "sweetspot"):   # whole run, with the idle energy taken out of the measurement
        print(f"  {est}: run above idle / run estimate - 1: dense {above / dense[est]['run_estimate_j'] - 1:+.0%}, "
              f"sparse {above / sparse[est]['run_estimate_j'] - 1:+.0%}")
    rows = list(csv.DictReader(open(f"{run}/power.csv")))
    t = [float(r["time_s"]) for r in rows]
    w = [float(r["gpu0_w"]) if r["gpu0_w"] else None for r in rows]
    spikes = [i for i in range(1, len(w)) if w[i] and w[i] > 900]
    excess = sum((w[i] - statistics.median([w[j] for j in range(max(1, i - 5), min(len(w), i + 6))
                                            if j != i and w[j] and w[j] <= 900])) * (t[i] - t[i - 1]) for i in spikes)
    spacing = statistics.median(t[b] - t[a] for a, b in zip(spikes, spikes[1:]))
    print(f"  power.csv: {len(w) - 1} intervals, max {max(x for x in w if x):.0f} W; {len(spikes)} above 900 W, "
          f"{excess:,.0f} J above their neighbours ({excess / s['energy_total_j']:.1%} of the run), "
          f"median spacing {spacing:.1f} s")

# code: its prefill-dominated bins (input bin >= 1024, output bin <= 64), the regime of [Na25]'s Azure traces
for peak, path in (("dense", "code/report/report.json"), ("sparse", "sparse-code/report.json")):
    sel = [r for r in json.load(open(path))["comparison"]["per_request"]
           if r["input_bin"] and r["input_bin"] >= 1024 and r["output_bin"] and r["output_bin"] <= 64]
    rec, est = sum(r["recorded_j"] for r in sel), sum(r["flops"] for r in sel)
    print(f"code, input bin >= 1024 and output bin <= 64, {peak} peak: {len(sel)} requests, "
          f"{rec:,.0f} J measured, flops {est:,.0f} J, gap {rec / est - 1:+.0%}")
