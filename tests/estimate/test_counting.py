"""FLOP and byte counting: hand-computed toy models, agreement with the simulated engine's coefficients and with
a run's per-step work, and where the full count departs from [SS26]'s simplified one (Llama-3.1-8B)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from replay.config import RunConfig
from replay.energy.attribution import request_step_work
from replay.engines.sim.perf import PerfModel
from replay.estimate.counting import (coefficients, request_counts, resolve_dtype, simplified_counts,
                                      step_counts)
from replay.run import execute
from replay.specs import hardware, load_model, model, model_names

REPO = Path(__file__).resolve().parents[2]
H100 = hardware("h100-sxm")


def toy(tmp_path: Path, **overrides) -> object:
    """A 2-layer llama small enough to count by hand: d 16, 4 heads of 4, 2 KV heads, gated MLP f 32, V 100."""
    cfg = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 32, "vocab_size": 100, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16", **overrides}
    d = tmp_path / cfg["model_type"]
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return load_model(d)


# --- coefficients ------------------------------------------------------------------------------------------


def test_coefficients_of_a_gated_gqa_toy_by_hand(tmp_path):
    c = coefficients(toy(tmp_path))
    # attention: Q 16x16 + K, V 16x8 each (2 KV heads x 4) + O 16x16 = 768 weights a layer, 2 layers, 2 FLOPs each
    assert c.attention_flops_per_token == 2 * 2 * 768
    # gated MLP: gate, up 16x32 and down 32x16 = 1536 a layer
    assert c.mlp_flops_per_token == 2 * 2 * 1536
    # other: two RMSNorms of 16 a layer plus the final norm = 80 weights
    assert c.other_flops_per_token == 2 * 80
    assert c.flops_per_token == 2 * (2 * 768 + 2 * 1536 + 80) == 9376
    assert c.flops_per_sampled == 2 * 16 * 100                      # LM head
    assert c.flops_per_pair == 4 * 2 * 4 * 4                        # 4 L h e
    assert c.weight_bytes == (4688 + 1600) * 2                      # body + untied head, bf16
    assert c.kv_bytes_per_token == 2 * 2 * 2 * 4 * 2                # K and V, L, k, e, b
    # activations: b L (4d + (4h + 2k) e + 3 f) = 2 * 2 * (64 + 80 + 96); head: b (d + V)
    assert c.activation_bytes_per_token == 960
    assert c.activation_bytes_per_sampled == 232


def test_coefficients_of_a_plain_mlp_with_biases_by_hand(tmp_path):
    # OPT: MHA with biases on all four projections, 2-matrix MLP with biases, LayerNorms, learned positions
    m = toy(tmp_path, model_type="opt", num_key_value_heads=None, ffn_dim=64, intermediate_size=None,
            max_position_embeddings=30, tie_word_embeddings=True)
    c = coefficients(m)
    assert c.attention_flops_per_token == 2 * 2 * (4 * 16 * 16)     # k = h: four 16x16 matrices
    assert c.mlp_flops_per_token == 2 * 2 * (2 * 16 * 64)           # up 16x64, down 64x16
    # biases (16+16+16+16 attention, 64+16 MLP) and two LayerNorms (2 x 32) a layer, final LayerNorm 32
    assert c.other_flops_per_token == 2 * (2 * (64 + 80 + 64) + 32)
    assert c.weight_bytes == (2 * (1024 + 64 + 2048 + 80 + 64) + 32 + 1600) * 2   # tied head counted once
    assert c.activation_bytes_per_token == 2 * 2 * (4 * 16 + (16 + 8) * 4 + 2 * 64)


def test_dtype_override_changes_bytes_not_flops(tmp_path):
    m = toy(tmp_path)
    bf, f8 = coefficients(m), coefficients(m, "fp8")
    assert (f8.dtype, f8.dtype_bytes) == ("fp8", 1)
    assert f8.flops_per_token == bf.flops_per_token
    assert f8.weight_bytes * 2 == bf.weight_bytes and f8.kv_bytes_per_token * 2 == bf.kv_bytes_per_token
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        resolve_dtype(m, "int3")


@pytest.mark.parametrize("name", model_names())
def test_the_simulated_engine_uses_these_coefficients(name):
    m = model(name)
    c = coefficients(m)
    for tp in (1, 2, 4):
        if m.num_heads % tp:
            continue
        p = PerfModel(m, H100, tp=tp)
        assert p.flops_per_token == pytest.approx(c.flops_per_token / tp, rel=1e-15)
        assert p.flops_per_sampled == pytest.approx(c.flops_per_sampled / tp, rel=1e-15)
        assert p.flops_per_pair == pytest.approx(c.flops_per_pair / tp, rel=1e-15)
        assert p.weight_bytes == pytest.approx(c.weight_bytes / tp, rel=1e-15)
        # KV heads split over GPUs, replicated when tp > k
        assert p.kv_bytes_per_token == pytest.approx(c.kv_bytes_per_token * max(m.num_kv_heads / tp, 1) /
                                                     m.num_kv_heads, rel=1e-15)
    # the breakdown adds up and each part is real work
    assert c.attention_flops_per_token + c.mlp_flops_per_token + c.other_flops_per_token == c.flops_per_token
    assert c.other_flops_per_token < 0.01 * c.flops_per_token


# --- per request ---------------------------------------------------------------------------------------------


def test_request_counts_by_hand(tmp_path):
    m = toy(tmp_path)
    c = request_counts(m, [4], [3])
    # prefill of 4 tokens: 9376 x 4 + LM head 3200 once + 128 x 4*5/2 pairs
    assert c.prefill_flops[0] == 9376 * 4 + 3200 + 128 * 10 == 41984
    # decode emits tokens 1 and 2 with 4+1 and 4+2 pairs: 2 x (9376 + 3200) + 128 x 11
    assert c.decode_flops[0] == 2 * (9376 + 3200) + 128 * 11 == 26560
    assert c.flops[0] == 68544
    # weights read by 3 forwards (batch 1); KV read 4 + 5 + 6 tokens, written 4 + 1 + 1; 64 bytes a token
    assert c.weight_bytes[0] == 3 * 12576
    assert c.kv_read_bytes[0] == 15 * 64 and c.kv_write_bytes[0] == 6 * 64
    assert c.activation_bytes[0] == 6 * 960 + 3 * 232
    assert c.bytes[0] == c.weight_bytes[0] + 15 * 64 + 6 * 64 + 6 * 960 + 3 * 232
    assert c.prefill_bytes[0] == 12576 + 4 * 64 + 4 * 64 + 4 * 960 + 232
    assert c.prefill_bytes[0] + c.decode_bytes[0] == pytest.approx(c.bytes[0], rel=1e-15)


def test_batch_divides_only_the_weight_reads(tmp_path):
    m = toy(tmp_path)
    one, many = request_counts(m, [4, 100], [3, 7]), request_counts(m, [4, 100], [3, 7], batch=8)
    np.testing.assert_allclose(many.weight_bytes * 8, one.weight_bytes)
    np.testing.assert_array_equal(many.flops, one.flops)
    np.testing.assert_array_equal(many.kv_read_bytes, one.kv_read_bytes)
    np.testing.assert_array_equal(many.activation_bytes, one.activation_bytes)
    assert (many.bytes < one.bytes).all() and many.batch == 8.0


def test_a_single_output_token_is_the_prefill_alone(tmp_path):
    c = request_counts(toy(tmp_path), 7, 1)
    assert c.decode_flops == 0 and c.decode_bytes == 0 and c.flops == c.prefill_flops


@pytest.mark.parametrize("n_in, n_out, batch, what", [
    ([0], [3], 1, "n_in"), ([4], [0], 1, "n_out"), ([4.5], [3], 1, "n_in"), ([4], [np.nan], 1, "n_out"),
    ([4], [3], 0, "batch"), ([4], [3], True, "batch"),
])
def test_bad_lengths_are_named(tmp_path, n_in, n_out, batch, what):
    with pytest.raises(ValueError, match=what):
        request_counts(toy(tmp_path), n_in, n_out, batch=batch)


def test_request_counts_equal_the_work_of_its_steps_in_a_run(tmp_path):
    """In a simulated run with batching and chunked prefill, each request's per-step work (the attribution's
    records) sums to its counts, and the steps' counts to the requests' total."""
    run = execute(RunConfig(trace=str(REPO / "traces" / "chat.jsonl"), limit=40, rate_scale=20.0,
                            max_num_batched_tokens=512, model="llama-3.2-1b", out=str(tmp_path / "run")),
                  progress=False)
    req, steps = run.requests, run.steps
    assert (req["status"] == "finished").all() and (req["preemptions"] == 0).all()
    chunked = req["prefill_steps"].map(len) > 1
    assert chunked.any()                              # prompts over 512 tokens were split
    assert (steps["num_seqs"] > 1).any()              # and requests shared steps
    c = coefficients(model("llama-3.2-1b"))
    work = request_step_work(req)
    flops = (c.flops_per_token * work["tokens"] + c.flops_per_sampled * work["sampled"]
             + c.flops_per_pair * work["attn_pairs"])
    per_request = np.bincount(work["row"], flops, minlength=len(req))
    counts = request_counts(c, req["input_tokens"], req["generated_tokens"])
    np.testing.assert_allclose(per_request, counts.flops, rtol=1e-12)
    sc = step_counts(c, steps)
    assert sc.flops.sum() == pytest.approx(counts.flops.sum(), rel=1e-12)
    assert sc.kv_write_bytes.sum() == pytest.approx(counts.kv_write_bytes.sum(), rel=1e-12)
    # KV reads: each later chunk of a split prompt reads the earlier chunks' KV again, which the counts of one
    # prefill forward leave out
    reread = sum(sum(sum(q for _, q in chunks[:i]) for i in range(len(chunks))) for chunks in req["prefill_steps"])
    assert reread > 0
    assert sc.kv_read_bytes.sum() == pytest.approx(counts.kv_read_bytes.sum() + c.kv_bytes_per_token * reread,
                                                   rel=1e-12)
    # weights: once per step, against once per forward of each request alone: batching shares them
    assert sc.weight_bytes.sum() < counts.weight_bytes.sum()
    assert sc.weight_bytes.sum() == c.weight_bytes * len(steps)


# --- per step ------------------------------------------------------------------------------------------------


def test_step_counts_by_hand(tmp_path):
    m = toy(tmp_path)
    # a step finishing a 4-token prompt and decoding two sequences at contexts 4 and 5; then an empty step
    steps = pd.DataFrame({"prefill_tokens": [4, 0], "decode_tokens": [2, 0], "num_seqs": [3, 0],
                          "sampled_seqs": [3, 0], "attn_pairs": [10 + 5 + 6, 0], "kv_read_tokens": [4 + 5 + 6, 0]})
    s = step_counts(m, steps)
    assert s.flops.tolist() == [9376 * 6 + 3200 * 3 + 128 * 21, 0.0]
    assert s.weight_bytes.tolist() == [12576, 0.0]
    assert s.kv_read_bytes.tolist() == [15 * 64, 0.0] and s.kv_write_bytes.tolist() == [6 * 64, 0.0]
    assert s.activation_bytes.tolist() == [6 * 960 + 3 * 232, 0.0]
    assert s.bytes[0] == 12576 + 21 * 64 + 6 * 960 + 3 * 232


def test_step_counts_name_a_missing_or_bad_column(tmp_path):
    m = toy(tmp_path)
    good = {"prefill_tokens": [4], "decode_tokens": [0], "num_seqs": [1], "sampled_seqs": [1],
            "attn_pairs": [10], "kv_read_tokens": [4]}
    with pytest.raises(ValueError, match="missing column 'attn_pairs'"):
        step_counts(m, pd.DataFrame({k: v for k, v in good.items() if k != "attn_pairs"}))
    with pytest.raises(ValueError, match="row 0: field 'decode_tokens'"):
        step_counts(m, pd.DataFrame({**good, "decode_tokens": [-1]}))


# --- [SS26] --------------------------------------------------------------------------------------------------


def test_simplified_count_by_hand(tmp_path):
    s = simplified_counts(toy(tmp_path), [4], [3])
    # per layer: prefill 24*4*16^2 + 4*4^2*16; decode t = 1..3: 24*16^2 + 4*(4+t-1)*16; two layers
    assert s.prefill_flops[0] == 2 * (24 * 4 * 256 + 4 * 16 * 16) == 51200
    assert s.decode_flops[0] == 2 * ((6144 + 256) + (6144 + 320) + (6144 + 384)) == 38784
    assert s.flops[0] == 51200 + 38784


def test_full_count_against_simplified_for_llama_3_1_8b():
    """Llama-3.1-8B (d 4096, 32 layers, 32 heads, 8 KV heads, f 14336, V 128256) against [SS26]'s accounting.

    By hand, per layer and token (in d^2): GQA projections 2 (d^2 + 2 d (d/4) + d^2) = 5 against [SS26]'s 8;
    the gated MLP 2 x 3 d (3.5 d) = 21 against 16; so 26 against 24 (+8.3%). The LM head adds 2 d V a token,
    2 x 128256 / (24 x 4096 x 32) = 8.2% of [SS26]'s per-token count. Attention: the same 4 d a pair in decode,
    but prefill has n (n + 1) / 2 causal pairs where [SS26] counts n^2: about half.

    So a decode step at short context is ~16.5% above [SS26]; a long prefill (n = 8192) is below it:
    (26 d + 2 (n + 1)) / (24 d + 4 n) = 0.9375; and a typical chat request (1024 in, 256 out) lands between.
    """
    m = model("llama-3.1-8b")
    d, L = 4096, 32
    c = coefficients(m)
    assert c.attention_flops_per_token == 5 * d * d * L              # 5 d^2 a layer
    assert c.mlp_flops_per_token == 21 * d * d * L                   # 21 d^2 a layer
    # one decode step at context 16: full / simplified, per step (difference of n_out = 3 and 2)
    full = request_counts(m, 16, [2, 3]).decode_flops
    simple = simplified_counts(m, 16, [2, 3]).decode_flops
    ratio = (full[1] - full[0]) / (simple[1] - simple[0])
    assert 1.16 < ratio < 1.17                                       # 26/24 + 0.0815 = 1.1649
    # a long prefill: below [SS26], by the causal half of the attention
    ratio = request_counts(m, 8192, 1).prefill_flops[0] / simplified_counts(m, 8192, 1).prefill_flops[0]
    assert 0.935 < ratio < 0.945                                    # 0.9375 plus the LM head on one token
    attn_full = c.flops_per_pair * 8192 * 8193 / 2
    assert attn_full / (L * 4 * 8192 ** 2 * d) == pytest.approx(8193 / 16384)
    # a typical chat request: above [SS26], by less than a decode step
    ratio = request_counts(m, 1024, 256).flops[0] / simplified_counts(m, 1024, 256).flops[0]
    assert 1.05 < ratio < 1.16
