"""`replay report` end to end on simulated runs (the real engine's report is in test_report_vllm.py): the printed
tables, report.json against an independent recomputation from the run's files, modelled energy labelled as
such, a run without energy, the self-contained HTML page, the short version `replay run` prints, and one-line
errors for bad run directories and options."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import TRACES
from replay.cli import main
from replay.estimate import EstimateContext, estimate
from replay.estimate.forms import Theta, save_theta
from replay.report.text import short_report
from replay.specs import hardware, model
from test_plots import sim_run


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    return {"modelled": sim_run(root, "modelled", duration_s=30.0),
            "unmeasured": sim_run(root, "unmeasured", duration_s=30.0, meter="none")}


def strict_json(path):
    def no_constants(name):
        raise AssertionError(f"{path}: {name} in JSON")
    return json.loads(path.read_text(), parse_constant=no_constants)


def records(path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])


def assert_self_contained(html: str) -> None:
    """Opens without a network: no http(s) source or link, no scripts, no external CSS, images as data URIs."""
    assert html.startswith("<!DOCTYPE html>")
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", html, flags=re.IGNORECASE)
    assert all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert "url(" not in html
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    return images


def test_report_of_a_modelled_run(runs):
    run = runs["modelled"]
    result = cli("report", run.out, "--html")
    assert result.exit_code == 0, result.output
    out = result.output
    # modelled energy is labelled modelled wherever measured would appear, never "measured"
    assert "modelled J" in out and "gap = modelled / estimate - 1" in out
    assert "measured" not in out
    report = run.out / "report"
    names = {p.name for p in report.iterdir()}
    assert names == {"report.json", "comparison.csv", "power.png", "estimates.png", "bins.png", "latency.png",
                     "report.html"}
    doc = strict_json(report / "report.json")
    c = doc["comparison"]
    assert c["energy"] == "modelled" and doc["run"]["energy"] == "modelled"
    assert [t["estimator"] for t in c["totals"]] == ["flops", "roofline", "sweetspot"]

    # independently: the finished requests' energy from requests.jsonl, and the flops estimate of them
    req = records(run.out / "requests.jsonl")
    fin = req[req["status"] == "finished"]
    assert c["requests_compared"] == len(fin) == len(c["per_request"])
    assert c["recorded_total_j"] == pytest.approx(fin["energy_j"].sum())
    ctx = EstimateContext(model("llama-3.1-8b"), hardware("h100-sxm"))
    flops = estimate("flops", fin.reset_index(drop=True), ctx)
    t = c["totals"][0]
    assert t["estimated_j"] == pytest.approx(flops.total_j)
    assert t["gap"] == pytest.approx(fin["energy_j"].sum() / flops.total_j - 1)
    ape = np.abs(flops.per_request_j - fin["energy_j"].to_numpy()) / fin["energy_j"].to_numpy()
    assert t["mape"] == pytest.approx(ape.mean())
    assert t["gap_text"] in out and f"{100 * t['mape']:.1f}%" in out
    assert t["run_gap"] == pytest.approx(doc["run"]["energy_total_j"] / flops.total_j - 1)
    # per bin: the requests and their energy add up to the binned ones
    rows = c["bins"]["rows"]
    assert sum(r["requests"] for r in rows) + sum(c["bins"]["above"].values()) == len(fin)
    binned = [r for r in c["per_request"] if r["input_bin"] is not None and r["output_bin"] is not None]
    assert sum(r["recorded_j"] for r in rows) == pytest.approx(sum(r["recorded_j"] for r in binned))
    # where the energy went, and the latency, as summary.json has them
    summary = strict_json(run.out / "summary.json")["summary"]
    b = doc["energy_breakdown"]
    assert b["idle_share"] == pytest.approx(summary["energy_idle_j"] / summary["energy_total_j"])
    assert b["prefill_j"] + b["decode_j"] == pytest.approx(b["steps_j"])
    assert doc["latency_s"]["ttft"]["p99"] == summary["p99_ttft_s"]
    assert f"{summary['p99_ttft_s'] * 1000:,.2f}" in out
    # comparison.csv: one row per compared request
    csv = pd.read_csv(report / "comparison.csv")
    assert list(csv["recorded_j"]) == pytest.approx(list(fin["energy_j"]))
    assert {p["name"]: p["file"] for p in doc["plots"]} == {"power": "power.png", "estimates": "estimates.png",
                                                             "bins": "bins.png", "latency": "latency.png"}
    html = (report / "report.html").read_text()
    assert len(assert_self_contained(html)) == 4
    assert "modelled J" in html and "measured" not in html


def test_report_of_a_run_without_energy(runs, tmp_path):
    run = runs["unmeasured"]
    result = cli("report", run.out, "--out", tmp_path / "r", "--html")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "not measured: --meter none" in out
    assert "what each estimator predicts" in out
    assert "plot estimates skipped: energy not measured" in out
    doc = strict_json(tmp_path / "r" / "report.json")
    c = doc["comparison"]
    assert c["energy"] == "not measured" and c["recorded_total_j"] is None and c["run_total_j"] is None
    assert all(r["recorded_j"] is None for r in c["per_request"])
    assert all(t["estimated_j"] > 0 and t["recorded_j"] is None and t["gap"] is None for t in c["totals"])
    assert doc["energy_breakdown"]["total_j"] is None
    assert not (run.out / "report").exists()             # --out elsewhere: nothing written in the run
    assert_self_contained((tmp_path / "r" / "report.html").read_text())


def test_every_estimator_and_why_some_cannot(runs, tmp_path):
    result = cli("report", runs["modelled"].out, "--estimator", "all", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "not estimable: no eq4 coefficients given" in result.output
    assert "not estimable: no measured batch energies" in result.output
    doc = strict_json(tmp_path / "report.json")
    cannot = {t["estimator"]: t for t in doc["comparison"]["totals"] if t["estimated_j"] is None}
    assert set(cannot) == {"sweetspot-flops", "b1", "b2", "b3", "b4", "binned"}
    assert all(t["reason"] and t["gap"] is None for t in cannot.values())


def test_theta_file_and_sparse_peak(runs, tmp_path):
    theta = Theta("eq4", (1e-3, 1e-8, 1e-6, 1e-4, 1e-6), "llama-3.1-8b", "h100-sxm", "a hand-made fit")
    save_theta(theta, tmp_path / "theta.yaml")
    dense = cli("report", runs["modelled"].out, "--out", tmp_path / "d", "--estimator", "flops")
    sparse = cli("report", runs["modelled"].out, "--theta", tmp_path / "theta.yaml", "--peak", "sparse",
                 "--out", tmp_path / "s")
    assert dense.exit_code == 0 and sparse.exit_code == 0, sparse.output
    d, s = strict_json(tmp_path / "d" / "report.json"), strict_json(tmp_path / "s" / "report.json")
    totals = {t["estimator"]: t for t in s["comparison"]["totals"]}
    assert list(totals) == ["flops", "roofline", "sweetspot-flops"]
    assert totals["sweetspot-flops"]["estimated_j"] > 0
    # the [Na25] estimate is TDP / FLOPS_hw x FLOPs: the 2:4-sparse peak (about twice the dense one) divides it
    h100 = hardware("h100-sxm")
    ratio = h100.peak_flops("bf16") / h100.peak_flops("bf16", sparse=True)
    assert totals["flops"]["estimated_j"] == pytest.approx(d["comparison"]["totals"][0]["estimated_j"] * ratio)
    assert s["assumed"]["peak"] == "sparse"


def test_assumed_hardware_override(runs, tmp_path):
    result = cli("report", runs["modelled"].out, "--gpu", "a100-80gb", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "on a100-80gb" in result.output
    assert strict_json(tmp_path / "report.json")["assumed"]["hardware"] == "a100-80gb"


def test_short_report_from_the_result_and_from_the_directory(runs):
    for name, run in runs.items():
        text = short_report(run)
        assert text == short_report(run.out)
        assert f"full report: replay report {run.out}" in text
    modelled = short_report(runs["modelled"])
    assert modelled.startswith("energy vs estimates (")
    assert re.search(r"^  modelled\s+[\d,.]+ J$", modelled, flags=re.MULTILINE)
    assert re.search(r"^  flops\s+[\d,.]+ J  gap [+-][\d,.]+%, MAPE [\d.]+%$", modelled, flags=re.MULTILINE)
    assert "measured" not in modelled
    unmeasured = short_report(runs["unmeasured"])
    assert unmeasured.startswith("energy vs estimates: not measured: --meter none")
    assert re.search(r"^  sweetspot\s+[\d,.]+ J", unmeasured, flags=re.MULTILINE)


def test_replay_run_prints_the_short_report(tmp_path):
    result = cli("run", TRACES / "chat.jsonl", "--engine", "sim", "--duration-s", "10", "--out", tmp_path / "run",
                 "--quiet")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("energy vs estimates") > out.index("latency (ms)")   # after the summary
    assert f"full report: replay report {tmp_path / 'run'}" in out
    assert not (tmp_path / "run" / "report").exists()                  # cheap: nothing written


# --- errors -----------------------------------------------------------------------------------------------------


def one_error_line(result, *needles):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_errors_for_bad_run_directories(runs, tmp_path):
    one_error_line(cli("report", tmp_path / "nope"), str(tmp_path / "nope"), "no such run directory")
    (tmp_path / "empty").mkdir()
    one_error_line(cli("report", tmp_path / "empty"), "no config.yaml: not a run directory")
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("config.yaml", "requests.jsonl", "steps.jsonl"):
        (cut / name).write_bytes((runs["modelled"].out / name).read_bytes())
    one_error_line(cli("report", cut), f"replay run --resume {cut}")
    (cut / "summary.json").write_text("[1, 2")
    one_error_line(cli("report", cut), "summary.json: not valid JSON")
    (cut / "config.yaml").write_text("engine: [sim\n")
    one_error_line(cli("report", cut), "config.yaml: not valid YAML (line 2, column 1)")


def test_errors_for_bad_options(runs, tmp_path):
    one_error_line(cli("report", runs["modelled"].out, "--estimator", "flop"), "--estimator 'flop': unknown")
    one_error_line(cli("report", runs["modelled"].out, "--gpu", "z80"), "unknown hardware 'z80'")
    (tmp_path / "theta.yaml").write_text("form: [eq5\n")
    result = cli("report", runs["modelled"].out, "--theta", tmp_path / "theta.yaml")
    assert result.exit_code == 1 and "Traceback" not in result.output   # (load_theta adds YAML's own lines)
    assert result.stderr.startswith(f"Error: {tmp_path / 'theta.yaml'}: not valid YAML")


def test_binned_from_a_sweep_of_static_batches(runs, tmp_path):
    """--bins-from: a [Na25] static-batch sweep gives the batch energies; binned joins the defaults and estimates
    the requests of the bins the sweep measured, saying how many it could not."""
    sweep = cli("sweep", "--engine", "sim", "--grid", "n_in=128,512", "--grid", "n_out=16,128", "--offline",
                "--batch-size", "8", "--requests", "8", "--out", tmp_path / "sweep")
    assert sweep.exit_code == 0, sweep.output
    result = cli("report", runs["modelled"].out, "--bins-from", tmp_path / "sweep", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    doc = strict_json(tmp_path / "r" / "report.json")
    t = {x["estimator"]: x for x in doc["comparison"]["totals"]}["binned"]
    per = doc["comparison"]["per_request"]
    measured_bins = {(128, 16), (128, 128), (512, 16), (512, 128)}
    inside = [r for r in per if (r["input_bin"], r["output_bin"]) in measured_bins]
    assert t["requests"] == len(inside) and 0 < len(inside) < len(per)
    assert all((r["binned"] is not None) == ((r["input_bin"], r["output_bin"]) in measured_bins) for r in per)
    assert "in a bin without a measured batch" in t["reason"]
    assert t["run_gap"] is None                      # no whole-run gap against part of the run
    assert "binned estimated only part of it" in result.output
