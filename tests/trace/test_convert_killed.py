"""`replay convert` killed mid-write: SIGTERM leaves no `.part`; after SIGKILL the next convert removes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import leftovers
from replay.trace import convert, read_trace

REPLAY = Path(sys.executable).with_name("replay")
ROWS = 3_000_000  # big enough that the convert is still writing when it is killed
DEADLINE_S = 60


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("big") / "big.csv"
    with open(src, "w") as f:
        f.write("arrived_at,num_prefill_tokens,num_decode_tokens\n")
        step = 100_000
        for start in range(0, ROWS, step):
            f.write("".join(f"{i / 10},{1 + i % 997},{1 + i % 89}\n" for i in range(start, start + step)))
    return src


def _parts(directory: Path) -> list[str]:
    return [e for e in leftovers(directory) if e.endswith(".part")]


def _start_and_wait_for_writing(src: Path, dst: Path) -> subprocess.Popen:
    """A real `replay convert`, returned once its `.part` holds bytes (it is mid-write)."""
    proc = subprocess.Popen([str(REPLAY), "convert", str(src), str(dst)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        parts = _parts(dst.parent)
        if parts and os.path.getsize(dst.parent / parts[0]) > 0:
            return proc
        assert proc.poll() is None, f"convert ended before it was killed: {proc.communicate()}"
        time.sleep(0.005)
    proc.kill()
    pytest.fail("convert never started writing")


@pytest.mark.skipif(not REPLAY.exists(), reason="the replay console script is not installed beside python")
def test_sigterm_removes_the_part_file(tmp_path, big_source):
    dst = tmp_path / "out.jsonl"
    proc = _start_and_wait_for_writing(big_source, dst)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode != 0
    assert b"Traceback" not in err, err.decode()
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not REPLAY.exists(), reason="the replay console script is not installed beside python")
def test_next_convert_removes_a_part_left_by_sigkill(tmp_path, big_source):
    dst = tmp_path / "out.jsonl"
    proc = _start_and_wait_for_writing(big_source, dst)
    proc.kill()
    proc.wait(timeout=DEADLINE_S)
    stale = _parts(tmp_path)
    assert len(stale) == 1  # SIGKILL cannot be caught: the dead writer's .part is there
    small = tmp_path / "small.csv"
    small.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,3\n1,7,2\n")
    done = subprocess.run([str(REPLAY), "convert", str(small), str(dst)], capture_output=True, text=True,
                          timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert stale[0] in done.stderr and "removed" in done.stderr  # it says so
    assert leftovers(tmp_path) == ["out.jsonl", "small.csv"]
    assert len(read_trace(dst)) == 2


def test_a_live_writers_part_is_left_alone(tmp_path):
    dst = tmp_path / "out.jsonl"
    live = tmp_path / f".out.jsonl.{os.getpid()}.abc123.part"   # this process: alive
    other = tmp_path / ".out.jsonl.5.jsonl.999999999.x.part"     # not this destination's form
    live.write_text("x")
    other.write_text("x")
    src = tmp_path / "s.csv"
    src.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,3\n")
    report = convert(src, dst)
    assert report.warnings == ()
    assert sorted(leftovers(tmp_path)) == sorted([live.name, other.name, "out.jsonl", "s.csv"])
