"""Benchmark: `replay convert` on a generated Azure-2024-form CSV against pandas.read_csv + pandas.to_datetime.

Issue target: at least 3x the baseline's rows per second, with memory that does not grow with the file.
The baseline is the fastest pandas path that parses this form correctly (format='ISO8601'); plain
`to_datetime` (no format) is run too and fails on rows without a fraction, and format='mixed' is what
pandas's error message suggests. Imports happen before the clock starts, for every case.
Each measurement runs in its own process so its peak memory (ru_maxrss) is its own. Run from the repo root:

    python benchmarks/convert_speed.py                 # 1M and 10M rows (the recorded result)
    python benchmarks/convert_speed.py --rows 200000   # a quick look

Writes benchmarks/results/convert_speed.json and prints a table; generated files go to benchmarks/_data/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
RESULTS = HERE / "results" / "convert_speed.json"

# Each case: (imports, untimed) and the timed work, which sets `rows`.
CASES = {
    "pandas read_csv + to_datetime(format='ISO8601') (baseline)": (
        "import pandas as pd",
        "df = pd.read_csv(PATH)\nrows = len(pd.to_datetime(df['TIMESTAMP'], format='ISO8601'))"),
    "pandas read_csv + to_datetime(format='mixed')": (
        "import pandas as pd",
        "df = pd.read_csv(PATH)\nrows = len(pd.to_datetime(df['TIMESTAMP'], format='mixed'))"),
    "pandas read_csv + to_datetime() (plain)": (
        "import pandas as pd",
        "df = pd.read_csv(PATH)\nrows = len(pd.to_datetime(df['TIMESTAMP']))"),
    "replay convert -> parquet": (
        "from replay.trace.convert import convert", "rows = convert(PATH, OUT + '.parquet').written"),
    "replay convert -> jsonl": (
        "from replay.trace.convert import convert", "rows = convert(PATH, OUT + '.jsonl').written"),
}
BASELINE = next(name for name in CASES if "(baseline)" in name)

# Peak memory is VmHWM (per process image); ru_maxrss would carry the parent's peak across exec on Linux.
CHILD = """
import sys, time, json
PATH, OUT = sys.argv[1], sys.argv[2]
{setup}
t0 = time.perf_counter()
try:
{body}
    error = None
except Exception as exc:
    rows, error = 0, f"{{type(exc).__name__}}: {{str(exc).splitlines()[0][:160]}}"
dt = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({{"seconds": dt, "rows": rows, "peak_mb": hwm / 1024, "error": error}}))
"""


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """An Azure 2024-form trace: zoned timestamps, whole-second rows without a fraction, LF, final newline."""
    rng = np.random.default_rng(seed)
    start_us = 1_715_299_200_000_000  # 2024-05-10 00:00:00 UTC
    with open(path, "wb") as f:
        f.write(b"TIMESTAMP,ContextTokens,GeneratedTokens\n")
        t_us = start_us
        for lo in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - lo)
            gaps = rng.exponential(22_000, n).astype(np.int64)  # ~45 req/s, a week ~ 27M rows
            us = t_us + np.cumsum(gaps)
            # A missing fraction means .000000: snap a row to its whole second where no earlier row is later.
            floor = us // 1_000_000 * 1_000_000
            prev = np.concatenate([[t_us], us[:-1]])
            whole_s = (floor >= prev) & (rng.random(n) < 0.5)
            us = np.where(whole_s, floor, us)
            t_us = int(us[-1])
            whole = pc.strftime(pa.array(us // 1_000_000, pa.timestamp("s")), "%Y-%m-%d %H:%M:%S")
            frac = pc.utf8_lpad(pc.cast(pa.array(us % 1_000_000), pa.string()), 6, "0")
            frac = pc.if_else(pa.array(whole_s), "", pc.binary_join_element_wise(".", frac, ""))
            ctx = pc.cast(pa.array(rng.integers(1, 8000, n)), pa.string())
            gen = pc.cast(pa.array(rng.integers(1, 700, n)), pa.string())
            lines = pc.binary_join_element_wise(whole, frac, "+00:00,", ctx, ",", gen, "\n", "")
            f.write(b"".join(s.encode() for s in lines.to_pylist()))


def measure(case: tuple[str, str], path: Path) -> dict:
    setup, body = case
    out = DATA / f"out-{os.getpid()}"
    code = CHILD.format(setup=setup, body="\n".join("    " + line for line in body.splitlines()))
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(out)],
                          capture_output=True, text=True, cwd=HERE.parent)
    for suffix in (".parquet", ".jsonl"):
        Path(str(out) + suffix).unlink(missing_ok=True)
    if proc.returncode:
        raise SystemExit(f"measurement failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs per case")
    args = ap.parse_args()
    DATA.mkdir(exist_ok=True)
    results = []
    for rows in args.rows:
        path = DATA / f"azure2024_{rows}.csv"
        if not path.exists():
            t0 = time.perf_counter()
            generate(path, rows)
            print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        for name, case in CASES.items():
            runs = [measure(case, path) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            if best["error"] is None:
                assert best["rows"] == rows, (name, best)
            results.append({**best, "rows": rows, "case": name,
                            "rows_per_s": rows / best["seconds"] if best["error"] is None else None})
    base = {r["rows"]: r["seconds"] for r in results if r["case"] == BASELINE}
    print(f"\n{'rows':>10}  {'case':<60} {'seconds':>8} {'rows/s':>12} {'peak MB':>8} {'vs baseline':>11}")
    for r in results:
        if r["error"]:
            r["speedup_vs_baseline"] = None
            print(f"{r['rows']:>10}  {r['case']:<60} failed: {r['error'][:70]}")
            continue
        r["speedup_vs_baseline"] = base[r["rows"]] / r["seconds"]
        print(f"{r['rows']:>10}  {r['case']:<60} {r['seconds']:>8.2f} {r['rows_per_s']:>12,.0f} "
              f"{r['peak_mb']:>8.0f} {r['speedup_vs_baseline']:>10.2f}x")
    import pandas, pyarrow
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "pandas": pandas.__version__, "pyarrow": pyarrow.__version__},
        "results": results}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
