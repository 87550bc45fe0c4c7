"""The pipeline's options, atomic output, streaming across read blocks, and round trips (incl. property tests)."""

from __future__ import annotations

import csv
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, TRACES, assert_located, azure2023_ns, leftovers
from replay.trace import ReadOptions, ReadReport, Request, TraceError, Workload, convert, read_trace, write_trace
from replay.trace import writers
from replay.trace.formats import csvfile
from replay.trace.formats.burstgpt import FAILED
from replay.trace.pipeline import canonical_batches

CONV = DATA / "azure2023_conv_head.csv"
VIDUR = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


def vidur_file(path: Path, times_ns: list[int], seed: int = 0) -> list[tuple[int, int, int]]:
    """A Vidur/Splitwise CSV with arrival times given in ns (written as exact decimal seconds)."""
    rng = random.Random(seed)
    rows = [(t, rng.randint(1, 5000), rng.randint(1, 900)) for t in times_ns]
    with open(path, "w", newline="") as f:
        f.write(VIDUR)
        for t, i, o in rows:
            f.write(f"{t // 10**9}.{t % 10**9:09d},{i},{o}\n")
    return rows


def sorted_times(n: int, seed: int = 1, start_ns: int = 5 * 10**9) -> list[int]:
    rng = random.Random(seed)
    t, out = start_ns, []
    for _ in range(n):
        t += rng.choice([0, rng.randint(1, 3 * 10**9)])
        out.append(t)
    return out


# --- options -------------------------------------------------------------------------------------------------

def test_limit():
    got = list(read_trace(CONV, ReadOptions(limit=7)))
    assert [r.id for r in got] == [str(i) for i in range(7)]
    full = list(read_trace(CONV))
    assert got == full[:7]
    assert list(read_trace(CONV, ReadOptions(limit=10_000))) == full


@pytest.mark.parametrize("start_s,duration_s", [(None, 30.0), (10.0, None), (10.0, 30.0), (0.0, 1e-3),
                                                (12.345678901, 7.5), (0.0, 1e9)])
def test_window_against_an_independent_filter(tmp_path, start_s, duration_s):
    path = tmp_path / "v.csv"
    rows = vidur_file(path, sorted_times(400))
    t0 = rows[0][0]
    lo = round((start_s or 0) * 10**9)
    hi = None if duration_s is None else lo + round(duration_s * 10**9)
    keep = [(k, r) for k, r in enumerate(rows) if r[0] - t0 >= lo and (hi is None or r[0] - t0 < hi)]
    opts = ReadOptions(start_s=start_s, duration_s=duration_s)
    if not keep:
        with pytest.raises(TraceError, match="window"):
            read_trace(path, opts)
        return
    got = list(read_trace(path, opts))
    base = keep[0][1][0]
    assert [r.id for r in got] == [str(k) for k, _ in keep]
    assert [(r.input_tokens, r.output_tokens) for r in got] == [(i, o) for _, (_, i, o) in keep]
    assert [r.arrival_s for r in got] == [(t - base) / 1e9 for _, (t, _, _) in keep]
    assert got[0].arrival_s == 0.0


def test_window_on_the_azure_sample():
    body = list(csv.reader(open(CONV, newline="")))[1:]
    ns = [azure2023_ns(r[0]) for r in body]
    keep = [k for k, t in enumerate(ns) if 10 * 10**9 <= t - ns[0] < 40 * 10**9]
    got = list(read_trace(CONV, ReadOptions(start_s=10, duration_s=30, limit=10**6)))
    assert [r.id for r in got] == [str(k) for k in keep]
    assert [r.arrival_s for r in got] == [(ns[k] - ns[keep[0]]) / 1e9 for k in keep]


def test_window_then_limit():
    got = list(read_trace(CONV, ReadOptions(start_s=10, duration_s=30, limit=3)))
    window = list(read_trace(CONV, ReadOptions(start_s=10, duration_s=30)))
    assert got == window[:3]


def test_empty_window_is_an_error():
    with pytest.raises(TraceError, match="no requests in the selected window"):
        read_trace(CONV, ReadOptions(start_s=10**6))


def test_kind_stamping(tmp_path):
    assert {r.kind for r in read_trace(CONV, ReadOptions(kind="chat"))} == {"chat"}
    src = tmp_path / "k.jsonl"
    write_trace(Workload.from_requests([Request("a", 0.0, 1, 1, kind="code"), Request("b", 1.0, 1, 1)]), src)
    assert [r.kind for r in read_trace(src)] == ["code", None]
    assert [r.kind for r in read_trace(src, ReadOptions(kind="batch"))] == ["batch", "batch"]


