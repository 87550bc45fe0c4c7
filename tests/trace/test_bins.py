"""Tests for replay.trace.bins: the [Na25] section 4.1 "nearest bin at or above" rule, exclusions, edges."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.trace.bins import (
    DEFAULT_INPUT_BINS,
    DEFAULT_OUTPUT_BINS,
    Binning,
    bin_workload,
    format_bins,
    parse_edges,
)
from replay.trace.schema import Request, Workload


def wl(pairs) -> Workload:
    return Workload.from_requests([Request(str(n), float(n), i, o) for n, (i, o) in enumerate(pairs)])


def cell(b: Binning, i_edge: int, o_edge: int) -> int:
    return int(b.counts[b.input_bins.index(i_edge), b.output_bins.index(o_edge)])


def test_defaults_are_the_paper_lists():
    assert DEFAULT_INPUT_BINS == (32, 128, 256, 512, 1024, 2048, 4096, 8192)
    assert DEFAULT_OUTPUT_BINS == (8, 16, 32, 64, 128, 256, 512)


# --- the boundary rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "i, o, want",
    [
        (1, 1, (32, 8)),  # one token goes to the first bin
        (32, 8, (32, 8)),  # exactly on an edge: that edge's bin
        (33, 9, (128, 16)),  # edge + 1: the next bin
        (128, 16, (128, 16)),
        (129, 17, (256, 32)),
        (8191, 511, (8192, 512)),
        (8192, 512, (8192, 512)),  # exactly the largest edge is still binned
        (500, 60, (512, 64)),
    ],
)
def test_boundary_rule(i, o, want):
    b = bin_workload(wl([(i, o)]))
    assert b.counts.sum() == 1
    assert cell(b, *want) == 1
    assert (b.binned, b.excluded) == (1, 0)


def test_counts_shape_dtype_and_several_requests():
    b = bin_workload(wl([(1, 1), (32, 8), (33, 8), (33, 9), (4000, 100), (4000, 100)]))
    assert b.counts.shape == (8, 7)
    assert b.counts.dtype == np.int64
    assert cell(b, 32, 8) == 2
    assert cell(b, 128, 8) == 1
    assert cell(b, 128, 16) == 1
    assert cell(b, 4096, 128) == 2
    assert b.counts.sum() == 6 and b.requests == 6


# --- above the largest bins ----------------------------------------------------------------------------


def test_above_bins_counted_by_dimension():
    b = bin_workload(
        wl(
            [
                (8192, 512),  # binned (exactly on the largest edges)
                (8193, 1),  # above input only
                (10_000, 512),  # above input only
                (1, 513),  # above output only
                (8193, 513),  # above both
                (50_000, 9_000),  # above both
                (100, 10),  # binned
            ]
        )
    )
    assert b.requests == 7
    assert (b.above_input, b.above_output, b.above_both) == (2, 1, 2)
    assert b.excluded == 5
    assert b.binned == 2
    assert b.binned + b.excluded == b.requests
    assert cell(b, 8192, 512) == 1 and cell(b, 128, 16) == 1


def test_all_above():
    b = bin_workload(wl([(9000, 1), (9000, 2)]))
    assert b.binned == 0 and b.above_input == 2 and not b.counts.any()


def test_empty_workload():
    b = bin_workload(Workload.from_requests([]))
    assert b.requests == 0 and b.binned == 0 and b.excluded == 0
    assert b.counts.shape == (8, 7)
    assert "binned 0 of 0" in format_bins(b)


# --- custom edges --------------------------------------------------------------------------------------


def test_custom_edges():
    b = bin_workload(wl([(1, 1), (10, 5), (11, 6), (100, 7), (101, 1)]), input_bins=(10, 100), output_bins=(5, 6))
    assert b.input_bins == (10, 100) and b.output_bins == (5, 6)
    assert b.counts.tolist() == [[2, 0], [0, 1]]
    assert (b.above_input, b.above_output, b.above_both) == (1, 1, 0)


def test_custom_edges_from_parse_edges_and_lists():
    b = bin_workload(wl([(3, 3)]), input_bins=parse_edges("4, 2", "--input-bins"), output_bins=[3])
    assert b.input_bins == (2, 4) and b.output_bins == (3,)
    assert b.counts.tolist() == [[0], [1]]


@pytest.mark.parametrize("edges", [(), (0, 4), (-1, 4), (4, 4), (8, 4)])
def test_bad_edges_rejected(edges):
    with pytest.raises(ValueError):
        bin_workload(wl([(1, 1)]), input_bins=edges)


# --- property: matches a naive per-request loop --------------------------------------------------------

edge_sets = st.lists(st.integers(1, 300), min_size=1, max_size=8, unique=True).map(lambda xs: tuple(sorted(xs)))


@settings(max_examples=150, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 400)), max_size=60),
    in_edges=edge_sets,
    out_edges=edge_sets,
)
def test_matches_naive_loop(pairs, in_edges, out_edges):
    b = bin_workload(wl(pairs), input_bins=in_edges, output_bins=out_edges)

    want: dict[tuple[int, int], int] = {}
    above_i = above_o = above_both = 0
    for i, o in pairs:
        i_star = min((e for e in in_edges if e >= i), default=None)
        o_star = min((e for e in out_edges if e >= o), default=None)
        if i_star is None and o_star is None:
            above_both += 1
        elif i_star is None:
            above_i += 1
        elif o_star is None:
            above_o += 1
        else:
            want[(i_star, o_star)] = want.get((i_star, o_star), 0) + 1

    got = {
        (ie, oe): int(b.counts[j, k])
        for j, ie in enumerate(in_edges)
        for k, oe in enumerate(out_edges)
        if b.counts[j, k]
    }
    assert got == want
    assert (b.above_input, b.above_output, b.above_both) == (above_i, above_o, above_both)
    assert b.requests == len(pairs)
    assert b.binned + b.excluded == b.requests
    assert b.to_frame()["requests"].sum() == b.binned


# --- parse_edges ---------------------------------------------------------------------------------------


def test_parse_edges_ok():
    assert parse_edges("32,128,256", "input") == (32, 128, 256)
    assert parse_edges(" 256, 32 ,128 ", "input") == (32, 128, 256)  # sorted
    assert parse_edges("7", "output") == (7,)


@pytest.mark.parametrize(
    "text, bad",
    [
        ("", "no bin edges"),
        ("   ", "no bin edges"),
        ("32,abc,128", "'abc'"),
        ("32,3.5", "'3.5'"),
        ("32,,128", "''"),
        ("32,128,", "''"),
        ("0,32", "0"),
        ("32,-8", "-8"),
        ("32,128,32", "32"),
        ("1e3", "'1e3'"),
    ],
)
def test_parse_edges_errors_name_option_and_value(text, bad):
    with pytest.raises(ValueError) as exc:
        parse_edges(text, "--output-bins")
    msg = str(exc.value)
    assert "--output-bins" in msg
    assert bad in msg


def test_parse_edges_error_kinds():
    with pytest.raises(ValueError, match="not positive"):
        parse_edges("4,0", "x")
    with pytest.raises(ValueError, match="twice"):
        parse_edges("4,8,4", "x")
    with pytest.raises(ValueError, match="not an integer"):
        parse_edges("4,x", "x")


# --- to_dict, to_frame, format_bins --------------------------------------------------------------------

SAMPLE = wl([(1, 1), (100, 10), (100, 10), (9000, 1), (1, 600), (9000, 600)])


def test_to_dict():
    d = bin_workload(SAMPLE).to_dict()
    assert set(d) == {
        "input_bins", "output_bins", "counts", "requests", "binned", "excluded",
        "above_input", "above_output", "above_both",
    }
    assert d["input_bins"] == list(DEFAULT_INPUT_BINS) and d["output_bins"] == list(DEFAULT_OUTPUT_BINS)
    assert len(d["counts"]) == 8 * 7  # every cell, zero cells included
    assert all(set(c) == {"input_bin", "output_bin", "requests"} for c in d["counts"])
    nonzero = {(c["input_bin"], c["output_bin"]): c["requests"] for c in d["counts"] if c["requests"]}
    assert nonzero == {(32, 8): 1, (128, 16): 2}
    assert (d["requests"], d["binned"], d["excluded"]) == (6, 3, 3)
    assert (d["above_input"], d["above_output"], d["above_both"]) == (1, 1, 1)
    assert json.loads(json.dumps(d)) == d


def test_to_frame():
    f = bin_workload(SAMPLE).to_frame()
    assert isinstance(f, pd.DataFrame)
    assert list(f.columns) == ["input_bin", "output_bin", "requests"]
    assert len(f) == 56
    row = f[(f.input_bin == 128) & (f.output_bin == 16)]
    assert row.requests.tolist() == [2]
    assert f.requests.sum() == 3
    assert f.input_bin.iloc[0] == 32 and f.output_bin.iloc[:7].tolist() == list(DEFAULT_OUTPUT_BINS)


def test_format_bins():
    b = bin_workload(SAMPLE)
    text = format_bins(b)
    lines = text.splitlines()
    header = lines[0].split()
    assert [h for h in header if h.startswith("<=")] == [f"<={o}" for o in DEFAULT_OUTPUT_BINS]
    row128 = next(line for line in lines if line.startswith("<=128 "))
    assert row128.split()[1:] == ["0", "2", "0", "0", "0", "0", "0", "2"]  # 7 cells + row total
    assert "binned 3 of 6" in text
    assert "1 with input > 8192" in text
    assert "1 with output > 512" in text
    assert "1 with both" in text
