"""benchmarks/mlenergy_gap.py end to end on a few rows: the per-row CSV (every row and estimator, nothing dropped),
the JSON summary with the sensitivity and the not-estimated list, the plot and the markdown tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from replay.estimate.published import COMPARED

REPO = Path(__file__).resolve().parents[2]
HEADER = ("task,Model,GPU,TP,PP,Energy/req (J),Avg TPOT (s),Token tput (tok/s),Avg Output Tokens,Avg BS (reqs),"
          "Max BS (reqs),source_path")
ROWS = [  # ml-energy/leaderboard-v2 rows (shared CSV lines 127, 239, 68)
    "chat,meta-llama/Meta-Llama-3.1-8B-Instruct,NVIDIA H100 80GB HBM3,1,1,82.58581692374547,0.035,1784.7,482.798,"
    "63.88024385827247,64,a.json",
    "code,codellama/CodeLlama-7b-hf,NVIDIA A100-SXM4-40GB,1,1,28.59409628402536,0.0377,834.3,99.17530487804878,"
    "31.7431633698479,32,b.json",
    "chat,mistralai/Mixtral-8x22B-Instruct-v0.1,NVIDIA A100-SXM4-40GB,8,2,481.980768373405,0.66,1521.9,386.567,"
    "1993.9225061830173,2048,c.json",
]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("mlenergy_gap", REPO / "benchmarks" / "mlenergy_gap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_table_summary_and_plot(script, tmp_path, capsys):
    data = tmp_path / "in.csv"
    data.write_text("\n".join([HEADER, *ROWS]) + "\n")
    out_csv, out_json, out_png = tmp_path / "gap.csv", tmp_path / "gap.json", tmp_path / "gap.png"
    rc = script.main(["--data", str(data), "--csv", str(out_csv), "--json", str(out_json), "--plot", str(out_png),
                      "--markdown"])
    assert rc == 0
    table = pd.read_csv(out_csv)
    assert len(table) == len(ROWS) * len(COMPARED)
    assert {"gap_input_half", "gap_input_double", "measured_j", "estimate_j", "gap", "reason"} <= set(table.columns)
    flops = table[table["estimator"] == "flops"].set_index("line")
    assert flops.loc[2, "gap"] == pytest.approx(flops.loc[2, "measured_j"] / flops.loc[2, "estimate_j"] - 1, rel=1e-8)
    # a longer prompt means more FLOPs: the gap at twice the input is below the gap at half of it
    assert flops.loc[2, "gap_input_double"] < flops.loc[2, "gap"] < flops.loc[2, "gap_input_half"]
    assert pd.isna(flops.loc[4, "gap"]) and "mixture of experts" in flops.loc[4, "reason"]
    doc = json.loads(out_json.read_text())
    assert doc["rows"] == 3 and doc["rows_estimated"] == 2
    assert doc["summary"]["flops"]["all"]["n"] == 2 and doc["summary"]["sweetspot"]["all"]["n"] == 1
    assert doc["sensitivity"]["half"]["flops"]["median"] > doc["summary"]["flops"]["all"]["median"]
    assert doc["not_estimated"] == [{"model_id": "mistralai/Mixtral-8x22B-Instruct-v0.1", "rows": 1,
                                     "reason": flops.loc[4, "reason"]}]
    assert out_png.stat().st_size > 10_000 and out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| flops | all | 2 |" in printed and "not estimated:" in printed


def test_script_bad_input_is_one_line_and_nonzero(script, tmp_path, capsys):
    data = tmp_path / "in.csv"
    data.write_text(HEADER.replace("TP,", "Tensor,") + "\n" + ROWS[0] + "\n")
    assert script.main(["--data", str(data), "--csv", str(tmp_path / "x.csv"), "--json", str(tmp_path / "x.json"),
                        "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "in.csv: missing column 'TP'" in err and not (tmp_path / "x.csv").exists()
