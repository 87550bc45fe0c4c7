"""Benchmark: the estimators beside the ML.ENERGY leaderboard v2's measured energies (published data as a check).

For every row of ../shared/data/mlenergy_v2/mlenergy_v2_llm_text_generation.csv (one model, GPU, TP x PP and
max_num_seqs under vLLM 0.5.4; Chung et al., "The ML.ENERGY Benchmark", Apache-2.0) and every estimator in
``replay.estimate.published.COMPARED`` (flops with the dense and the sparse peak, the roofline at the row's batch
and at batch 1, [SS26] Eq. 5 where Table 5 has the model): measured J/request, estimated J/request, the [Na25]
Table 4 gap (measured / estimate - 1) and the absolute percentage error; the gap distribution per estimator
(median, IQR, min/max; by GPU, by task) and the MAPE; the same at half and twice the assumed input length; and
every row that could not be estimated, with the reason. The assumptions are in replay/estimate/published.py and
docs/mlenergy_gap.md.

    python benchmarks/mlenergy_gap.py                 # a few seconds; writes the CSV, the JSON and the plot
    python benchmarks/mlenergy_gap.py --markdown      # also prints the tables of docs/mlenergy_gap.md

Writes benchmarks/results/mlenergy_gap.csv (one line per row and estimator), benchmarks/results/mlenergy_gap.json
(the summary) and docs/mlenergy_gap.png (measured / estimate against the mean batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from replay.estimate.published import (  # noqa: E402
    CHAT_INPUT_TOKENS, CODE_INPUT_TOKENS, COMPARED, Summary, gap_table, read_mlenergy, summarize,
)

DATA = ROOT.parent / "shared" / "data" / "mlenergy_v2" / "mlenergy_v2_llm_text_generation.csv"
CSV_OUT = HERE / "results" / "mlenergy_gap.csv"
JSON_OUT = HERE / "results" / "mlenergy_gap.json"
PLOT_OUT = ROOT / "docs" / "mlenergy_gap.png"
SCALES = {"half": 0.5, "double": 2.0}
NA25_VLLM_GAP = 0.64  # [Na25]: measured above the theoretical estimate by +64% with vLLM
SOURCE = ("ML.ENERGY leaderboard v2 (Chung et al., \"The ML.ENERGY Benchmark\"), Apache-2.0, "
          "github.com/ml-energy/leaderboard-v2; the CSV and model lists are in ../shared/data/mlenergy_v2")


def pct(x: float | None) -> str:
    """A gap or error as a signed percentage ('+64%'); a missing value as 'n/a'."""
    return "n/a" if x is None or not np.isfinite(x) else f"{x * 100:+.0f}%"


def run(data_path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The gap table (with the gaps at half and twice the input length alongside) and its JSON summary."""
    data = read_mlenergy(data_path)
    table = gap_table(data)
    # What the GPUs drew on average in the window: J per output token x output tokens per second, per GPU.
    tput = pd.to_numeric(data.get("Token tput (tok/s)", pd.Series(np.nan, index=data.index)), errors="coerce")
    power = data["energy_j"] / data["output_tokens"] * tput / data["gpus"]
    table["power_per_gpu_w"] = table["line"].map(dict(zip(data["line"], power)))
    sens = {}
    for label, scale in SCALES.items():
        other = gap_table(data, input_scale=scale)
        table[f"gap_input_{label}"] = other["gap"].to_numpy()
        sens[label] = summarize(other)
    summary = summarize(table)
    rows_done = table[table["estimator"] == "flops"]
    skipped = rows_done[rows_done["estimate_j"].isna()]
    doc = {
        "source": SOURCE,
        "data": os.path.relpath(data_path, ROOT),
        "rows": int(len(data)),
        "rows_estimated": int(rows_done["estimate_j"].notna().sum()),
        "assumptions": {
            "input_tokens": {"chat": dict(CHAT_INPUT_TOKENS), "code": CODE_INPUT_TOKENS},
            "sensitivity_input_scales": SCALES,
            "per_row": "one request of the row's mean input and output length (bilinear between whole tokens)",
            "decode_batch": "Avg BS (reqs) / PP for roofline; prefill alone; flops and sweetspot batch-independent",
            "gpus": "estimates for all TP x PP GPUs: flops and roofline are the same on any number of GPUs",
        },
        "estimators": COMPARED,
        "summary": _plain(summary),
        "measured_power_per_gpu_w": {
            gpu: {"median": float(g.median()), "min": float(g.min()), "max": float(g.max()), "rows": int(len(g))}
            for gpu, g in table[table["estimator"] == "flops"].groupby("gpu")["power_per_gpu_w"] if g.notna().any()
        },
        "sensitivity": {label: {name: _plain(s[name]["all"]) for name in COMPARED} for label, s in sens.items()},
        "not_estimated": [
            {"model_id": m, "rows": int(len(g)), "reason": str(g["reason"].iloc[0])}
            for m, g in skipped.groupby("model_id", sort=True)
        ],
    }
    return table, doc


