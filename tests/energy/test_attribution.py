"""Attribution: step energies are timeline windows, request shares by tokens and by FLOPs (worked out by hand),
the sums (attributed + unattributed = step energies; step energies + time outside steps = the timeline total),
bad records named, and against the server loop's own per-request energies on a simulated run. The vectorised
request_step_work against the per-record loop it replaced (kept here as the reference): the same frame, bit for
bit, on simulated runs and odd records, and the same errors; split_step_energy is attribute without the timeline."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from replay.config import RunConfig
from replay.energy.attribution import FlopCoefficients, attribute, request_step_work, step_energies_j
from replay.energy.attribution import split_step_energy
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


# --- request_step_work against the per-record loop it replaced ------------------------------------------------------


def _reference_expand(runs):
    a = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    if not len(a):
        return np.zeros(0, np.int64)
    first, count = a[:, 0], a[:, 1]
    before = np.concatenate(([0], np.cumsum(count)[:-1]))
    return np.repeat(first - before, count) + np.arange(int(count.sum()))


def reference_request_step_work(requests):
    """request_step_work as it was before it was vectorised: one record at a time (the reference)."""
    records = requests.to_dict("records") if isinstance(requests, pd.DataFrame) else list(requests)
    cols = {k: [] for k in ("row", "replica", "step", "tokens", "sampled", "attn_pairs")}
    for i, rec in enumerate(records):
        rid = rec.get("id", f"#{i}")
        if rec.get("status") == "rejected":
            continue
        for name in ("token_steps", "prefill_steps", "input_tokens", "replica"):
            if name not in rec or rec[name] is None:
                raise ValueError(f"request {rid!r}: no {name!r} in the record; attribution needs it"
                                 + (" (one [step, tokens] per step that processed prompt tokens)"
                                    if name == "prefill_steps" else ""))
        emitted = _reference_expand(rec["token_steps"])
        pf = [list(p) for p in rec["prefill_steps"]]
        if any(len(p) not in (2, 3) for p in pf):
            raise ValueError(f"request {rid!r}: field 'prefill_steps': expected [step, tokens] or "
                             f"[step, tokens, context_tokens] entries, got {rec['prefill_steps']!r}")
        pf_step = np.array([p[0] for p in pf], dtype=np.int64)
        pf_q = np.array([p[1] for p in pf], dtype=np.float64)
        if len(pf_q) and (pf_q <= 0).any():
            raise ValueError(f"request {rid!r}: field 'prefill_steps': a chunk of {pf_q.min():g} tokens; expected > 0")
        if pf and all(len(p) == 3 for p in pf):
            pf_c = np.array([p[2] for p in pf], dtype=np.float64)
        else:  # earlier chunks since the last emitted token
            pf_c = np.zeros(len(pf))
            run, prev = 0.0, -1
            for k, (s, q) in enumerate(zip(pf_step.tolist(), pf_q.tolist())):
                between = np.searchsorted(emitted, s, "left") - np.searchsorted(emitted, prev, "left")
                if between > 0:   # it emitted at or after its last chunk: a recompute starts over
                    run = 0.0
                pf_c[k] = run
                run += q
                prev = s
        is_pf = np.isin(emitted, pf_step)
        j = np.arange(len(emitted))
        dec = emitted[~is_pf]
        n_in = float(rec["input_tokens"])
        steps = np.concatenate((pf_step, dec))
        cols["row"].append(np.full(len(steps), i, np.int64))
        cols["replica"].append(np.full(len(steps), int(rec["replica"]), np.int64))
        cols["step"].append(steps)
        cols["tokens"].append(np.concatenate((pf_q, np.ones(len(dec)))))
        cols["sampled"].append(np.concatenate((np.isin(pf_step, emitted).astype(np.float64), np.ones(len(dec)))))
        cols["attn_pairs"].append(np.concatenate((pf_q * (pf_c + (pf_q + 1) / 2), n_in + j[~is_pf])))
    return pd.DataFrame({k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()})


def assert_same_work(got, want):
    """The same rows in the same order, the same dtypes, the same bits."""
    assert list(got.columns) == list(want.columns)
    for c in want.columns:
        g, w = got[c].to_numpy(), want[c].to_numpy()
        assert g.dtype == w.dtype, (c, g.dtype, w.dtype)
        assert g.shape == w.shape, (c, g.shape, w.shape)
        assert g.tobytes() == w.tobytes(), c


SIM_RUNS = {  # what each run must exercise is checked below
    # recompute after emitting (a small KV cache), chunked prefill (a small token budget), two replicas
    "chat-recompute-chunked": dict(trace="traces/chat.jsonl", limit=300, rate_scale=10.0, replicas=2, kv_blocks=400,
                                   max_num_batched_tokens=256),
    # prefix-cache hits on the Mooncake sample, with rejections (more blocks than the cache) and preemptions
    "mooncake-prefix-caching": dict(trace="tests/data/mooncake_head.jsonl", limit=200, prefix_caching=True,
                                    kv_blocks=2000, max_num_batched_tokens=2048, replicas=2),
}


@pytest.fixture(scope="module", params=sorted(SIM_RUNS))
def sim_run(request):
    from conftest import REPO
    from replay.run import execute

    kw = dict(SIM_RUNS[request.param])
    run = execute(RunConfig(trace=str(REPO / kw.pop("trace")), engine="sim", **kw), progress=False)
    return request.param, run


def test_request_step_work_equals_the_loop_on_simulated_runs(sim_run):
    name, run = sim_run
    req = run.requests
    records = req.to_dict("records")
    assert req["replica"].nunique() == 2
    assert (req["prefill_steps"].map(len) > 1).any()                       # chunked prompts
    recomputed = [r for r in records if r["status"] != "rejected" and r["token_steps"]
                  and any(p[0] > r["token_steps"][0][0] for p in r["prefill_steps"])]
    assert recomputed                                                     # chunks after emitting: context restarts
    if name.startswith("mooncake"):
        assert req["cached_tokens"].sum() > 0 and (req["status"] == "rejected").any()
    want = reference_request_step_work(records)
    assert len(want) > 10_000
    assert_same_work(request_step_work(req), want)
    assert_same_work(request_step_work(records), want)


def test_split_with_work_given_on_simulated_runs(sim_run):
    """Splitting the run's modelled step energies: with the work computed once and given, the same as without;
    by tokens, each request gets what the server loop attributed to it."""
    from replay.engines.sim.perf import PerfModel
    from replay.specs import hardware, model

    _, run = sim_run
    steps, req = run.steps, run.requests
    flops = FlopCoefficients.from_perf(PerfModel(model("llama-3.1-8b"), hardware("h100-sxm")))
    work = request_step_work(req)
    for method, coef in (("tokens", None), ("flops", flops)):
        fresh = split_step_energy(steps["energy_j"], steps, req, method, coef)
        given = split_step_energy(steps["energy_j"], steps, req, method, coef, work=work)
        pd.testing.assert_frame_equal(given.requests, fresh.requests, check_exact=True)
        pd.testing.assert_frame_equal(given.steps, fresh.steps, check_exact=True)
        assert (given.steps_j, given.attributed_j, given.unattributed_j) == \
            (fresh.steps_j, fresh.attributed_j, fresh.unattributed_j)
        assert fresh.attributed_j == pytest.approx(fresh.steps_j, rel=1e-9)
    by_tokens = split_step_energy(steps["energy_j"], steps, req, work=work)
    np.testing.assert_allclose(by_tokens.requests["energy_j"], req["energy_j"].fillna(0.0), rtol=1e-9, atol=1e-9)


def _odd_records():
    """Records the old loop accepted, ordinary and odd (no server writes the odd ones)."""
    return [
        {"id": "rejected-bare", "status": "rejected", "input_tokens": 10},
        {"id": "rejected", "replica": 1, "status": "rejected", "input_tokens": 10, "token_steps": [],
         "prefill_steps": []},
        {"id": "no-chunks", "replica": 0, "status": "finished", "input_tokens": 7, "token_steps": [[3, 2]],
         "prefill_steps": []},
        {"id": "chunks-only", "replica": 1, "status": "unfinished", "input_tokens": 8, "token_steps": [],
         "prefill_steps": [[0, 4], [1, 4]]},
        {"id": "context-given", "replica": 0, "input_tokens": 20, "token_steps": [[2, 3]],
         "prefill_steps": [[0, 4, 0], [1, 4, 12], [2, 2, 16]]},
        {"id": "context-mixed", "replica": 0, "input_tokens": 8, "token_steps": [[1, 2]],
         "prefill_steps": [[0, 4], [1, 4, 99]]},
        {"id": "recompute", "replica": 1, "input_tokens": 5, "token_steps": [[1, 2], [6, 3]],
         "prefill_steps": [[0, 3], [1, 2], [5, 5], [6, 1]]},
        {"id": "chunk-step-twice", "replica": 0, "input_tokens": 6, "token_steps": [[2, 2]],
         "prefill_steps": [[1, 3], [2, 2], [2, 1]]},
        {"id": "fractional", "replica": 0, "input_tokens": 3.25, "token_steps": [[1, 2]],
         "prefill_steps": [[0, 2.5], [1, 0.75]]},
        {"id": "flat-runs", "replica": 1, "input_tokens": 4, "token_steps": [2, 3], "prefill_steps": [(1, 2), (2, 2)]},
        {"id": "array-runs", "replica": 1, "input_tokens": 4, "token_steps": np.array([[4, 2], [9, 1]]),
         "prefill_steps": [[3, 4], [4, 0.5]]},
        {"id": "runs-out-of-order", "replica": 0, "input_tokens": 9, "token_steps": [[6, 2], [2, 2]],
         "prefill_steps": [[1, 5], [3, 2], [5, 2]]},
        # emitted [10, 11, 2]: the old binary search finds no token between the chunks at 1 and 5 (a count, 1)
        {"id": "runs-backwards", "replica": 2, "input_tokens": 3, "token_steps": [[10, 2], [2, 1]],
         "prefill_steps": [[1, 3], [5, 2]]},
        {"id": "runs-overlap", "replica": 0, "input_tokens": 9, "token_steps": [[2, 3], [3, 2], [3, 0]],
         "prefill_steps": [[1, 5], [3, 4]]},
        {"id": "far-steps", "replica": 2, "input_tokens": 3, "token_steps": [[2 ** 61, 2]],
         "prefill_steps": [[2 ** 61 - 1, 1], [2 ** 61, 2]]},
    ]


def test_request_step_work_equals_the_loop_on_odd_records():
    records = _odd_records()
    cases = [records, records[:2], records[::-1], [], *([r] for r in records)]
    for case in cases:
        assert_same_work(request_step_work(case), reference_request_step_work(case))
    frame = pd.DataFrame(records[1:])       # a frame with NaN where a record lacks a field
    assert_same_work(request_step_work(frame), reference_request_step_work(frame))
    assert request_step_work(records[:2]).empty and len(request_step_work(records)) > 30


@pytest.mark.parametrize("fault, named, nan_field", [
    (lambda rs: rs[4].pop("prefill_steps"), "context-given", "prefill_steps"),   # in a frame: NaN
    (lambda rs: rs[3].update(token_steps=None), "chunks-only", None),
    (lambda rs: rs[6].update(prefill_steps=[[0, 3], [1]]), "recompute", None),
    (lambda rs: rs[6].update(prefill_steps=[[0, 3], [1, 0]]), "recompute", None),
    (lambda rs: rs[5].update(input_tokens="many"), None, None),
    (lambda rs: rs[5].update(replica=float("nan")), None, "replica"),
    (lambda rs: rs[2].update(token_steps=[[0, 1, 2]]), None, None),
    (lambda rs: rs[2].update(token_steps=[[0, -1]]), None, None),
    (lambda rs: rs[7].update(prefill_steps=5), None, None),
])
def test_bad_records_give_the_loops_error(fault, named, nan_field):
    """The first bad record in order is named, with the same words (or the same exception) as the old loop,
    whatever a later record holds. A NaN field (a frame's missing cell, or NaN written in) is missing: the old
    loop failed on it inside numpy or int(); now it is the named missing-field error."""
    records = _odd_records()
    fault(records)
    records[-1]["prefill_steps"] = [[0, -3]]            # a later bad record never masks an earlier one
    for case in (records, pd.DataFrame(records)):
        with pytest.raises(Exception) as want:
            reference_request_step_work(case)
        if nan_field is not None and not str(want.value).startswith("request "):
            with pytest.raises(ValueError, match=rf"^request '[^']+': no '{nan_field}' in the record"):
                request_step_work(case)
            continue
        with pytest.raises(type(want.value)) as got:
            request_step_work(case)
        assert str(got.value) == str(want.value)
        if named and not isinstance(case, pd.DataFrame):
            assert str(got.value).startswith(f"request {named!r}:")


# --- split_step_energy ------------------------------------------------------------------------------------------


def test_split_step_energy_is_attribute_without_the_timeline():
    tl, steps, records = hand_case()
    energy = step_energies_j(tl, steps)
    work = request_step_work(records)
    for method, flops in (("tokens", None), ("flops", FlopCoefficients(2.0, 1.0, 1.0))):
        a = attribute(tl, steps, records, method, flops)
        s = split_step_energy(energy, steps, records, method, flops)
        pd.testing.assert_frame_equal(s.steps, a.steps, check_exact=True)
        pd.testing.assert_frame_equal(s.requests, a.requests, check_exact=True)
        assert (s.method, s.steps_j, s.attributed_j, s.unattributed_j) == \
            (a.method, a.steps_j, a.attributed_j, a.unattributed_j)
        b = attribute(tl, steps, pd.DataFrame(records), method, flops, work=work)   # work computed once
        pd.testing.assert_frame_equal(b.requests, a.requests, check_exact=True)
        assert b.to_dict() == a.to_dict()
    # estimated step energies: no timeline, no step times needed
    s = split_step_energy(np.array([4.0, 2.0, 2.0]), steps.drop(columns=["start_s", "end_s"]), records)
    assert list(s.steps.columns) == ["replica", "step", "energy_j", "work", "attributed_j"]
    assert list(s.requests["energy_j"]) == pytest.approx([3.0 + 1 + 1, 1.0 + 1 + 1])
    assert s.steps_j == 8.0 and s.unattributed_j == pytest.approx(0.0)


def test_split_step_energy_refuses_what_does_not_fit():
    tl, steps, records = hand_case()
    with pytest.raises(ValueError, match="2 step energies for 3 steps"):
        split_step_energy([1.0, 2.0], steps, records)
    with pytest.raises(ValueError, match="give the FLOP coefficients"):
        split_step_energy([1.0, 2.0, 3.0], steps, records, "flops")
    with pytest.raises(ValueError, match="method 'joules'"):
        split_step_energy([1.0, 2.0, 3.0], steps, records, "joules")
    with pytest.raises(ValueError, match="outside the 1 given"):
        split_step_energy([1.0, 2.0, 3.0], steps, records[:1], work=request_step_work(records))
    with pytest.raises(ValueError, match="work has no column 'attn_pairs'"):
        split_step_energy([1.0, 2.0, 3.0], steps, records, work=request_step_work(records).drop(columns="attn_pairs"))
