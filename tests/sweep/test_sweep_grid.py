"""The sweep's grid (replay.sweep.grid): typed axes, power-of-two ranges, the [SS26] default, point names and
configs, and the errors for bad grids, each naming the key or point."""

from __future__ import annotations

from dataclasses import fields

import pytest
import yaml

from conftest import TRACES
from replay.config import RunConfig
from replay.sweep import SS26_LENGTHS, SYNTHETIC, Axis, grid_keys, load_sweep, make_sweep, parse_axis
from replay.sweep.grid import save_or_check


def base(tmp_path, **kw) -> RunConfig:
    return RunConfig(trace=kw.pop("trace", SYNTHETIC), engine="sim", mode="offline", out=str(tmp_path / "sw"), **kw)


@pytest.mark.parametrize("text, key, values", [
    ("n_in=64,128,256", "n_in", (64, 128, 256)),
    ("n_in=64..4096", "n_in", (64, 128, 256, 512, 1024, 2048, 4096)),
    ("n_out=100..1000", "n_out", (128, 256, 512)),            # the powers of two inside the range
    ("n_in=1..1", "n_in", (1,)),
    ("max_num_seqs=8,64", "max_num_seqs", (8, 64)),
    ("max-num-seqs=8", "max_num_seqs", (8,)),                 # dashes read as underscores
    ("rate_per_s=0.5,2", "rate_per_s", (0.5, 2.0)),
    ("rate_per_s=0.25..2", "rate_per_s", (0.25, 0.5, 1.0, 2.0)),
    ("batch_size=none,8", "batch_size", (None, 8)),
    ("chunked_prefill=true,off", "chunked_prefill", (True, False)),
    ("engine=sim", "engine", ("sim",)),
    ("model=llama-3.2-1b,qwen2-1.5b", "model", ("llama-3.2-1b", "qwen2-1.5b")),
    ("n_in=64,256..1024", "n_in", (64, 256, 512, 1024)),       # lists and ranges mix
])
def test_axes_are_typed_by_the_run_config_field(text, key, values):
    axis = parse_axis(text)
    assert axis == Axis(key, values)
    assert [type(v) for v in axis.values] == [type(v) for v in values]


@pytest.mark.parametrize("text, needle", [
    ("max_num_seq=8", "unknown key 'max_num_seq'; valid keys: n_in, n_out, arrival"),
    ("trace=a.jsonl", "unknown key 'trace'"),
    ("out=x", "unknown key 'out'"),
    ("n_in", "expected KEY=V1,V2"),
    ("=8", "expected KEY=V1,V2"),
    ("n_in=", "empty value"),
    ("n_in=64,,128", "empty value"),
    ("n_in=64.5", "--grid n_in: value '64.5': expected a whole number"),
    ("max_num_seqs=lots", "--grid max_num_seqs: value 'lots': expected a whole number"),
    ("rate_per_s=fast", "--grid rate_per_s: value 'fast': expected a finite number"),
    ("rate_per_s=inf", "expected a finite number"),
    ("chunked_prefill=maybe", "expected true or false"),
    ("max_num_seqs=none", "max_num_seqs cannot be none"),
    ("n_in=0", "token lengths must be >= 1"),
    ("n_in=64,64", "value 64 given more than once"),
    ("n_in=64..128,128", "value 128 given more than once"),
    ("n_in=100..127", "no power of two between 100 and 127"),
    ("n_in=128..64", "needs 0 < A <= B"),
    ("model=a..b", "a range A..B is for numeric keys"),
])
def test_bad_axes_name_the_key_and_value(text, needle):
    with pytest.raises(ValueError, match=None) as info:
        parse_axis(text)
    assert needle in str(info.value)


def test_valid_keys_are_the_length_axes_and_every_run_option():
    keys = grid_keys()
    assert keys[:2] == ("n_in", "n_out")
    assert set(keys[2:]) == {f.name for f in fields(RunConfig)} - {"trace", "out"}


def test_the_default_synthetic_grid_is_ss26s(tmp_path):
    spec = make_sweep(base(tmp_path), [])
    points = spec.points()
    assert spec.synthetic and spec.requests == 1000
    assert len(points) == len(SS26_LENGTHS) ** 2 == 49
    assert [p.value("n_in") for p in points[:8]] == [64] * 7 + [128]     # n_in outermost
    assert [p.value("n_out") for p in points[:8]] == [*SS26_LENGTHS, 64]
    assert points[0].name == "00-n_in=64,n_out=64" and points[-1].name == "48-n_in=4096,n_out=4096"
    assert points[3].config.trace == str(tmp_path / "sw" / points[3].name / "trace.jsonl")
    assert points[3].config.out == str(tmp_path / "sw" / points[3].name)