@pytest.mark.parametrize("kwargs", [dict(limit=0), dict(start_s=-1), dict(duration_s=0), dict(format="csv"),
                                    dict(start_s=float("nan")), dict(duration_s=float("inf")), dict(start_s=1e300)])
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        ReadOptions(**kwargs)


def test_sort_reorders_with_a_warning(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(VIDUR + "5,1,1\n4,2,2\n6,3,3\n4.5,4,4\n")
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert_located(exc.value, path, 3, "arrived_at")
    report = ReadReport(str(path))
    got = list(read_trace(path, ReadOptions(sort=True), report))
    assert [r.id for r in got] == ["1", "3", "0", "2"]
    assert [r.arrival_s for r in got] == [0.0, 0.5, 1.0, 2.0]
    assert len(report.warnings) == 1 and "2 requests" in report.warnings[0]
    quiet = ReadReport(str(path))
    read_trace(CONV, ReadOptions(sort=True), quiet)
    assert quiet.warnings == []


# --- convert: reports and atomic output ----------------------------------------------------------------------

def test_convert_report_counts_exclusions(tmp_path):
    src = tmp_path / "b.csv"
    src.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                   "0,M,5,5,10,x\n1,M,5,0,5,x\n2,M,5,0,5,x\n3,M,5,5,10,x\n")
    rep = convert(src, tmp_path / "o.jsonl")
    assert (rep.format, rep.rows_read, rep.written) == ("burstgpt", 4, 2)
    assert rep.excluded == {FAILED: 2}
    assert f"excluded 2: {FAILED}" in rep.summary()
    assert len(read_trace(tmp_path / "o.jsonl")) == 2


BAD_SOURCES = {
    "negative.csv": "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1,1\n"
                    "2023-11-16 18:15:47.6805900,-1,1\n",
    "backwards.csv": VIDUR + "1,1,1\n0,1,1\n",
    "fields.csv": VIDUR + "1,1,1\n2,1,1,1\n",
    "badjson.jsonl": '{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n{oops\n',
    "empty.csv": "",
    "header.csv": VIDUR,
}


@pytest.mark.parametrize("name", sorted(BAD_SOURCES))
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_failed_convert_leaves_nothing(tmp_path, name, suffix):
    src = tmp_path / name
    src.write_text(BAD_SOURCES[name])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TraceError):
        convert(src, out / f"dst{suffix}")
    assert leftovers(out) == []


def test_failed_convert_keeps_an_existing_destination(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text(BAD_SOURCES["backwards.csv"])
    dst = tmp_path / "dst.jsonl"
    dst.write_text("old\n")
    with pytest.raises(TraceError):
        convert(src, dst)
    assert dst.read_text() == "old\n"
    assert leftovers(tmp_path) == ["bad.csv", "dst.jsonl"]


def test_unknown_output_suffix(tmp_path):
    with pytest.raises(ValueError, match="jsonl"):
        convert(CONV, tmp_path / "x.csv")
    assert leftovers(tmp_path) == []


def test_convert_onto_its_own_source(tmp_path):
    src = tmp_path / "t.jsonl"
    convert(CONV, src)
    before = src.read_bytes()
    convert(src, src)
    assert src.read_bytes() == before


# --- streaming: many read blocks -----------------------------------------------------------------------------

def _batch_sizes(path: Path) -> list[int]:
    return [b.num_rows for b in canonical_batches(path)]


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(csvfile, "BLOCK_BYTES", 4096)


def test_many_blocks_same_output_as_one(tmp_path, monkeypatch):
    src = tmp_path / "v.csv"
    vidur_file(src, sorted_times(3000))
    one = tmp_path / "one.jsonl"
    convert(src, one)
    assert len(_batch_sizes(src)) == 1
    monkeypatch.setattr(csvfile, "BLOCK_BYTES", 4096)
    assert len(_batch_sizes(src)) > 10
    many = tmp_path / "many.jsonl"
    convert(src, many, ReadOptions(kind="x"))
    convert(src, tmp_path / "many.parquet")
    assert many.read_bytes() == one.read_bytes().replace(b"}\n", b',"kind":"x"}\n')
    convert(tmp_path / "many.parquet", tmp_path / "back.jsonl")
    assert (tmp_path / "back.jsonl").read_bytes() == one.read_bytes()
    # windows and limits cut across block edges the same way
    for opts in (ReadOptions(start_s=100, duration_s=900), ReadOptions(limit=1234), ReadOptions(sort=True)):
        monkeypatch.setattr(csvfile, "BLOCK_BYTES", 4096)
        small = list(read_trace(src, opts))
        monkeypatch.setattr(csvfile, "BLOCK_BYTES", 8 << 20)
        assert small == list(read_trace(src, opts))


def test_backwards_time_across_a_block_edge(tmp_path, small_blocks):
    src = tmp_path / "v.csv"
    times = sorted_times(3000)
    vidur_file(src, times)
    sizes = _batch_sizes(src)
    assert len(sizes) > 5
    edge = sizes[0] + sizes[1]          # row index of the first row of the third block
    before = [len(line) for line in src.read_bytes().splitlines()]
    times[edge] = times[edge - 1] - 1   # one ns before the last row of the previous block
    vidur_file(src, times)
    assert [len(line) for line in src.read_bytes().splitlines()] == before  # so the same block layout
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TraceError) as exc:
        convert(src, out / "o.jsonl")
    assert_located(exc.value, src, edge + 2, "arrived_at")
    assert f"before line {edge + 1}" in str(exc.value)
    assert leftovers(out) == []


