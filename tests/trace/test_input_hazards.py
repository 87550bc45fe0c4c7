"""Input that public traces really come in: compressed files, huge fields, non-UTF-8 bytes, long bad values.

Each must read transparently or fail with one line naming the file, the line and the field, never a
traceback or a 100,000-character echo.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from conftest import DATA, assert_located
from replay.cli import main
from replay.trace import ReadOptions, TraceError, convert, read_trace, write_trace
from replay.trace.formats import csvfile, detect

AZURE = DATA / "azure2023_conv_head.csv"
VIDUR = "arrived_at,num_prefill_tokens,num_decode_tokens"
MAX_ERROR_CHARS = 400  # an error line quotes at most a cut value, whatever the input holds


def compress(raw: bytes, codec: str) -> bytes:
    """gzip with Python's own module, zstd with pyarrow: written independently of the reader under test."""
    return gzip.compress(raw) if codec == "gzip" else pa.compress(raw, codec, asbytes=True)


def canonical(w) -> list:
    return w.table.to_pylist()


# --- compressed input ---------------------------------------------------------------------------------------

def _plain_sources(tmp_path: Path) -> dict[str, Path]:
    jsonl = tmp_path / "plain.jsonl"
    write_trace(read_trace(AZURE, ReadOptions(kind="chat")), jsonl)
    parquet = tmp_path / "plain.parquet"
    write_trace(read_trace(AZURE), parquet)
    mooncake = tmp_path / "plain-mooncake.jsonl"
    mooncake.write_text("".join(json.dumps({"timestamp": 10 * i, "input_length": 5 + i, "output_length": 3,
                                            "hash_ids": [1, i]}) + "\n" for i in range(50)))
    return {"azure": AZURE, "jsonl": jsonl, "parquet": parquet, "mooncake": mooncake}


@pytest.mark.parametrize("codec,suffix", [("gzip", ".gz"), ("zstd", ".zst")])
@pytest.mark.parametrize("fmt", ["azure", "jsonl", "parquet", "mooncake"])
def test_compressed_reads_like_plain(tmp_path, codec, suffix, fmt):
    plain = _plain_sources(tmp_path)[fmt]
    packed = tmp_path / f"trace{plain.suffix}{suffix}"
    packed.write_bytes(compress(plain.read_bytes(), codec))
    assert detect(packed).name == fmt
    assert canonical(read_trace(packed)) == canonical(read_trace(plain))


def test_compression_is_told_from_content_not_name(tmp_path):
    odd = tmp_path / "trace.dat"  # gzip inside, no .gz in the name
    odd.write_bytes(gzip.compress(AZURE.read_bytes()))
    assert detect(odd).name == "azure"
    assert canonical(read_trace(odd)) == canonical(read_trace(AZURE))


def test_compressed_csv_error_in_a_late_block_names_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(csvfile, "BLOCK_BYTES", 4096)  # many blocks: the text fallback resumes mid-file
    rows = [f"{i},{10 + i % 7},{3 + i % 5}" for i in range(3000)]
    rows[2500] = "2500,oops,3"
    src = tmp_path / "late.csv.gz"
    src.write_bytes(gzip.compress((VIDUR + "\n" + "\n".join(rows) + "\n").encode()))
    with pytest.raises(TraceError) as err:
        read_trace(src)
    assert_located(err.value, src, 2502, "num_prefill_tokens")