def test_a_length_axis_not_given_takes_the_ss26_values_and_run_options_vary(tmp_path):
    spec = make_sweep(base(tmp_path), ["n_in=512", "max_num_seqs=8,64"], requests=10)
    points = spec.points()
    assert [a.key for a in spec.axes] == ["n_out", "n_in", "max_num_seqs"]
    assert len(points) == 7 * 2
    assert {p.config.max_num_seqs for p in points} == {8, 64}
    assert all(p.config.max_num_seqs == p.value("max_num_seqs") for p in points)
    assert points[1].name == "01-n_out=64,n_in=512,max_num_seqs=64"


def test_a_trace_sweep_replays_the_trace_at_every_point(tmp_path):
    trace = str(TRACES / "chat.jsonl")
    spec = make_sweep(base(tmp_path, trace=trace), ["rate_scale=1,2", "router=round-robin,least-outstanding"])
    points = spec.points()
    assert not spec.synthetic and spec.requests is None
    assert len(points) == 4 and all(p.config.trace == trace for p in points)
    assert [(p.config.rate_scale, p.config.router) for p in points] == [
        (1.0, "round-robin"), (1.0, "least-outstanding"), (2.0, "round-robin"), (2.0, "least-outstanding")]


@pytest.mark.parametrize("kw, grid, requests, needle", [
    ({"trace": str(TRACES / "chat.jsonl")}, ["n_in=64"], None, "--grid n_in: the length axes"),
    ({"trace": str(TRACES / "chat.jsonl")}, [], None, "needs at least one --grid axis"),
    ({"trace": str(TRACES / "chat.jsonl")}, ["tp=1"], 100, "a sweep of a trace takes --limit"),
    ({}, ["n_in=64", "n_in=128"], None, "--grid n_in: given more than once"),
    ({}, [], 0, "--requests: expected an integer >= 1"),
    ({}, ["n_in=64", "n_out=8", "engine=sim,tpu"], None, "grid point 1-n_in=64,n_out=8,engine=tpu: engine: unknown"),
    ({}, ["n_in=64", "n_out=8", "gpu_memory_utilization=0.5,1.5"], None, "grid point 1-"),
])
def test_bad_sweeps_are_refused_before_anything_runs(tmp_path, kw, grid, requests, needle):
    with pytest.raises(ValueError) as info:
        make_sweep(base(tmp_path, **kw), grid, requests)
    assert needle in str(info.value)
    assert not (tmp_path / "sw").exists()


def test_sweep_yaml_round_trips_and_a_different_grid_is_refused(tmp_path):
    spec = make_sweep(base(tmp_path, model="llama-3.2-1b"), ["n_in=64,128", "n_out=8", "max_num_seqs=4,8"], 5)
    save_or_check(spec)
    assert load_sweep(spec.out) == spec
    save_or_check(spec)  # the same sweep again: fine
    other = make_sweep(base(tmp_path, model="llama-3.2-1b"), ["n_in=64,128", "n_out=8", "max_num_seqs=4,16"], 5)
    with pytest.raises(ValueError, match=r"records another sweep \(grid max_num_seqs: \[4, 8\] there, \[4, 16\] "
                                         r"here\); choose another --out"):
        save_or_check(other)
    reordered = make_sweep(base(tmp_path, model="llama-3.2-1b"), ["n_in=64,128", "max_num_seqs=4,8", "n_out=8"], 5)
    with pytest.raises(ValueError, match="another order"):
        save_or_check(reordered)
    other_base = make_sweep(base(tmp_path, model="qwen2-1.5b"), ["n_in=64,128", "n_out=8", "max_num_seqs=4,8"], 5)
    with pytest.raises(ValueError, match="base model: 'llama-3.2-1b' there, 'qwen2-1.5b' here"):
        save_or_check(other_base)
    assert yaml.safe_load((tmp_path / "sw" / "sweep.yaml").read_text())["grid"]["max_num_seqs"] == [4, 8]


def test_an_existing_directory_that_is_no_sweep_is_refused(tmp_path):
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no sweep.yaml"):
        save_or_check(make_sweep(base(tmp_path), ["n_in=64", "n_out=8"], 2))
    with pytest.raises(ValueError, match="no sweep.yaml: not a sweep directory"):
        load_sweep(tmp_path / "sw")
