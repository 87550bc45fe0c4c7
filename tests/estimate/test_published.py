"""replay.estimate.published: reading the ML.ENERGY v2 CSV, the per-row estimates and gaps (checked by hand on a
few rows), rows that cannot be estimated, the distribution, and the model configs added for it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from replay.estimate import published
from replay.estimate.counting import coefficients
from replay.estimate.estimators import EstimateContext, estimate
from replay.estimate.published import (
    COMPARED, MODEL_CONFIGS, NOT_ESTIMABLE, gap_table, input_tokens, read_mlenergy, resolve_model,
    roofline_batched_j, summarize,
)
from replay.specs import hardware, model

HEADER = ("task,Model,GPU,TP,PP,Energy/req (J),Avg TPOT (s),Token tput (tok/s),Avg Output Tokens,Avg BS (reqs),"
          "Max BS (reqs),source_path")
# Rows of ml-energy/leaderboard-v2's data (the shared CSV, lines 239, 127, 68 and 107); the first is given a whole
# 100 output tokens (99.175 in the data) so that the estimate can be worked by hand at whole lengths.
CODELLAMA = ("code,codellama/CodeLlama-7b-hf,NVIDIA A100-SXM4-40GB,1,1,28.59409628402536,0.0376766,834.32,100.0,"
             "31.7431633698479,32,data/llm_text_generation/code/A100-SXM4-40GB/codellama/CodeLlama-7b-hf/"
             "bs32+tp1+pp1.json")
LLAMA8B = ("chat,meta-llama/Meta-Llama-3.1-8B-Instruct,NVIDIA H100 80GB HBM3,1,1,82.58581692374547,0.0350546,1784.72,"
           "482.798,63.88024385827247,64,x.json")
MIXTRAL = ("chat,mistralai/Mixtral-8x22B-Instruct-v0.1,NVIDIA A100-SXM4-40GB,8,2,481.980768373405,0.6587659,1521.93,"
           "386.567,1993.9225061830173,2048,x.json")
LLAMA405B = ("chat,meta-llama/Meta-Llama-3.1-405B-Instruct,NVIDIA H100 80GB HBM3,8,2,2178.218700770685,0.2157368,"
             "916.86,451.468,254.9288824383164,256,x.json")


def _csv(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "mlenergy.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _line(table: pd.DataFrame, line: int, estimator: str) -> pd.Series:
    hit = table[(table["line"] == line) & (table["estimator"] == estimator)]
    assert len(hit) == 1
    return hit.iloc[0]


# --- reading -------------------------------------------------------------------------------------------------


def test_read_names_and_gpus(tmp_path):
    d = read_mlenergy(_csv(tmp_path, CODELLAMA, MIXTRAL))
    assert list(d["line"]) == [2, 3]
    assert list(d["gpus"]) == [1, 16]  # TP x PP: the measurement covers 8 x 2 GPUs
    assert d["energy_j"].iloc[1] == pytest.approx(481.980768373405)
    assert d["avg_batch"].iloc[0] == pytest.approx(31.7431633698479)
    assert d["source_path"].iloc[0].endswith("bs32+tp1+pp1.json")


@pytest.mark.parametrize("row, message", [
    (CODELLAMA.replace(",28.59409628402536,", ",lots,"), r"mlenergy\.csv:3: column 'Energy/req \(J\)': expected a "
                                                         r"number > 0, got 'lots'"),
    (CODELLAMA.replace("A100-SXM4-40GB,1,1,", "A100-SXM4-40GB,1.5,1,", 1), r":3: column 'TP': expected a whole number"),
    (CODELLAMA.replace(",100.0,", ",-3,"), r":3: column 'Avg Output Tokens': expected a number > 0"),
    (CODELLAMA.replace("code,", "poetry,", 1), r":3: column 'task': expected one of chat, code, got 'poetry'"),
])
def test_bad_rows_name_file_line_and_column(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        read_mlenergy(_csv(tmp_path, LLAMA8B, row))


def test_missing_column_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"missing column 'Avg BS \(reqs\)'"):
        read_mlenergy(_csv(tmp_path, header=HEADER.replace("Avg BS (reqs)", "Avg batch")))
    with pytest.raises(ValueError, match=r"nothing\.csv: no such file"):
        read_mlenergy(tmp_path / "nothing.csv")


def test_input_lengths():
    assert input_tokens("code", "codellama/CodeLlama-7b-hf") == published.CODE_INPUT_TOKENS
    assert input_tokens("chat", "google/gemma-2-2b-it", 2.0) == 2 * published.CHAT_INPUT_TOKENS["google/gemma-2-2b-it"]
    with pytest.raises(ValueError, match="no chat input length for model 'x/unknown'"):
        input_tokens("chat", "x/unknown")
    with pytest.raises(ValueError, match="input_scale: expected a number > 0"):
        input_tokens("code", "x", 0)


# --- one row by hand -----------------------------------------------------------------------------------------

# CodeLlama-7b (config.json): d 4096, L 32, h = k 32, e 128, f 11008, V 32016, untied; bf16, 2 bytes.
D, L, H, E, F, V, B = 4096, 32, 32, 128, 11008, 32016, 2
BODY = L * (4 * D * D + 3 * D * F + 2 * D) + D  # Q, K, V, O; gate, up, down; two RMSNorms; final norm
N_IN, N_OUT = 150, 100
TOKENS = N_IN + N_OUT - 1                   # the prefill's 150 and 99 decode forwards
PAIRS = N_IN * (N_IN + 1) // 2 + sum(N_IN + j for j in range(1, N_OUT))  # causal pairs: 11325 + 19800
FLOPS = 2 * BODY * TOKENS + 2 * D * V * N_OUT + 4 * L * H * E * PAIRS


def test_flops_gap_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "CODE_INPUT_TOKENS", float(N_IN))
    table = gap_table(read_mlenergy(_csv(tmp_path, CODELLAMA)))
    assert PAIRS == 31125
    dense = _line(table, 2, "flops")
    assert dense["estimate_j"] == pytest.approx(400 / 312e12 * FLOPS, rel=1e-12)  # A100-40GB: 400 W, 312 TFLOP/s
    assert dense["gap"] == pytest.approx(28.59409628402536 / (400 / 312e12 * FLOPS) - 1, rel=1e-12)
    assert dense["ape"] == pytest.approx(abs(400 / 312e12 * FLOPS - 28.59409628402536) / 28.59409628402536)
    sparse = _line(table, 2, "flops-sparse")
    assert sparse["estimate_j"] == pytest.approx(dense["estimate_j"] / 2, rel=1e-12)  # 624 TFLOP/s sparse
    assert (dense["input_tokens"], dense["output_tokens"], dense["gpus"]) == (150.0, 100.0, 1)


def test_roofline_at_the_rows_batch_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "CODE_INPUT_TOKENS", float(N_IN))
    table = gap_table(read_mlenergy(_csv(tmp_path, CODELLAMA)))
    batch = 31.7431633698479                 # Avg BS / PP
    w = (BODY + V * D) * B                   # weights read per forward (the LM head once; the embedding gathered)
    kv = 2 * L * H * E * B                   # K and V bytes per token
    act = B * L * (4 * D + (4 * H + 2 * H) * E + 3 * F)  # activations per token, gated MLP
    act_s = B * (D + V)                      # per sampled sequence
    a, s, p = 2 * BODY, 2 * D * V, 4 * L * H * E
    pf_flops = a * N_IN + s + p * N_IN * (N_IN + 1) / 2
    pf_bytes = w + 2 * kv * N_IN + act * N_IN + act_s                  # prefill alone: all the weights
    dec_pairs = PAIRS - N_IN * (N_IN + 1) / 2
    dc_flops = (a + s) * (N_OUT - 1) + p * dec_pairs
    dc_bytes = w / batch * (N_OUT - 1) + kv * dec_pairs + kv * (N_OUT - 1) + (act + act_s) * (N_OUT - 1)
    t = max(pf_flops / 312e12, pf_bytes / 1555e9) + max(dc_flops / 312e12, dc_bytes / 1555e9)
    row = _line(table, 2, "roofline")
    assert row["decode_batch"] == pytest.approx(batch)
    assert row["estimate_j"] == pytest.approx(400 * t, rel=1e-12)
    assert dc_bytes / 1555e9 > dc_flops / 312e12  # decode is memory-bound at this batch: the batch matters
    alone = _line(table, 2, "roofline-b1")["estimate_j"]
    assert alone > 5 * row["estimate_j"]  # batch 1 reads all the weights for every token


def test_roofline_at_batch_1_is_replays_roofline_estimator():
    m, hw = model("codellama-7b"), hardware("NVIDIA H100 80GB HBM3")
    n_in, n_out = np.array([10, 150, 700]), np.array([1, 100, 33])
    ctx = EstimateContext(model=m, hardware=hw)
    want = estimate("roofline", pd.DataFrame({"input_tokens": n_in, "output_tokens": n_out}), ctx).per_request_j
    got = roofline_batched_j(coefficients(m), hw, hw.peak_flops("bf16"), n_in, n_out, 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    bigger = roofline_batched_j(coefficients(m), hw, hw.peak_flops("bf16"), n_in, n_out, 256.0)
    assert bigger[0] == pytest.approx(got[0], rel=1e-12)  # n_out 1: prefill only, nothing shared
    assert np.all(bigger[1:] < got[1:] / 10)  # decode reads the weights once per 256 sequences


def test_pipeline_stages_share_the_batch_and_all_gpus_count(tmp_path):
    table = gap_table(read_mlenergy(_csv(tmp_path, LLAMA405B)))
    row = _line(table, 2, "roofline")
    assert row["decode_batch"] == pytest.approx(254.9288824383164 / 2)  # a micro-batch per pipeline stage
    assert row["gpus"] == 16 and row["hardware"] == "h100-sxm" and row["model_key"] == "llama-3.1-405b"
    # flops does not depend on the GPU count: tp x TDP / (tp x peak)
    one = _line(gap_table(read_mlenergy(_csv(tmp_path, LLAMA405B.replace(",8,2,", ",1,1,")))), 2, "flops")
    assert one["estimate_j"] == pytest.approx(_line(table, 2, "flops")["estimate_j"], rel=1e-12)


def test_fractional_mean_lengths_interpolate_between_whole_tokens():
    def lin(i, o):  # bilinear in (i, o): interpolation is exact
        return 3.0 * i + 5.0 * o + 0.5 * i * o
    assert published._at_mean(lin, 171.67, 482.798) == pytest.approx(lin(171.67, 482.798), rel=1e-12)
    assert published._at_mean(lin, 4.0, 9.0) == lin(4.0, 9.0)
    assert published._at_mean(lin, 0.4, 0.2) == lin(1.0, 1.0)  # never below one token


# --- what is not estimated, and why --------------------------------------------------------------------------


def test_rows_that_cannot_be_estimated_say_why(tmp_path):
    unknown = LLAMA8B.replace("meta-llama/Meta-Llama-3.1-8B-Instruct", "acme/NotAModel-9B")
    odd_gpu = LLAMA8B.replace("NVIDIA H100 80GB HBM3", "NVIDIA Z9000")
    table = gap_table(read_mlenergy(_csv(tmp_path, MIXTRAL, unknown, odd_gpu)))
    assert len(table) == 3 * len(COMPARED) and table["estimate_j"].isna().all()
    assert table["gap"].isna().all()
    assert set(table.loc[table["line"] == 2, "reason"]) == {NOT_ESTIMABLE["mistralai/Mixtral-8x22B-Instruct-v0.1"]}
    assert "mixture of experts" in table.loc[table["line"] == 2, "reason"].iloc[0]
    assert table.loc[table["line"] == 3, "reason"].iloc[0] == ("no architecture config for 'acme/NotAModel-9B' in "
                                                               "replay/specs/models")
    assert "unknown hardware 'NVIDIA Z9000'" in table.loc[table["line"] == 4, "reason"].iloc[0]


def test_sweetspot_only_where_ss26_has_the_model(tmp_path):
    table = gap_table(read_mlenergy(_csv(tmp_path, LLAMA8B, CODELLAMA)))
    ss = _line(table, 2, "sweetspot")
    assert ss["estimate_j"] > 0 and pd.isna(ss["note"]) and pd.isna(ss["reason"])  # H100 row, H100 coefficients
    assert "no [SS26] Table 5 preset for model 'codellama-7b'" in _line(table, 3, "sweetspot")["reason"]
    a100 = gap_table(read_mlenergy(_csv(tmp_path, LLAMA8B.replace("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"))))
    assert "H100 fits; this row is on a100-40gb" in _line(a100, 2, "sweetspot")["note"]


def test_a_longer_input_raises_the_estimate_and_lowers_the_gap(tmp_path):
    data = read_mlenergy(_csv(tmp_path, LLAMA8B))
    base, double = gap_table(data), gap_table(data, input_scale=2.0)
    for name in ("flops", "roofline"):
        assert _line(double, 2, name)["estimate_j"] > _line(base, 2, name)["estimate_j"]
        assert _line(double, 2, name)["gap"] < _line(base, 2, name)["gap"]
    assert _line(double, 2, "flops")["input_tokens"] == pytest.approx(2 * 171.67)


# --- the distribution ----------------------------------------------------------------------------------------


def test_summary_by_hand():
    table = pd.DataFrame({
        "estimator": ["flops"] * 5,
        "gpu": ["A", "A", "B", "B", "B"], "task": ["chat", "code", "chat", "chat", "chat"],
        "estimate_j": [1.0, 1.0, 1.0, 1.0, np.nan],
        "gap": [0.5, 1.0, 3.0, -0.5, np.nan],
        "ape": [1 / 3, 0.5, 0.75, 1.0, np.nan],
        "reason": [None, None, None, None, "no config"],
    })
    s = summarize(table)["flops"]
    assert s["all"].n == 4 and s["all"].median == pytest.approx(0.75)
    assert (s["all"].p25, s["all"].p75) == (pytest.approx(0.25), pytest.approx(1.5))  # linear interpolation
    assert (s["all"].min, s["all"].max) == (-0.5, 3.0)
    assert s["all"].mape == pytest.approx((1 / 3 + 0.5 + 0.75 + 1.0) / 4)
    assert s["by_gpu"]["A"].median == pytest.approx(0.75) and s["by_gpu"]["B"].n == 2
    assert s["by_task"]["code"].n == 1 and s["by_task"]["code"].median == 1.0
    assert s["not_estimated"] == {"no config": 1}
    assert summarize(table)["roofline"]["all"].n == 0 and summarize(table)["roofline"]["all"].median is None


# --- the model configs added for the comparison --------------------------------------------------------------

# Published sizes in billions (model cards; the hub's parameter counts).
PUBLISHED_B = {
    "llama-3.1-405b": 405.9, "mistral-7b-v0.3": 7.25, "mistral-nemo-12b": 12.2, "mistral-large-2407": 123,
    "gemma2-27b": 27.2, "phi-3-mini-4k": 3.82, "phi-3-medium-4k": 14.0, "codellama-7b": 6.74, "codellama-13b": 13.0,
    "codellama-34b": 33.7, "codellama-70b": 69.0, "codegemma-2b": 2.51, "codegemma-7b": 8.54,
    "starcoder2-3b": 3.03, "starcoder2-7b": 7.17, "starcoder2-15b": 15.96,
}


@pytest.mark.parametrize("key", sorted(PUBLISHED_B))
def test_added_configs_are_the_published_sizes(key):
    m = model(key)
    assert m.params / 1e9 == pytest.approx(PUBLISHED_B[key], rel=0.01)
    c = coefficients(m)
    assert c.other_flops_per_token >= 0 and c.flops_per_token == 2 * (m.params - (1 if m.tied_embeddings else 2)
                                                                      * m.vocab_size * m.hidden_size)


def test_starcoder2_is_a_plain_mlp_with_biases():
    m = model("starcoder2-3b")  # d 3072, L 30, h 24, k 2, e 128, f 12288, V 49152, tied, biases, LayerNorm
    d, L, h, k, e, f, v = 3072, 30, 24, 2, 128, 12288, 49152
    per_layer = (2 * d * h * e + 2 * d * k * e + (h + 2 * k) * e + d) + (2 * d * f + f + d) + 2 * 2 * d
    assert not m.gated_mlp and m.params == v * d + L * per_layer + 2 * d


def test_every_mapped_model_resolves():
    for model_id, key in MODEL_CONFIGS.items():
        m, why = resolve_model(model_id)
        assert why is None and m.key == key
    assert resolve_model("mistralai/Mixtral-8x7B-Instruct-v0.1")[0] is None


def test_every_model_of_the_shared_data_is_mapped_or_explained(shared_data):
    root = shared_data / "mlenergy_v2"
    listed = set(json.loads((root / "chat_models.json").read_text())) | set(
        json.loads((root / "code_models.json").read_text()))
    assert listed == set(MODEL_CONFIGS) | set(NOT_ESTIMABLE)
    data = read_mlenergy(root / "mlenergy_v2_llm_text_generation.csv")
    assert set(data["model_id"]) <= listed and len(data) == 314
    chat = set(data.loc[data["task"] == "chat", "model_id"])
    assert chat <= set(published.CHAT_INPUT_TOKENS) and not math.isnan(published.CODE_INPUT_TOKENS)
