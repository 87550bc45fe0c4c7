"""Attribution: step energies are timeline windows, request shares by tokens and by FLOPs (worked out by hand),
the sums (attributed + unattributed = step energies; step energies + time outside steps = the timeline total),
bad records named, and against the server loop's own per-request energies on a simulated run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from replay.energy.attribution import FlopCoefficients, attribute, request_step_work, step_energies_j
from replay.energy.meters import model_timeline
from replay.energy.timeline import EnergyTimeline


def hand_case():
    """Two requests on one GPU. Step 0 [0,1]: A's whole 3-token prompt (emits) and B's first 1-token chunk;
    step 1 [1,2]: A decodes, B's last chunk (emits); step 2 [2,3]: both decode. The GPU used 40, 20, 20 J in the
    steps and 10 J in [3,4], when nothing ran."""
    tl = EnergyTimeline([0.0, 1.0, 2.0, 3.0, 4.0], {"gpu0": [0.0, 40.0, 60.0, 80.0, 90.0]})
    steps = pd.DataFrame({"replica": [0, 0, 0], "step": [0, 1, 2], "start_s": [0.0, 1.0, 2.0],
                          "end_s": [1.0, 2.0, 3.0], "prefill_tokens": [4, 1, 0], "decode_tokens": [0, 1, 2],
                          "sampled_seqs": [1, 2, 2], "attn_pairs": [7.0, 6.0, 8.0]})
    records = [
        {"id": "A", "replica": 0, "status": "finished", "input_tokens": 3, "token_steps": [[0, 3]],
         "prefill_steps": [[0, 3]]},
        {"id": "B", "replica": 0, "status": "finished", "input_tokens": 2, "token_steps": [[1, 2]],
         "prefill_steps": [[0, 1], [1, 1]]},
    ]
    return tl, steps, records


def test_step_energies_are_windows():
    tl, steps, _ = hand_case()
    assert step_energies_j(tl, steps) == pytest.approx([40.0, 20.0, 20.0])


def test_by_tokens_by_hand():
    tl, steps, records = hand_case()
    a = attribute(tl, steps, records)
    # step 0: A 3/4 of 40, B 1/4; step 1: 10 each; step 2: 10 each
    assert a.method == "tokens"
    assert list(a.requests["energy_j"]) == pytest.approx([30.0 + 10 + 10, 10.0 + 10 + 10])
    assert list(a.requests["tokens"]) == [5.0, 3.0]     # A: 3 prompt + 2 decodes; B: 2 prompt + 1
    assert a.steps_j == pytest.approx(80.0) and a.attributed_j == pytest.approx(80.0)
    assert a.unattributed_j == pytest.approx(0.0)
    assert a.outside_steps_j == pytest.approx(10.0) and a.total_j == pytest.approx(90.0)
    assert list(a.steps["attributed_j"]) == pytest.approx(list(a.steps["energy_j"]))


def test_by_flops_by_hand():
    tl, steps, records = hand_case()
    work = request_step_work(records).sort_values(["step", "row"])
    # attention pairs q * (c + (q + 1) / 2): A's prompt 3*(0+2) = 6, B's chunks 1*(0+1) = 1 then 1*(1+1) = 2
    # (c = its earlier chunk); decodes input + j: A j=1,2 -> 4, 5; B j=1 -> 3
    assert list(work["attn_pairs"]) == [6.0, 1.0, 4.0, 2.0, 5.0, 3.0]
    assert list(work["sampled"]) == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    attn_only = attribute(tl, steps, records, "flops", FlopCoefficients(0.0, 0.0, 1.0))
    a_j = 40 * 6 / 7 + 20 * 4 / 6 + 20 * 5 / 8
    b_j = 40 * 1 / 7 + 20 * 2 / 6 + 20 * 3 / 8
    assert list(attn_only.requests["energy_j"]) == pytest.approx([a_j, b_j])
    assert attn_only.method == "flops" and attn_only.attributed_j == pytest.approx(80.0)
    # per-token FLOPs only: the token split
    linear = attribute(tl, steps, records, "flops", FlopCoefficients(2.0, 0.0, 0.0))
    assert list(linear.requests["energy_j"]) == pytest.approx([50.0, 30.0])


def test_context_tokens_given_in_the_records():
    tl, steps, records = hand_case()
    records[1]["prefill_steps"] = [[0, 1, 0], [1, 1, 1]]
    assert list(request_step_work(records)["attn_pairs"]) == [6.0, 4.0, 5.0, 1.0, 2.0, 3.0]


def test_work_no_record_claims_is_unattributed():
    tl, steps, records = hand_case()
    for method, flops in (("tokens", None), ("flops", FlopCoefficients(2.0, 1.0, 1.0))):
        a = attribute(tl, steps, records[:1], method, flops)   # B's record lost (an interrupted run)
        assert a.attributed_j + a.unattributed_j == pytest.approx(a.steps_j)
        if method == "tokens":
            assert a.requests["energy_j"].iloc[0] == pytest.approx(50.0)
            assert a.unattributed_j == pytest.approx(30.0)


def test_rejected_requests_get_nothing():
    tl, steps, records = hand_case()
    records.append({"id": "C", "replica": 0, "status": "rejected", "input_tokens": 99999, "token_steps": []})
    a = attribute(tl, steps, records)
    assert list(a.requests["id"]) == ["A", "B", "C"] and a.requests["energy_j"].iloc[2] == 0.0


def test_bad_records_are_named():
    tl, steps, records = hand_case()
    del records[1]["prefill_steps"]
    with pytest.raises(ValueError, match=r"request 'B': no 'prefill_steps' in the record"):
        attribute(tl, steps, records)
    tl, steps, records = hand_case()
    records[0]["prefill_steps"] = [[0, 4]]
    with pytest.raises(ValueError, match=r"replica 0 step 0: request records claim 5 tokens but the step "
                                         r"processed 4"):
        attribute(tl, steps, records)
    tl, steps, records = hand_case()
    records[0]["token_steps"] = [[0, 4]]
    with pytest.raises(ValueError, match=r"request 'A': replica 0 step 3 is not in the step records"):
        attribute(tl, steps, records)
    with pytest.raises(ValueError, match="method 'joules'"):
        attribute(tl, steps, records, "joules")
    late = steps.assign(end_s=[1.0, 2.0, 5.0])
    with pytest.raises(ValueError, match=r"replica 0 step 2 \[2.0, 5.0\] lies outside the measured span"):
        step_energies_j(tl, late)


def test_replicas_need_their_devices():
    tl = EnergyTimeline([0.0, 1.0], {"gpu0": [0.0, 10.0], "gpu1": [0.0, 30.0]})
    steps = pd.DataFrame({"replica": [0, 1], "step": [0, 0], "start_s": [0.0, 0.0], "end_s": [1.0, 1.0]})
    with pytest.raises(ValueError, match="say which devices each replica ran on"):
        step_energies_j(tl, steps)
    assert step_energies_j(tl, steps, {0: ["gpu0"], 1: ["gpu1"]}) == pytest.approx([10.0, 30.0])
    with pytest.raises(ValueError, match="device 'gpu0' given to replicas 0 and 1"):
        step_energies_j(tl, steps, {0: ["gpu0"], 1: ["gpu0"]})


# --- against the simulated engine ---------------------------------------------------------------------------------


def test_model_timeline_attribution_matches_the_server_loop():
    """On a simulated run (stepped one iteration at a time, so every Step is seen), the server's ``prefill_steps``
    match the Steps, and the token attribution of the model timeline gives each
    request the energy the server loop attributed itself, and the totals add up to the runner's modelled total."""
    from conftest import TRACES
    from replay.engines.sim.engine import SimEngine
    from replay.engines.sim.perf import PerfModel
    from replay.run import simulate
    from replay.server import Recorder
    from replay.specs import hardware, model
    from replay.trace import read_trace
    from replay.trace.schema import Workload

    table = read_trace(TRACES / "chat.jsonl").table.slice(500, 80)
    t = table.column("arrival_s").to_numpy()
    wl = Workload(table.set_column(1, "arrival_s", [t - t[0]]), "chat[500:580]")
    spec, gpu = model("llama-3.1-8b"), hardware("h100-sxm")
    inner = SimEngine(spec, gpu, num_blocks=200, max_num_batched_tokens=512, max_num_seqs=24)

    class Stepper:  # one iteration at a time, keeping every Step
        def __init__(self):
            self.steps = []

        def add(self, request):
            return inner.add(request)

        def has_work(self):
            return inner.has_work()

        def step(self, horizon_s=math.inf):
            s = inner.step(0.0)
            self.steps.append(s)
            return s

    eng = Stepper()
    recorder = Recorder()
    loops = simulate(wl, [eng], "timed", {}, recorder)
    steps = recorder.steps_frame()
    prefill: dict[str, list] = {}
    for k, s in enumerate(eng.steps):
        for rid, n in zip(s.prefilled, s.prefill_sizes):
            prefill.setdefault(rid, []).append([k, n])
    records = recorder.requests
    assert all(r["prefill_steps"] == prefill.get(r["id"], []) for r in records)  # the server records them
    assert sum(r["preemptions"] for r in records) > 0          # recompute chunks are exercised
    makespan = max(float(steps["end_s"].max()), float(wl.arrival_s.max()))
    tl = model_timeline(steps, inner.idle_w, end_s=makespan)
    a = attribute(tl, steps, records)
    server = np.array([r["energy_j"] for r in records])
    assert a.requests["energy_j"].to_numpy() == pytest.approx(server, rel=1e-9, abs=1e-9)
    assert a.unattributed_j == pytest.approx(0.0, abs=1e-6)
    assert a.steps_j == pytest.approx(float(steps["energy_j"].sum()), rel=1e-12)
    idle_gaps_j = inner.idle_w * (makespan - loops[0].busy_s)
    assert a.total_j == pytest.approx(a.steps_j + idle_gaps_j, rel=1e-12)   # replay.run._modelled_energy's total
    assert a.outside_steps_j == pytest.approx(idle_gaps_j, rel=1e-9)
    by_flops = attribute(tl, steps, records, "flops", FlopCoefficients.from_perf(PerfModel(spec, gpu)))
    assert by_flops.attributed_j == pytest.approx(a.steps_j, rel=1e-12)
    assert by_flops.unattributed_j == pytest.approx(0.0, abs=1e-6)