def test_bad_value_in_a_late_block(tmp_path, small_blocks):
    src = tmp_path / "v.csv"
    rows = vidur_file(src, sorted_times(3000))
    lines = src.read_text().splitlines(keepends=True)
    lines.insert(50, "\n")                                   # a blank line early on: lines stay exact
    k = 2500
    lines[k] = lines[k].replace(f",{rows[k - 2][1]},", ",12.5,", 1)
    src.write_text("".join(lines))
    with pytest.raises(TraceError) as exc:
        read_trace(src)
    assert_located(exc.value, src, k + 1, "num_prefill_tokens")
    lines[k] = lines[k].replace(",12.5,", ",1,2,", 1)        # now a row with too many fields
    src.write_text("".join(lines))
    with pytest.raises(TraceError) as exc:
        read_trace(src)
    assert_located(exc.value, src, k + 1)


def test_blank_lines_and_text_fallback_match_the_fast_path(tmp_path, small_blocks):
    clean = tmp_path / "clean.csv"
    vidur_file(clean, sorted_times(2000))
    text = clean.read_text().splitlines(keepends=True)
    messy = tmp_path / "messy.csv"
    # blank lines and a '44.0'-style count push later blocks onto the text path
    text[700] = "\n" + text[700]
    head, tail = text[1500].split(",", 1)
    i, o = tail.split(",")
    text[1500] = f"{head},{i}.0,{o}"
    messy.write_text("".join(text))
    a = [(r.arrival_s, r.input_tokens, r.output_tokens) for r in read_trace(clean)]
    b = [(r.arrival_s, r.input_tokens, r.output_tokens) for r in read_trace(messy)]
    assert a == b


def test_jsonl_writer_slices_big_batches(tmp_path, monkeypatch):
    w = read_trace(DATA / "mooncake_head.jsonl", ReadOptions(kind="k"))
    whole = tmp_path / "whole.jsonl"
    write_trace(w, whole)
    monkeypatch.setattr(writers, "ROWS_PER_WRITE", 7)
    sliced = tmp_path / "sliced.jsonl"
    write_trace(w, sliced)
    assert sliced.read_bytes() == whole.read_bytes()


# --- round trips on the real samples -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["azure2023_conv_head.csv", "azure2023_code_head.csv", "mooncake_head.jsonl"])
def test_sample_round_trips(tmp_path, name):
    a, p, b, c = (tmp_path / n for n in ("a.jsonl", "p.parquet", "b.jsonl", "c.jsonl"))
    convert(DATA / name, a, ReadOptions(kind="chat"))
    convert(a, p)
    convert(p, b)
    convert(a, c)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    assert list(read_trace(a)) == list(read_trace(DATA / name, ReadOptions(kind="chat")))


# --- property tests: random canonical workloads --------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=8)  # any unicode (no surrogates): quotes, backslashes, control characters, ...