def _plain(value: Any) -> Any:
    """Summaries (and dicts of them) as plain values for JSON."""
    if isinstance(value, Summary):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def print_summary(doc: dict[str, Any]) -> None:
    """The distribution per estimator, by GPU and task, the sensitivity and what was not estimated."""
    print(f"{doc['rows']} rows, {doc['rows_estimated']} estimated ({SOURCE})")
    print("gap = measured / estimate - 1 ([Na25] Table 4); MAPE = mean |estimate - measured| / measured")
    cols = ("median", "p25", "p75", "min", "max")
    print(f"{'estimator':<13} {'group':<24} {'n':>4} " + " ".join(f"{c:>8}" for c in cols) + f" {'MAPE':>7}")
    for name in COMPARED:
        s = doc["summary"][name]
        groups = [("all", s["all"])] + list(s["by_gpu"].items()) + list(s["by_task"].items())
        for label, g in groups:
            if g["n"] == 0:
                continue
            print(f"{name:<13} {label.replace('NVIDIA ', ''):<24} {g['n']:>4} {pct(g['median']):>8} {pct(g['p25']):>8} "
                  f"{pct(g['p75']):>8} {pct(g['min']):>8} {pct(g['max']):>8} {g['mape'] * 100:>6.0f}%")
    print("\nmedian gap (MAPE) at half / assumed / twice the input length")
    for name in COMPARED:
        cells = []
        for label in ("half", None, "double"):
            g = doc["summary"][name]["all"] if label is None else doc["sensitivity"][label][name]
            cells.append(f"{pct(g['median'])} ({g['mape'] * 100:.0f}%)" if g["n"] else "n/a")
        print(f"  {name:<13} " + " / ".join(cells))
    print("\nmean power per GPU in the measured window (J/token x tokens/s / GPUs):")
    for gpu, p in doc["measured_power_per_gpu_w"].items():
        print(f"  {gpu}: median {p['median']:.0f} W, {p['min']:.0f} to {p['max']:.0f} W over {p['rows']} rows")
    print("\nnot estimated:")
    for item in doc["not_estimated"]:
        print(f"  {item['model_id']} ({item['rows']} rows): {item['reason']}")
    for name in COMPARED:
        extra = {k: v for k, v in doc["summary"][name]["not_estimated"].items()
                 if k not in {item["reason"] for item in doc["not_estimated"]}}
        if extra:
            print(f"  {name}: {sum(extra.values())} more rows without an estimate, e.g. {next(iter(extra))}")


