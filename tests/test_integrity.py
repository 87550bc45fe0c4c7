"""A run directory you can trust (issue 12): one writer at a time, a resume that refuses an edited run, whole
files written atomically. Faults are injected as a user meets them: a second `replay run --resume` process at
the same time, an edited config.yaml or trace, a full disk at the moment a file is flushed (``os.fsync`` raising
ENOSPC: this machine has no small filesystem to fill; the boundary is the one call every whole-file write makes).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TRACES, interrupt_after

from replay.config import RunConfig
from replay.files import write_atomic
from replay.integrity import LOCK_FILE, RunLock
from replay.run import execute, resume


def interrupted(tmp_path, monkeypatch, after: int = 50, trace: Path | None = None, limit: int | None = 300,
                **options) -> Path:
    config = RunConfig(trace=str(trace or TRACES / "chat.jsonl"), limit=limit, out=str(tmp_path / "run"), **options)
    interrupt_after(monkeypatch, after, lambda: execute(config, progress=False))
    return Path(config.out)


def ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (out / "requests.jsonl").read_text().splitlines()]


# --- the lock ------------------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    with RunLock(tmp_path, "resume"):
        with pytest.raises(ValueError, match=rf"in use by another replay resume \(pid {os.getpid()} on "):
            with RunLock(tmp_path):
                pass
        info = json.loads((tmp_path / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["what"] == "resume"
    with RunLock(tmp_path):         # released on exit: the next one gets it
        pass


def test_a_lock_dies_with_its_holder_even_by_sigkill(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from replay.integrity import RunLock\n"
        f"lock = RunLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=f"pid {holder.pid}"):
        RunLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with RunLock(tmp_path):
        pass


def test_two_resumes_at_once_one_is_refused_and_no_request_is_served_twice(tmp_path, monkeypatch):
    """Two `replay run --resume DIR` processes started together: one goes on, the other stops in one line
    naming it; the directory ends with each request once (the issue saw 15,479 duplicate ids)."""
    out = interrupted(tmp_path, monkeypatch, after=20, limit=None)  # the whole hour: the resume lasts seconds
    cmd = [sys.executable, "-m", "replay", "run", "--resume", str(out), "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, _, err in results if code == 1)
    assert "in use by another replay resume" in refused and refused.count("\n") == 1
    got = ids(out)
    assert len(got) == len(set(got)) == 19366


# --- an edited run -------------------------------------------------------------------------------------------

def test_resume_refuses_an_edited_config_naming_the_key_and_goes_on_with_force(tmp_path, monkeypatch):
    out = interrupted(tmp_path, monkeypatch)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["model"], cfg["gpu"] = "llama-3.2-3b", "a100-80gb"
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ValueError, match=r"key 'gpu' changed.*key 'model' changed.*--force"):
        resume(out, progress=False)
    assert len(ids(out)) == 50                                     # nothing touched
    said = []
    result = resume(out, progress=False, force=True, say=said.append)
    assert result.summary.finished == 300 and any("key 'model' changed" in s for s in said)


def test_resume_refuses_a_trace_that_changed(tmp_path, monkeypatch):
    trace = tmp_path / "chat.jsonl"
    trace.write_bytes((TRACES / "chat.jsonl").read_bytes())
    out = interrupted(tmp_path, monkeypatch, trace=trace)
    with open(trace, "a") as f:
        f.write(json.dumps({"id": "extra", "arrival_s": 5.0, "input_tokens": 10, "output_tokens": 5}) + "\n")
    with pytest.raises(ValueError, match="not the file the run started with"):
        resume(out, progress=False)
    trace.unlink()
    with pytest.raises(ValueError, match="is gone"):
        resume(out, progress=False)


def test_resume_from_another_directory_finds_a_trace_given_relative(tmp_path, monkeypatch):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "chat.jsonl").write_bytes((TRACES / "chat.jsonl").read_bytes())
    monkeypatch.chdir(tmp_path)
    config = RunConfig(trace="traces/chat.jsonl", limit=100, out="run")
    interrupt_after(monkeypatch, 30, lambda: execute(config, progress=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = resume(tmp_path / "run", progress=False)
    assert result.summary.finished == 100


# --- whole files atomically ----------------------------------------------------------------------------------

def disk_full_on(monkeypatch, name: str) -> None:
    """Every flush of a whole file called ``name`` fails as a full disk would (ENOSPC)."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_write_atomic_leaves_the_old_file_whole_when_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_atomic(path, "old\n")
    disk_full_on(monkeypatch, "summary.json")
    with pytest.raises(OSError, match=f"{path}: cannot write: No space left on device"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_full_disk_at_summary_json_leaves_a_run_that_resumes_not_one_called_complete(tmp_path, monkeypatch):
    """The issue's case: a 0-byte summary.json made --resume say the run was complete and report fail."""
    config = RunConfig(trace=str(TRACES / "code.jsonl"), limit=40, out=str(tmp_path / "run"))
    disk_full_on(monkeypatch, "summary.json")
    with pytest.raises(OSError, match="summary.json: cannot write"):
        execute(config, progress=False)
    out = Path(config.out)
    assert not (out / "summary.json").exists() and len(ids(out)) == 40
    monkeypatch.undo()
    result = resume(out, progress=False)
    assert result.summary.finished == 40 and json.loads((out / "summary.json").read_text())


# --- records: steps before the requests that name them; a full disk named ------------------------------------

def step_row(i: int) -> tuple:
    from replay.server import STEP_FIELDS
    row = dict.fromkeys(STEP_FIELDS, 0)
    row.update(replica=0, step=i, start_s=i * 0.01, end_s=i * 0.01 + 0.01, duration_s=0.01, decode_tokens=1,
               num_seqs=1, sampled_seqs=1, energy_j=None)
    return tuple(row[f] for f in STEP_FIELDS)


def on_disk(out: Path) -> tuple[set[int], list[dict]]:
    steps = {json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()}
    return steps, [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


def test_a_request_reaches_the_disk_only_after_the_steps_it_names(tmp_path):
    """What a SIGKILL finds on disk at any moment: here the moment the requests' buffer fills (1 MiB of long
    records) while the steps they name are still in the steps file's buffer."""
    from replay.server import Recorder
    rec = Recorder(tmp_path, flush_s=1e9)         # no timed flush: only what the buffers do
    n = 0
    while (tmp_path / "requests.jsonl").stat().st_size == 0 and n < 2000:
        rec.step(step_row(n))
        rec.request({"id": str(n), "token_steps": [[n, 1]], "padding": "x" * 4000})
        n += 1
    steps, requests = on_disk(tmp_path)
    assert requests, "the requests never reached the disk"
    assert all(r["token_steps"][0][0] in steps for r in requests)
    rec.close()
    steps, requests = on_disk(tmp_path)
    assert len(requests) == n and len(steps) == n


def test_a_full_disk_mid_run_names_the_file(tmp_path):
    """A kernel full disk (/dev/full answers every write with ENOSPC) under the steps file."""
    from replay.server import Recorder
    rec = Recorder(tmp_path, flush_s=1e9)
    rec._steps_file.close()
    rec._steps_file = rec._files[0] = open("/dev/full", "w", encoding="utf-8", buffering=1 << 20)
    rec.step(step_row(0))
    rec.request({"id": "0", "token_steps": [[0, 1]]})
    with pytest.raises(OSError, match="/dev/full: cannot write: No space left on device.*--resume"):
        rec.close()
    assert (tmp_path / "requests.jsonl").read_text() == ""      # never ahead of the steps it names


def test_a_duplicate_request_id_is_refused_by_every_command_naming_both_lines(tmp_path):
    """Before: convert, stats and bins passed it, run failed naming nothing and left a directory behind."""
    from click.testing import CliRunner

    from replay.cli import main
    trace = tmp_path / "dup.jsonl"
    trace.write_text("".join(json.dumps({"id": i, "arrival_s": t, "input_tokens": 5, "output_tokens": 3}) + "\n"
                             for t, i in enumerate(["a", "b", "a"])))
    for args in (["stats", trace], ["bins", trace], ["convert", trace, tmp_path / "c.jsonl"],
                 ["run", trace, "--engine", "sim", "--out", tmp_path / "run"]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.strip() == (f"Error: {trace}:3: field 'id': request id 'a' is already on line 1; every "
                                         f"request needs an id of its own")
    assert not (tmp_path / "run").exists() and not (tmp_path / "c.jsonl").exists()


def test_a_resumed_run_says_it_resumed_and_what_it_carried_over(tmp_path, monkeypatch):
    out = interrupted(tmp_path, monkeypatch, after=70)
    said = []
    resume(out, progress=False, say=said.append)
    assert any(s.startswith(f"resuming {out}: 70 finished requests and ") and s.endswith("230 requests to serve")
               for s in said), said
    doc = json.loads((out / "summary.json").read_text())
    assert doc["resumed"]["requests_carried_over"] == 70 and doc["resumed"]["requests_served_now"] == 230
    whole = json.loads((Path(execute(RunConfig(trace=str(TRACES / "chat.jsonl"), limit=300, out=str(tmp_path / "w")),
                                      progress=False).out) / "summary.json").read_text())
    assert "resumed" not in whole


def test_resume_drops_requests_naming_steps_never_written_and_serves_them_again(tmp_path, monkeypatch):
    """A directory where requests.jsonl got ahead of steps.jsonl (written before requests waited for their steps,
    or steps cut short): the resume drops the requests that name missing steps, says so, and serves them again."""
    out = interrupted(tmp_path, monkeypatch, after=120)
    steps = (out / "steps.jsonl").read_text().splitlines()
    (out / "steps.jsonl").write_text("\n".join(steps[: len(steps) // 2]) + "\n")
    last = max(json.loads(line)["step"] for line in steps[: len(steps) // 2])
    ahead = [r for r in map(json.loads, (out / "requests.jsonl").read_text().splitlines())
             if max(a + n - 1 for a, n in r["token_steps"]) > last]
    assert ahead
    said = []
    result = resume(out, progress=False, say=said.append)
    assert any(f"{len(ahead)} finished requests named steps that were never written" in s for s in said), said
    got = ids(out)
    assert len(got) == len(set(got)) == 300 and result.summary.finished == 300
    step_ids = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert step_ids == list(range(len(step_ids)))           # the numbering goes on from the last step written


@pytest.mark.parametrize("signal_name,after_s", [("SIGKILL", 2.5), ("SIGTERM", 3.5), ("SIGINT", 4.5)])
def test_a_run_killed_at_any_moment_is_consistent_and_resumes_to_every_request(tmp_path, signal_name, after_s):
    """A real `replay run` process (the chat hour on the simulator) stopped by a signal mid-run: what is on disk
    names only steps on disk, nothing is called complete, and a resume serves every request once."""
    import signal
    import time
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "replay", "run", str(TRACES / "chat.jsonl"), "--engine", "sim", "--out", str(out),
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after_s)
    proc.send_signal(getattr(signal, signal_name))
    proc.wait(timeout=60)
    if (out / "summary.json").exists():
        pytest.skip(f"the run finished before {after_s} s on this machine: nothing to interrupt")
    steps, requests = on_disk(out)
    by_replica = {}
    for line in (out / "steps.jsonl").read_text().splitlines():
        s = json.loads(line)
        by_replica[s["replica"]] = max(by_replica.get(s["replica"], -1), s["step"])
    for r in requests:
        assert max(a + n - 1 for a, n in r["token_steps"]) <= by_replica.get(r["replica"], -1), r["id"]
    said = []
    result = resume(out, progress=False, say=said.append)
    assert not any("never written" in s for s in said)
    got = ids(out)
    assert len(got) == len(set(got)) == 19366 and result.summary.finished == 19366