@st.composite
def workloads(draw) -> list[Request]:
    n = draw(st.integers(1, 25))
    ids = draw(st.lists(st.text(min_size=1, max_size=10), min_size=n, max_size=n, unique=True))  # ids are unique
    if draw(st.booleans()):
        ns = [0] + sorted(draw(st.lists(st.integers(0, 2**50), min_size=n - 1, max_size=n - 1)))
        arrivals = [t / 1e9 for t in ns]
    else:
        arrivals = [None] * n
    counts = st.integers(1, 2**63 - 1) | st.integers(1, 10**5)
    use = {c: draw(st.booleans()) for c in ("kind", "session_id", "blocks", "block_tokens")}
    out = []
    for k in range(n):
        blocks = draw(st.none() | st.lists(INT64, max_size=5).map(tuple)) if use["blocks"] else None
        size = draw(st.integers(1, 2**63 - 1)) if blocks is not None else (
            draw(st.none() | st.integers(1, 4096)) if use["block_tokens"] else None)
        out.append(Request(
            ids[k], arrivals[k], draw(counts), draw(counts),
            kind=draw(st.none() | TEXT) if use["kind"] else None,
            session_id=draw(st.none() | TEXT) if use["session_id"] else None,
            prefix_blocks=blocks, block_tokens=size,
        ))
    return out


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(workloads())
def test_jsonl_round_trip_is_byte_identical(requests):
    with tempfile.TemporaryDirectory() as d:
        first, second = Path(d, "a.jsonl"), Path(d, "b.jsonl")
        write_trace(Workload.from_requests(requests), first)
        back = read_trace(first)
        assert list(back) == requests
        write_trace(back, second)
        assert second.read_bytes() == first.read_bytes()


@PROPERTY
@given(workloads())
def test_jsonl_parquet_jsonl_is_byte_identical(requests):
    with tempfile.TemporaryDirectory() as d:
        a, p, b = Path(d, "a.jsonl"), Path(d, "p.parquet"), Path(d, "b.jsonl")
        write_trace(Workload.from_requests(requests), a)
        convert(a, p)
        assert list(read_trace(p)) == requests
        convert(p, b)
        assert b.read_bytes() == a.read_bytes()


@PROPERTY
@given(workloads(), st.sampled_from([".jsonl", ".parquet"]), st.none() | st.text(max_size=4))
def test_convert_is_idempotent(requests, suffix, kind):
    with tempfile.TemporaryDirectory() as d:
        src, once, twice = Path(d, "src.jsonl"), Path(d, f"once{suffix}"), Path(d, f"twice{suffix}")
        write_trace(Workload.from_requests(requests), src)
        convert(src, once, ReadOptions(kind=kind))
        convert(once, twice, ReadOptions(kind=kind))
        if suffix == ".jsonl":
            assert twice.read_bytes() == once.read_bytes()
        assert list(read_trace(twice)) == list(read_trace(once))
        expected = requests if kind is None else [
            Request(r.id, r.arrival_s, r.input_tokens, r.output_tokens, kind, r.session_id, r.prefix_blocks,
                    r.block_tokens) for r in requests]
        assert list(read_trace(once)) == expected


@PROPERTY
@given(workloads())
def test_jsonl_lines_are_standard_json(requests):
    import json
    table = Workload.from_requests(requests).table
    lines = writers.jsonl_lines(table.to_batches()[0]).to_pylist()
    for line, r in zip(lines, requests):
        assert line.endswith("}\n") and "\n" not in line[:-1]
        obj = json.loads(line)
        assert obj["id"] == r.id and obj["arrival_s"] == r.arrival_s
        assert (obj["input_tokens"], obj["output_tokens"]) == (r.input_tokens, r.output_tokens)
        assert obj.get("kind") == r.kind and obj.get("session_id") == r.session_id
        assert obj.get("prefix_blocks") == (None if r.prefix_blocks is None else list(r.prefix_blocks))
        assert obj.get("block_tokens") == r.block_tokens


# --- the bundled traces are exactly what `replay convert` makes of the public files ---------------------------

@pytest.mark.parametrize("name,kind,bundled", [
    ("AzureLLMInferenceTrace_conv.csv", "chat", "chat.jsonl"),
    ("AzureLLMInferenceTrace_code.csv", "code", "code.jsonl"),
])
def test_bundled_traces_regenerate_byte_identical(shared_data, tmp_path, name, kind, bundled):
    out = tmp_path / bundled
    report = convert(shared_data / "azure2023" / name, out, ReadOptions(kind=kind))
    assert report.written == report.rows_read
    assert out.read_bytes() == (TRACES / bundled).read_bytes()


def test_bundled_traces_read():
    chat, code = read_trace(TRACES / "chat.jsonl"), read_trace(TRACES / "code.jsonl")
    assert (len(chat), len(code)) == (19_366, 8_819)
    assert {r.kind for r in chat} == {"chat"} and code[0].kind == "code"
    head = list(read_trace(CONV, ReadOptions(kind="chat")))
    assert list(chat)[:300] == head
