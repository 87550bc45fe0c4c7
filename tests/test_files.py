"""The shared readers: one-line errors naming the file and the line, and the cut-short last line of an
interrupted run."""

from __future__ import annotations

import pytest

from replay.files import read_jsonl, read_yaml


def test_read_yaml_errors_are_one_line_with_the_place(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\nb: [2, 3]\n")
    assert read_yaml(good) == {"a": 1, "b": [2, 3]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [2, 3\nc: 4\n")
    with pytest.raises(ValueError) as err:
        read_yaml(bad)
    text = str(err.value)
    assert text.startswith(f"{bad}: not valid YAML (line ") and "\n" not in text
    with pytest.raises(ValueError, match="cannot read"):
        read_yaml(tmp_path / "missing.yaml")


def test_read_jsonl_names_the_line_and_cuts_an_interrupted_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "1", "x": 1}\n\n{"id": "2", "x": 2}\n{"id": "3", "x"')
    assert [r["id"] for r in read_jsonl(path, cut_last=True)] == ["1", "2"]
    assert path.read_bytes().endswith(b'"x": 2}\n')                # cut from the file, so appending goes on
    path.write_text('{"id": "1", "x": 1}\n{"id": "2"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: missing field 'x'"):
        read_jsonl(path, required=("id", "x"))
    path.write_text('{"id": "1"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)
    path.write_text('{"id": "1"}\n{"id": \n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not a JSON record"):
        read_jsonl(path)
    path.write_bytes(b'{"id": "1"}\n{"id": "\xff"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not UTF-8 text"):
        read_jsonl(path)
    with pytest.raises(ValueError, match=r"missing.jsonl: cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")
