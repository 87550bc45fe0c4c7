"""Readers on real samples and on files following the published layouts; detection; located errors.

Expected values are computed here independently of the package (Python's csv, json and datetime modules),
never by calling the code under test a second way.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DATA, assert_located, aware_ns, azure2023_ns
from replay.trace import FORMATS, ReadOptions, ReadReport, Request, TraceError, Workload, read_trace, write_trace
from replay.trace.formats import detect
from replay.trace.formats.burstgpt import FAILED

def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def rows(workload: Workload) -> list[Request]:
    return list(workload)


# --- Azure 2023: the real samples --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["azure2023_conv_head.csv", "azure2023_code_head.csv"])
def test_azure2023_sample(name):
    path = DATA / name
    raw = path.read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")  # the published form: CRLF, no final newline
    table = csv_rows(path)
    assert table[0] == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
    body = table[1:]
    assert len(body) == 300

    report = ReadReport(str(path))
    w = read_trace(path, report=report)
    assert report.format == "azure" and report.rows_read == 300 and report.excluded == {}
    assert len(w) == 300 and w.timed
    got = rows(w)
    assert [r.id for r in got] == [str(i) for i in range(300)]
    assert [r.input_tokens for r in got] == [int(r[1]) for r in body]
    assert [r.output_tokens for r in got] == [int(r[2]) for r in body]
    ns = [azure2023_ns(r[0]) for r in body]
    expected = [(t - ns[0]) / 1e9 for t in ns]
    assert got[0].arrival_s == 0.0
    assert got[-1].arrival_s == expected[-1]
    assert [r.arrival_s for r in got] == expected
    assert all(r.kind is None and r.session_id is None and r.prefix_blocks is None for r in got)


def test_azure2023_conv_known_values():
    # the first two published rows: 18:15:46.6805900 and 18:15:50.9951690 -> 4.314579 s apart
    got = rows(read_trace(DATA / "azure2023_conv_head.csv", ReadOptions(limit=2)))
    assert got == [Request("0", 0.0, 374, 44), Request("1", 4.314579, 396, 109)]


# --- Azure 2024 form: zones, rows without a fraction, LF, final newline ------------------------------------

AZURE_2024 = [
    "2024-05-10 00:00:00.009930+00:00",
    "2024-05-10 00:00:01+00:00",
    "2024-05-10 00:00:01.5+00:00",
    "2024-05-09 23:00:02.000001-01:00",  # 00:00:02.000001 UTC
    "2024-05-10 01:30:03+01:30",        # 00:00:03 UTC
    "2024-05-10 00:00:03.250000+00:00",
]


def test_azure2024_form(write):
    body = "".join(f"{ts},{10 + i},{20 + i}\n" for i, ts in enumerate(AZURE_2024))
    path = write("week.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n" + body)
    got = rows(read_trace(path))
    ns = [aware_ns(ts) for ts in AZURE_2024]
    assert [r.arrival_s for r in got] == [(t - ns[0]) / 1e9 for t in ns]
    assert [r.arrival_s for r in got] == [0.0, 0.99007, 1.49007, 1.990071, 2.99007, 3.24007]
    assert [r.input_tokens for r in got] == [10 + i for i in range(len(AZURE_2024))]
    assert [r.output_tokens for r in got] == [20 + i for i in range(len(AZURE_2024))]


@pytest.mark.parametrize("first,other", [
    ("2024-05-10 00:00:00.009930+00:00", "2024-05-10 00:00:02.000000"),
    ("2023-11-16 18:15:46.6805900", "2023-11-16 18:15:47.0000000+00:00"),
    ("2023-11-16", "2023-11-16 18:15:47.0000000+00:00"),  # a date's "-16" is not a zone offset
])
def test_azure_mixed_zone_rows_are_an_error(write, first, other):
    path = write("mixed.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                              f"{first},1,2\n{first},1,2\n{other},1,2\n{first},1,2\n")
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert_located(exc.value, path, 4, "TIMESTAMP")
    assert "zone" in str(exc.value)


# --- BurstGPT ------------------------------------------------------------------------------------------------

BURST_OLD = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
BURST_NEW = "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
BURST_ROWS = [  # timestamp, session, elapsed, model, request, response
    ("5", "s-1", "1.5", "ChatGPT", "472", "18"),
    ("6.5", "s-2", "2", "GPT-4", "1000", "0"),     # failed
    ("7.25", "s-1", "0.25", "ChatGPT", "20", "30"),
    ("9", "s-3", "4", "GPT-4", "10", "0"),          # failed
    ("10", "", "1", "ChatGPT", "3", "4"),          # no session
]


def burst_old(write):
    lines = [f"{t},{m},{i},{o},{int(i) + int(o)},Conversation log\n" for t, _, _, m, i, o in BURST_ROWS]
    return write("burst_old.csv", BURST_OLD + "".join(lines))


def burst_new(write):
    lines = [f"{t},{s},{e},{m},{i},{o},{int(i) + int(o)},API log\n" for t, s, e, m, i, o in BURST_ROWS]
    return write("burst_new.csv", BURST_NEW + "".join(lines))


@pytest.mark.parametrize("layout", [burst_old, burst_new])
def test_burstgpt_layouts(write, layout):
    path = layout(write)
    report = ReadReport(str(path))
    got = rows(read_trace(path, report=report))
    assert report.format == "burstgpt"
    assert report.rows_read == 5
    assert report.excluded == {FAILED: 2}
    kept = [r for r in BURST_ROWS if r[5] != "0"]
    assert [r.id for r in got] == ["0", "2", "4"]  # data-row ids, stable across the exclusions
    assert [r.input_tokens for r in got] == [int(r[4]) for r in kept]
    assert [r.output_tokens for r in got] == [int(r[5]) for r in kept]
    assert [r.arrival_s for r in got] == [0.0, 2.25, 5.0]
    if layout is burst_new:
        assert [r.session_id for r in got] == ["s-1", "s-1", None]
    else:
        assert all(r.session_id is None for r in got)


def test_burstgpt_window_counts_from_the_first_row_even_if_it_failed(write):
    path = write("b.csv", BURST_OLD + "100,M,5,0,5,x\n101,M,5,6,11,x\n102,M,5,6,11,x\n103,M,5,6,11,x\n")
    got = rows(read_trace(path, ReadOptions(start_s=2)))
    assert [r.id for r in got] == ["2", "3"]
    assert [r.arrival_s for r in got] == [0.0, 1.0]


# --- Mooncake ------------------------------------------------------------------------------------------------

def test_mooncake_sample():
    path = DATA / "mooncake_head.jsonl"
    objs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(objs) == 200
    report = ReadReport(str(path))
    got = rows(read_trace(path, report=report))
    assert report.format == "mooncake"
    assert len(got) == 200
    assert [r.id for r in got] == [str(i) for i in range(200)]
    assert [r.input_tokens for r in got] == [o["input_length"] for o in objs]
    assert [r.output_tokens for r in got] == [o["output_length"] for o in objs]
    assert [r.prefix_blocks for r in got] == [tuple(o["hash_ids"]) for o in objs]
    assert all(r.block_tokens == 512 for r in got)
    t0 = objs[0]["timestamp"]
    for r, o in zip(got, objs):
        assert r.arrival_s == pytest.approx((o["timestamp"] - t0) / 1000, abs=1e-9)
    assert got[-1].arrival_s == pytest.approx((objs[-1]["timestamp"] - t0) / 1000, abs=1e-9)
    assert got[-1].arrival_s > 10  # really milliseconds, not seconds


def test_mooncake_without_hash_ids_and_blank_lines(write):
    path = write("m.jsonl", '{"timestamp": 1000, "input_length": 3, "output_length": 4}\n\n'
                            '{"timestamp": 1250.5, "input_length": 5, "output_length": 6, "hash_ids": [7, 7]}\n')
    got = rows(read_trace(path))
    assert got == [Request("0", 0.0, 3, 4), Request("1", 0.2505, 5, 6, prefix_blocks=(7, 7), block_tokens=512)]


# --- Vidur / Splitwise and length-only CSV -------------------------------------------------------------------

def test_splitwise_csv(write):
    path = write("requests.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n"
                                 "10.5,100,20\n10.5,200,30\n11.000000001,300,40\n20,1,1\n")
    got = rows(read_trace(path))
    assert detect(path).name == "splitwise"
    assert [r.input_tokens for r in got] == [100, 200, 300, 1]
    assert [r.output_tokens for r in got] == [20, 30, 40, 1]
    assert [r.arrival_s for r in got] == pytest.approx([0.0, 0.0, 0.500000001, 9.5], abs=1e-12)
    assert [r.id for r in got] == ["0", "1", "2", "3"]


def test_length_only_csv(write):
    path = write("lengths.csv", "num_prefill_tokens,num_decode_tokens,extra\n5,6,a\n7,8,b\n9,10,\n")
    w = read_trace(path)
    assert detect(path).name == "lengths"
    assert not w.timed
    assert rows(w) == [Request("0", None, 5, 6), Request("1", None, 7, 8), Request("2", None, 9, 10)]
    assert [r.id for r in rows(read_trace(path, ReadOptions(limit=2)))] == ["0", "1"]


@pytest.mark.parametrize("opts", [dict(start_s=0), dict(duration_s=5), dict(start_s=1, duration_s=2)])
def test_window_on_length_only_trace_is_an_error(write, opts):
    path = write("lengths.csv", "num_prefill_tokens,num_decode_tokens\n5,6\n7,8\n")
    with pytest.raises(TraceError, match="timed trace") as exc:
        read_trace(path, ReadOptions(**opts))
    assert "lengths.csv" in str(exc.value)


# --- canonical JSON Lines and Parquet ------------------------------------------------------------------------

CANONICAL = [
    Request("a", 0.0, 10, 2, kind="chat", session_id="s1", prefix_blocks=(1, 2), block_tokens=16),
    Request("b \"quoted\" \\ é", 0.25, 20, 3),
    Request("c", 1.5, 30, 4, kind="code", block_tokens=8),
    Request("d\n", 1.5, 40, 5, session_id="s\t2", prefix_blocks=(), block_tokens=16),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_canonical_write_read(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    write_trace(Workload.from_requests(CANONICAL), path)
    report = ReadReport(str(path))
    w = read_trace(path, report=report)
    assert report.format == ("jsonl" if suffix == ".jsonl" else "parquet")
    assert rows(w) == CANONICAL


def test_canonical_jsonl_text(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(Workload.from_requests(CANONICAL[:3]), path)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # final newline
    assert lines[0] == (b'{"id":"a","arrival_s":0,"input_tokens":10,"output_tokens":2,"kind":"chat",'
                        b'"session_id":"s1","prefix_blocks":[1,2],"block_tokens":16}')
    assert lines[1] == '{"id":"b \\"quoted\\" \\\\ é","arrival_s":0.25,"input_tokens":20,"output_tokens":3}'.encode()
    assert lines[2] == b'{"id":"c","arrival_s":1.5,"input_tokens":30,"output_tokens":4,"kind":"code","block_tokens":8}'
    for line, r in zip(lines[:3], CANONICAL[:3]):
        obj = json.loads(line)
        assert obj["id"] == r.id and obj["arrival_s"] == r.arrival_s


def test_canonical_untimed_jsonl(write):
    path = write("u.jsonl", '{"id":"x","arrival_s":null,"input_tokens":3,"output_tokens":4}\n'
                            '{"id":"y","arrival_s":null,"input_tokens":5,"output_tokens":6,"extra":1}\n')
    w = read_trace(path)
    assert not w.timed
    assert rows(w) == [Request("x", None, 3, 4), Request("y", None, 5, 6)]


def test_canonical_jsonl_is_rebased(write):
    path = write("r.jsonl", '{"id":"x","arrival_s":100.5,"input_tokens":3,"output_tokens":4}\n'
                            '{"id":"y","arrival_s":101,"input_tokens":5,"output_tokens":6}\n')
    assert [r.arrival_s for r in rows(read_trace(path))] == [0.0, 0.5]


def _pq(tmp_path, name, **cols):
    path = tmp_path / name
    n = len(next(iter(cols.values())))
    cols.setdefault("id", [str(i) for i in range(n)])
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_written_by_others(tmp_path):
    # a plain table with int32 counts and no optional columns still reads
    path = _pq(tmp_path, "x.parquet", id=["p", "q"], arrival_s=[2.0, 3.5],
               input_tokens=pa.array([1, 2], pa.int32()), output_tokens=pa.array([3, 4], pa.int32()))
    assert rows(read_trace(path)) == [Request("p", 0.0, 1, 3), Request("q", 1.5, 2, 4)]


# --- detection from content ----------------------------------------------------------------------------------

def test_detection_ignores_the_file_name(write, tmp_path):
    cases = {
        "azure": write("azure.jsonl", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1,2\n"),
        "burstgpt": write("burst.parquet", BURST_NEW + "1,s,1,M,2,3,5,x\n"),
        "mooncake": write("moon.csv", '{"timestamp": 1, "input_length": 2, "output_length": 3}\n'),
        "jsonl": write("canon.csv", '{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n'),
        "splitwise": write("vidur.json", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,2\n"),
        "lengths": write("sharegpt.jsonl", "num_prefill_tokens,num_decode_tokens,extra\n1,2,x\n"),
    }
    canon = tmp_path / "real.parquet"
    write_trace(Workload.from_requests(CANONICAL), canon)
    cases["parquet"] = write("parquet.csv", canon.read_bytes())
    assert set(cases) == set(FORMATS)
    for name, path in cases.items():
        assert detect(path).name == name, path
        report = ReadReport(str(path))
        assert len(read_trace(path, report=report)) >= 1
        assert report.format == name


def test_detection_with_bom_and_leading_blank_json_lines(write):
    bom = write("bom.csv", "\ufeffarrived_at,num_prefill_tokens,num_decode_tokens\n0,1,2\n")
    assert detect(bom).name == "splitwise"
    path = write("lead.jsonl", '\n  \n{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n')
    assert rows(read_trace(path)) == [Request("a", 0.0, 1, 1)]


@pytest.mark.parametrize("content,line", [
    ("when,prompt,completion\n1,2,3\n", 1),
    ('\n{"time": 1, "prompt": 2}\n', 2),
])
def test_unknown_content_suggests_format(write, content, line):
    path = write("mystery.csv", content)
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert "--format" in str(exc.value)
    assert_located(exc.value, path, line)


def test_explicit_format_overrides_detection(write):
    # canonical content read as Mooncake: the Mooncake reader names the field it misses
    path = write("c.jsonl", '{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n')
    with pytest.raises(TraceError) as exc:
        read_trace(path, ReadOptions(format="mooncake"))
    assert_located(exc.value, path, 1, "timestamp")


# --- bad inputs: every error names the file, the line and the field ----------------------------------------

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
T = ["2023-11-16 18:15:46.6805900", "2023-11-16 18:15:47.0000000", "2023-11-16 18:15:48.1000000",
     "2023-11-16 18:15:49.0000000"]


def azure_with(row3: str) -> str:
    """Header, two good rows, then `row3` on line 4, then one more good row."""
    return AZ + f"{T[0]},5,6\n{T[1]},7,8\n{row3}\n{T[3]},9,10\n"


BAD_CSV = [
    ("negative", azure_with(f"{T[2]},-5,6"), 4, "ContextTokens", "negative"),
    ("zero", azure_with(f"{T[2]},5,0"), 4, "GeneratedTokens", "zero"),
    ("fractional", azure_with(f"{T[2]},3.5,6"), 4, "ContextTokens", "fractional"),
    ("missing", azure_with(f"{T[2]},,6"), 4, "ContextTokens", "missing"),
    ("non-numeric", azure_with(f"{T[2]},5,lots"), 4, "GeneratedTokens", "'lots'"),
    ("python-only number", azure_with(f"{T[2]},1_000,6"), 4, "ContextTokens", "'1_000'"),
    ("too large", azure_with(f"{T[2]},99999999999999999999,6"), 4, "ContextTokens", "too large"),
    ("bad timestamp", azure_with("2023-11-16 25:61:00.0000000,5,6"), 4, "TIMESTAMP", "unparsable"),
    ("missing timestamp", azure_with(",5,6"), 4, "TIMESTAMP", "missing"),
    ("backwards", azure_with(f"{T[0]},5,6"), 4, "TIMESTAMP", "backwards"),
    ("too many fields", azure_with(f"{T[2]},5,6,7"), 4, None, "fields"),
    ("too few fields", azure_with(f"{T[2]},5"), 4, None, "fields"),
    ("vidur bad time", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\nsoon,1,1\n", 3, "arrived_at",
     "unparsable"),
    ("vidur nan time", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\nnan,1,1\n", 3, "arrived_at", "finite"),
    ("burst zero request", BURST_OLD + "0,M,5,5,10,x\n1,M,0,5,5,x\n", 3, "Request tokens", "zero"),
    ("burst backwards", BURST_OLD + "3,M,5,5,10,x\n4,M,5,0,5,x\n1,M,5,5,10,x\n", 4, "Timestamp", "backwards"),
    ("lengths negative", "num_prefill_tokens,num_decode_tokens\n1,1\n1,-1\n", 3, "num_decode_tokens", "negative"),
]


@pytest.mark.parametrize("name,content,line,field,words", BAD_CSV, ids=[c[0] for c in BAD_CSV])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_bad_csv(write, name, content, line, field, words, newline):
    path = write("bad.csv", content.replace("\n", newline))
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert_located(exc.value, path, line, field)
    assert words in str(exc.value)


def test_backwards_error_names_both_lines(write):
    path = write("back.csv", azure_with(f"{T[0]},5,6"))
    with pytest.raises(TraceError, match="before line 3"):
        read_trace(path)


def test_blank_lines_inside_csv_are_skipped_with_exact_lines(write):
    good = AZ + f"{T[0]},5,6\n\n{T[1]},7,8\r\n\n\n{T[2]},9,10\n\n"
    path = write("blank.csv", good)
    got = rows(read_trace(path))
    assert [r.input_tokens for r in got] == [5, 7, 9]
    bad = write("blank_bad.csv", good + f"{T[3]},x,1\n")
    with pytest.raises(TraceError) as exc:
        read_trace(bad)
    assert_located(exc.value, bad, 9, "ContextTokens")


def test_missing_column_is_named(write):
    path = write("cols.csv", "TIMESTAMP,ContextTokens,Generated\n2023-11-16 18:15:46.6805900,1,2\n")
    with pytest.raises(TraceError) as exc:
        read_trace(path, ReadOptions(format="azure"))
    assert_located(exc.value, path, 1, "GeneratedTokens")
    burst = write("burst.csv", "Timestamp,Model,Request tokens,Total tokens\n1,M,2,3\n")
    with pytest.raises(TraceError) as exc:
        read_trace(burst, ReadOptions(format="burstgpt"))
    assert_located(exc.value, burst, 1, "Response tokens")


CANON_OK = '{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n'
BAD_JSONL = [
    ("bad json", CANON_OK * 2 + '{"id":"c","arrival_s":1,\n', 3, None, "not valid JSON"),
    ("not an object", CANON_OK + "\n[1, 2]\n", 3, None, "JSON object"),
    ("missing input_tokens", CANON_OK + '{"id":"b","arrival_s":1,"output_tokens":1}\n', 2, "input_tokens", "missing"),
    ("string tokens", CANON_OK + '{"id":"b","arrival_s":1,"input_tokens":"5","output_tokens":1}\n', 2,
     "input_tokens", "string"),
    ("fractional", CANON_OK + '{"id":"b","arrival_s":1,"input_tokens":1,"output_tokens":2.5}\n', 2,
     "output_tokens", "fractional"),
    ("zero", CANON_OK + '{"id":"b","arrival_s":1,"input_tokens":0,"output_tokens":2}\n', 2, "input_tokens", "zero"),
    ("huge", CANON_OK + '{"id":"b","arrival_s":1,"input_tokens":100000000000000000000000,"output_tokens":2}\n', 2,
     "input_tokens", "too large"),
    ("huge time", CANON_OK + '{"id":"b","arrival_s":1e300,"input_tokens":1,"output_tokens":2}\n', 2,
     "arrival_s", "range"),
    ("backwards", '{"id":"a","arrival_s":5,"input_tokens":1,"output_tokens":1}\n' + CANON_OK, 2, "arrival_s",
     "backwards"),
    ("null id", CANON_OK + '{"id":null,"arrival_s":1,"input_tokens":1,"output_tokens":2}\n', 2, "id", "string"),
    ("timed then untimed", CANON_OK + '{"id":"b","arrival_s":null,"input_tokens":1,"output_tokens":2}\n', 2,
     "arrival_s", "arrival time"),
    ("blocks without size", CANON_OK + '{"id":"b","arrival_s":1,"input_tokens":1,"output_tokens":2,'
     '"prefix_blocks":[1]}\n', 2, "block_tokens", "missing"),
    ("mooncake negative", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
     '{"timestamp": 1, "input_length": -5, "output_length": 1}\n', 2, "input_length", "negative"),
    ("mooncake ms backwards", '{"timestamp": 10, "input_length": 5, "output_length": 1}\n'
     '{"timestamp": 9, "input_length": 5, "output_length": 1}\n', 2, "timestamp", "backwards"),
]


@pytest.mark.parametrize("name,content,line,field,words", BAD_JSONL, ids=[c[0] for c in BAD_JSONL])
def test_bad_jsonl(write, name, content, line, field, words):
    path = write("bad.jsonl", content)
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert_located(exc.value, path, line, field)
    assert words in str(exc.value)


def test_missing_input_tokens_on_the_first_line_with_format(write):
    path = write("c.jsonl", '{"id":"a","arrival_s":0,"output_tokens":1}\n')
    with pytest.raises(TraceError) as exc:
        read_trace(path, ReadOptions(format="jsonl"))
    assert_located(exc.value, path, 1, "input_tokens")


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\r\n\t\n"], ids=["zero-byte", "newline", "blank"])
@pytest.mark.parametrize("fmt", [None, "azure", "jsonl", "mooncake", "lengths"])
def test_empty_files(write, content, fmt):
    path = write("empty.csv", content)
    with pytest.raises(TraceError, match="empty") as exc:
        read_trace(path, ReadOptions(format=fmt))
    assert "empty.csv" in str(exc.value)


@pytest.mark.parametrize("header", [AZ, BURST_NEW, "arrived_at,num_prefill_tokens,num_decode_tokens\r\n",
                                    "num_prefill_tokens,num_decode_tokens"])
def test_header_only_csv(write, header):
    path = write("header.csv", header + "\n\n")
    with pytest.raises(TraceError, match="no requests"):
        read_trace(path)


def test_all_failed_burstgpt_has_no_requests(write):
    path = write("b.csv", BURST_OLD + "1,M,5,0,5,x\n")
    with pytest.raises(TraceError, match="no requests"):
        read_trace(path)


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="directory"):
        read_trace(tmp_path)


# --- Parquet errors name the row -----------------------------------------------------------------------------

def test_parquet_errors_name_the_row(tmp_path):
    cases = [
        (dict(arrival_s=[0.0, 1.0, 2.0], input_tokens=[1.0, 2.5, 3.0], output_tokens=[1, 1, 1]), 2, "input_tokens"),
        (dict(arrival_s=[0.0, 1.0, 2.0], input_tokens=[1, None, 3], output_tokens=[1, 1, 1]), 2, "input_tokens"),
        (dict(arrival_s=[0.0, 1.0, 2.0], input_tokens=[1, 2, 3], output_tokens=[1, 1, -1]), 3, "output_tokens"),
        (dict(arrival_s=[0.0, 1.0, 0.5], input_tokens=[1, 2, 3], output_tokens=[1, 1, 1]), 3, "arrival_s"),
        (dict(arrival_s=[0.0, None, 2.0], input_tokens=[1, 2, 3], output_tokens=[1, 1, 1]), 2, "arrival_s"),
        (dict(arrival_s=pa.array([None, None, 2.0], pa.float64()), input_tokens=[1, 2, 3], output_tokens=[1, 1, 1]),
         1, "arrival_s"),
        (dict(arrival_s=[0.0, float("nan"), 2.0], input_tokens=[1, 2, 3], output_tokens=[1, 1, 1]), 2, "arrival_s"),
        # what the JSON Lines reader would refuse after a conversion is refused here too
        (dict(id=["a", "", "c"], arrival_s=[0.0, 1.0, 2.0], input_tokens=[1, 2, 3], output_tokens=[1, 1, 1]), 2, "id"),
        (dict(arrival_s=[0.0, 1.0, 2.0], input_tokens=[1, 2, 3], output_tokens=[1, 1, 1],
              prefix_blocks=[[1], None, [2]], block_tokens=[4, None, None]), 3, "block_tokens"),
        (dict(arrival_s=[0.0, 1.0, 2.0], input_tokens=[1, 2, 3], output_tokens=[1, 1, 1],
              block_tokens=[4, 0, None]), 2, "block_tokens"),
        (dict(arrival_s=[0.0, 1.0, 2.0], input_tokens=[1, 2, 3], output_tokens=[1, 1, 1],
              prefix_blocks=[[1], [2, None], [3]], block_tokens=[4, 4, 4]), 2, "prefix_blocks"),
    ]
    for k, (cols, row, field) in enumerate(cases):
        path = _pq(tmp_path, f"bad{k}.parquet", **cols)
        with pytest.raises(TraceError) as exc:
            read_trace(path)
        assert_located(exc.value, path, row, field, unit="row")


def test_parquet_missing_column_and_garbage(tmp_path, write):
    path = _pq(tmp_path, "m.parquet", arrival_s=[0.0], output_tokens=[1])
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert_located(exc.value, path, None, "input_tokens")
    typed = _pq(tmp_path, "t.parquet", arrival_s=["0", "soon"], input_tokens=[1, 1], output_tokens=[1, 1])
    with pytest.raises(TraceError) as exc:
        read_trace(typed)
    assert_located(exc.value, typed, None, "arrival_s")
    listed = _pq(tmp_path, "l.parquet", id=[[1], [2]], arrival_s=[0.0, 1.0], input_tokens=[1, 1], output_tokens=[1, 1])
    with pytest.raises(TraceError) as exc:
        read_trace(listed)
    assert_located(exc.value, listed, None, "id")
    garbage = write("g.parquet", b"PAR1 this is not parquet")
    with pytest.raises(TraceError, match="Parquet"):
        read_trace(garbage)


# --- the full public files -----------------------------------------------------------------------------------

def _median(values) -> float:
    return float(np.median(np.asarray(values)))


@pytest.mark.parametrize("name,count,inp,out", [
    ("AzureLLMInferenceTrace_conv.csv", 19_366, (2, 1020, 14050), (7, 129, 1000)),
    ("AzureLLMInferenceTrace_code.csv", 8_819, (3, 1469, 7437), (6, 13, 1899)),
])
def test_full_azure2023(shared_data, name, count, inp, out):
    path = shared_data / "azure2023" / name
    w = read_trace(path)
    assert len(w) == count and w.timed
    assert (int(w.input_tokens.min()), _median(w.input_tokens), int(w.input_tokens.max())) == inp
    assert (int(w.output_tokens.min()), _median(w.output_tokens), int(w.output_tokens.max())) == out
    # the last arrival, computed independently from the CSV text
    body = csv_rows(path)[1:]
    assert len(body) == count
    assert w[-1].arrival_s == (azure2023_ns(body[-1][0]) - azure2023_ns(body[0][0])) / 1e9
    assert 3400 < w[-1].arrival_s < 3600  # one hour


def test_full_mooncake(shared_data):
    path = shared_data / "mooncake" / "synthetic_trace.jsonl"
    w = read_trace(path)
    assert len(w) == 3_993
    objs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(objs) == 3_993
    assert w[-1].arrival_s == pytest.approx((objs[-1]["timestamp"] - objs[0]["timestamp"]) / 1000, abs=1e-9)
    assert all(len(o["hash_ids"]) == -(-o["input_length"] // 512) for o in objs[:50])
    assert w[17].prefix_blocks == tuple(objs[17]["hash_ids"])