def test_compressed_many_blocks_equal_plain(tmp_path, monkeypatch):
    monkeypatch.setattr(csvfile, "BLOCK_BYTES", 4096)
    text = VIDUR + "\n" + "".join(f"{i},{10 + i % 7},{3 + i % 5}\n" for i in range(3000))
    plain = tmp_path / "many.csv"
    plain.write_text(text)
    packed = tmp_path / "many.csv.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    assert canonical(read_trace(packed)) == canonical(read_trace(plain))


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_every_command_reads_compressed(tmp_path, suffix):
    src = tmp_path / f"trace.csv{suffix}"
    src.write_bytes(compress(AZURE.read_bytes(), "gzip" if suffix == ".gz" else "zstd"))
    runner = CliRunner()
    out = tmp_path / "out.jsonl"
    for args in (["convert", str(src), str(out)], ["stats", str(src)], ["bins", str(src)],
                 ["synth", str(tmp_path / "s.jsonl"), "--like", str(src), "--requests", "20", "--rate", "2"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    assert canonical(read_trace(out)) == canonical(read_trace(AZURE))


def test_truncated_gzip_is_one_located_line(tmp_path):
    src = tmp_path / "cut.csv.gz"
    src.write_bytes(gzip.compress(AZURE.read_bytes())[:-40])
    result = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and not isinstance(result.exception, (AssertionError, TypeError)), result.output
    assert "Traceback" not in result.output and str(src) in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


# --- fields over Python's csv limit (128 KiB) and pyarrow's block ---------------------------------------------

@pytest.mark.parametrize("size", [200_000, 3_000_000])
def test_huge_field_in_an_unused_column_is_read(tmp_path, size):
    src = tmp_path / "prompts.csv"
    src.write_text(f"{VIDUR},prompt\n0,5,3,short\n1.5,7,2,{'p' * size}\n2,9,4,x\n")
    w = read_trace(src)
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in w] == [(0.0, 5, 3), (1.5, 7, 2), (2.0, 9, 4)]


BIG = "x" * 200_000
HUGE_FIELDS = {  # name: (content, line, field)
    "azure-first-timestamp.csv": (f"TIMESTAMP,ContextTokens,GeneratedTokens\n{BIG},1,1\n", 2, "TIMESTAMP"),
    "count.csv": (f"{VIDUR}\n0,1,1\n1,{BIG},1\n", 3, "num_prefill_tokens"),
    "block-size.csv": (f"{VIDUR}\n0,1,1\n1,{'z' * 3_000_000},1\n", 3, "num_prefill_tokens"),
    "fields.csv": (f"{VIDUR}\n0,1,1\n1,{BIG},1,1\n", 3, None),
    "header.csv": (f"{VIDUR},{BIG}\n0,1,1,1\n1,{BIG},1,1\n", 3, "num_prefill_tokens"),
}


@pytest.mark.parametrize("name", sorted(HUGE_FIELDS))
def test_huge_bad_field_is_one_short_located_line(tmp_path, name):
    content, line, field = HUGE_FIELDS[name]
    src = tmp_path / name
    src.write_text(content)
    with pytest.raises(TraceError) as err:
        read_trace(src)
    assert_located(err.value, src, line, field)
    assert len(str(err.value)) < MAX_ERROR_CHARS and "\n" not in str(err.value)


# --- long bad values are cut in the error line -----------------------------------------------------------------

LONG = "y" * 100_000
LONG_BAD = {  # name: (content, line, field)
    "vidur.csv": (f"{VIDUR}\n0,1,1\n1,{LONG},1\n", 3, "num_prefill_tokens"),
    "time.csv": (f"{VIDUR}\n0,1,1\n{LONG},1,1\n", 3, "arrived_at"),
    "azure.csv": (f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1,1\n{LONG},1,1\n",
                  3, "TIMESTAMP"),
    "canonical.jsonl": ('{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n'
                        + json.dumps({"id": "b", "arrival_s": 1, "input_tokens": LONG, "output_tokens": 1}) + "\n",
                        2, "input_tokens"),
    "kind.jsonl": (json.dumps({"id": "b", "arrival_s": 1, "input_tokens": 1, "output_tokens": 1,
                               "kind": [LONG]}) + "\n", 1, "kind"),
}


@pytest.mark.parametrize("name", sorted(LONG_BAD))
def test_long_bad_value_is_cut(tmp_path, name):
    content, line, field = LONG_BAD[name]
    src = tmp_path / name
    src.write_text(content)
    with pytest.raises(TraceError) as err:
        read_trace(src)
    text = str(err.value)
    assert_located(err.value, src, line, field)
    assert len(text) < MAX_ERROR_CHARS, text[:300]
    assert "yyyyyyyy" in text and "100,0" in text  # a prefix of the value, and how long it really was


# --- non-UTF-8 bytes -------------------------------------------------------------------------------------------

NOT_UTF8 = {  # name: (content, line, field)
    "typed.csv": (VIDUR.encode() + b"\n0,1,1\n1,2,1\n2,\xe9\xff,1\n", 4, "num_prefill_tokens"),
    "late.csv": (VIDUR.encode() + b"\n" + b"".join(b"%d,1,1\n" % i for i in range(5000))
                 + b"5000,1,1\xe9\n", 5002, "num_decode_tokens"),
    "session.csv": (b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type,Session ID\n"
                    b"0,m,1,2,3,t,s1\n1,m,1,2,3,t,s\xe92\n", 3, "Session ID"),
    "canonical.jsonl": (b'{"id":"a","arrival_s":0,"input_tokens":1,"output_tokens":1}\n'
                        b'{"id":"\xe9","arrival_s":1,"input_tokens":1,"output_tokens":1}\n', 2, None),
}


@pytest.mark.parametrize("name", sorted(NOT_UTF8))
@pytest.mark.parametrize("packed", [False, True])
def test_non_utf8_names_file_and_line(tmp_path, name, packed):
    content, line, field = NOT_UTF8[name]
    src = tmp_path / (name + (".gz" if packed else ""))
    src.write_bytes(gzip.compress(content) if packed else content)
    with pytest.raises(TraceError) as err:
        convert(src, tmp_path / "out.jsonl")
    assert_located(err.value, src, line, field)
    assert "UTF-8" in str(err.value)