def markdown(table: pd.DataFrame, doc: dict[str, Any]) -> str:
    """The tables of docs/mlenergy_gap.md."""
    out = ["| estimator | group | rows | median gap | IQR | min | max | MAPE |", "|---|---|---|---|---|---|---|---|"]
    for name in COMPARED:
        s = doc["summary"][name]
        groups = [("all", s["all"])] + list(s["by_gpu"].items()) + list(s["by_task"].items())
        for label, g in groups:
            if g["n"]:
                out.append(f"| {name} | {label.replace('NVIDIA ', '')} | {g['n']} | {pct(g['median'])} | "
                           f"{pct(g['p25'])} to {pct(g['p75'])} | {pct(g['min'])} | {pct(g['max'])} | "
                           f"{g['mape'] * 100:.0f}% |")
    out += ["", "| estimator | input x0.5 | as assumed | input x2 |", "|---|---|---|---|"]
    for name in COMPARED:
        cells = []
        for label in ("half", None, "double"):
            g = doc["summary"][name]["all"] if label is None else doc["sensitivity"][label][name]
            cells.append(f"{pct(g['median'])} (MAPE {g['mape'] * 100:.0f}%)" if g["n"] else "n/a")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    est = table[table["estimate_j"].notna()]
    wide = est.pivot_table(index=["task", "model_id", "gpu"], columns="estimator", values="gap", aggfunc="median")
    meas = est.groupby(["task", "model_id", "gpu"]).agg(rows=("line", "nunique"), lo=("measured_j", "min"),
                                                        hi=("measured_j", "max"), n_in=("input_tokens", "first"),
                                                        n_out=("output_tokens", "median"),
                                                        bs_lo=("avg_batch", "min"), bs_hi=("avg_batch", "max"))
    names = [n for n in COMPARED if n in wide.columns]
    out += ["", "| task | model | GPU | rows | mean batch | input / output tokens | measured J/request | "
            + " | ".join(f"{n}" for n in names) + " |", "|" + "---|" * (7 + len(names))]
    for key, m in meas.iterrows():
        task, model_id, gpu = key
        gaps = " | ".join(pct(wide.loc[key, n]) if n in wide.columns and pd.notna(wide.loc[key, n]) else ""
                          for n in names)
        out.append(f"| {task} | {model_id.split('/')[1]} | {gpu.replace('NVIDIA ', '')} | {int(m.rows)} | "
                   f"{m.bs_lo:.0f}-{m.bs_hi:.0f} | {m.n_in:.0f} / {m.n_out:.0f} | {m.lo:.1f}-{m.hi:.1f} | {gaps} |")
    return "\n".join(out)


def plot(table: pd.DataFrame, path: Path) -> None:
    """Measured / estimate (log) against the mean running batch, one panel per estimator, by GPU and task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["flops", "flops-sparse", "roofline", "sweetspot"]
    fig, grid = plt.subplots(2, 2, figsize=(10, 8), sharey=True)
    axes = grid.ravel()
    colors = {"NVIDIA A100-SXM4-40GB": "tab:blue", "NVIDIA H100 80GB HBM3": "tab:orange"}
    markers = {"chat": "o", "code": "^"}
    for ax, name in zip(axes, names):
        lines = table[(table["estimator"] == name) & table["estimate_j"].notna()]
        for (gpu, task), g in lines.groupby(["gpu", "task"]):
            ax.scatter(g["avg_batch"], g["measured_j"] / g["estimate_j"], s=14, alpha=0.75, c=colors.get(gpu, "grey"),
                       marker=markers.get(task, "s"), label=f"{gpu.replace('NVIDIA ', '')}, {task}")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(1.0 + NA25_VLLM_GAP, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} ({len(lines)} rows)", fontsize=10)
        ax.set_xlabel("mean running batch (Avg BS)")
        ax.set_ylabel("measured / estimate")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("ML.ENERGY leaderboard v2: measured energy per request over replay's estimates\n"
                 "(solid: equal; dashed: [Na25]'s +64% for vLLM)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the ML.ENERGY v2 CSV (default: %(default)s)")
    ap.add_argument("--csv", type=Path, default=CSV_OUT, help="per-row output (default: %(default)s)")
    ap.add_argument("--json", type=Path, default=JSON_OUT, help="summary output (default: %(default)s)")
    ap.add_argument("--plot", type=Path, default=PLOT_OUT, help="PNG output (default: %(default)s)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--markdown", action="store_true", help="also print the tables of docs/mlenergy_gap.md")
    args = ap.parse_args(argv)
    try:
        table, doc = run(args.data)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False, float_format="%.10g")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    print_summary(doc)
    if not args.no_plot:
        plot(table, args.plot)
        print(f"\nplot: {args.plot}")
    print(f"table: {args.csv}\nsummary: {args.json}")
    if args.markdown:
        print("\n" + markdown(table, doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
