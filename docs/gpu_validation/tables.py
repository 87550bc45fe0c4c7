"""The estimator tables of docs/gpu_validation.md, from the report.json files `replay report` wrote (it formats
what the reports print; no new numbers). Usage: python docs/gpu_validation/tables.py /tmp/gpuval
"""
import json
import os
import sys

os.chdir(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpuval")
RUNS = ("chat", "code", "grid")
SETS = {"dense": "{run}/report/report.json", "sparse": "sparse-{run}/report.json", "theta": "theta-{run}/report.json"}
COLS = [("flops, dense", "dense", "flops"), ("flops, sparse", "sparse", "flops"),
        ("roofline, dense", "dense", "roofline"), ("roofline, sparse", "sparse", "roofline"),
        ("sweetspot, Table 5", "dense", "sweetspot"), ("sweetspot, grid fit", "theta", "sweetspot")]


def load(path):
    return json.load(open(path))["comparison"]


def pct(g):
    if round(g * 100, 1) == 0:
        return "0.0%"
    return f"{g:+,.0%}" if abs(g) >= 0.1 else f"{g:+.1%}"


print("| run | estimator | estimate J | gap (requests) | MAPE | median APE | gap (whole run) |")
print("|---|---|---:|---:|---:|---:|---:|")
for run in RUNS:
    c = {k: load(v.format(run=run)) for k, v in SETS.items()}
    for name, which, est in COLS:
        t = next(t for t in c[which]["totals"] if t["estimator"] == est)
        print(f"| {run} | {name} | {t['estimated_j']:,.0f} | {pct(t['gap'])} | {t['mape']:.1%} | "
              f"{t['median_ape']:.1%} | {pct(t['run_gap'])} |")
for run in RUNS:
    c = {k: load(v.format(run=run)) for k, v in SETS.items()}
    print(f"\n{run}: above the largest bins {c['dense']['bins']['above']}\n")
    print("| input <= | output <= | requests | measured J | J / output token | "
          + " | ".join(n for n, _, _ in COLS) + " |")
    print("|---:|---:|---:|---:|---:|" + "---:|" * len(COLS))
    rows = {k: {(r["input_bin"], r["output_bin"]): r for r in c[k]["bins"]["rows"]} for k in SETS}
    for key, r in rows["dense"].items():
        gaps = [pct(rows[w][key]["estimators"][e]["gap"]) for _, w, e in COLS]
        print(f"| {key[0]} | {key[1]} | {r['requests']} | {r['recorded_j']:,.1f} | "
              f"{r['recorded_j_per_output_token']:.3f} | " + " | ".join(gaps) + " |")
