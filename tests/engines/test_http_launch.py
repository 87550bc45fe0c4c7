"""``replay run --launch``: replay starts a real ``vllm serve`` (vLLM's OpenAI API server, CPU build, tiny Llama,
dummy weights), waits for it, replays, and stops it, also on Ctrl-C; a server that dies mid-run stops the run
with what finished kept, and ``--resume`` starts the server again and finishes. Run as a user runs it: the
``replay`` command in a subprocess, signals sent to real processes. (Its own module so that its servers never
run beside the other server tests' one: one vLLM engine at a time on this machine.)

Skipped where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed: the server tests need it", allow_module_level=True)

from conftest import REPO, TRACES  # noqa: E402
from test_http import free_port, serve_command  # noqa: E402
from replay.engines.http import healthy  # noqa: E402
from replay.specs import MODELS_DIR  # noqa: E402

CHAT = str(TRACES / "chat.jsonl")


def replay(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "replay", "run", *args], cwd=REPO, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for(what, timeout_s: float, process: subprocess.Popen, log: Path) -> None:
    t0 = time.monotonic()
    while not what():
        if process.poll() is not None:
            raise AssertionError(f"replay exited early ({process.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() - t0 > timeout_s:
            process.kill()
            raise AssertionError(f"timed out; replay said: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def server_pid(log: Path) -> int:
    found = re.findall(r"launched: .* \(pid (\d+), log ", log.read_text())
    assert found, log.read_text()
    return int(found[-1])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_launch_ctrl_c_a_server_killed_mid_run_and_resume(tmp_path):
    model = tmp_path / "tiny-llama"
    model.mkdir()
    (model / "config.json").write_text((MODELS_DIR / "tiny-llama" / "config.json").read_text())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "run"
    requests = out / "requests.jsonl"

    # 1. replay launches the server and runs; Ctrl-C stops both, keeping what finished
    log1 = tmp_path / "1.log"
    p = replay(CHAT, "--launch", serve_command(port, model), "--duration-s", "24", "--speedup", "2",
               "--meter", "none", "--idle-s", "0", "--max-num-batched-tokens", "2048", "--quiet", "--out", str(out),
               log=log1)
    wait_for(lambda: lines(requests) >= 4, 600, p, log1)
    pid = server_pid(log1)
    p.send_signal(signal.SIGINT)
    assert p.wait(120) != 0
    said = log1.read_text()
    assert "server ready after" in said and f"go on with: replay run --resume {out}" in said
    assert gone(pid) and not healthy(url, 1.0)                  # replay stopped the server it started
    assert (out / "server.log").stat().st_size > 0
    kept = lines(requests)
    assert kept >= 4 and not (out / "summary.json").exists()

    # 2. --resume starts the server again; it dies mid-run: the run stops in one line, records kept
    log2 = tmp_path / "2.log"
    p = replay("--resume", str(out), log=log2)
    wait_for(lambda: lines(requests) >= kept + 3, 600, p, log2)
    pid = server_pid(log2)
    os.killpg(pid, signal.SIGKILL)
    assert p.wait(120) == 1
    said = log2.read_text()
    assert "the server stopped answering" in said and url in said and f"replay run --resume {out}" in said
    assert "Traceback" not in said and (out / "error.log").exists()
    kept2 = lines(requests)
    assert kept2 >= kept + 3 and not (out / "summary.json").exists()

    # 3. --resume again: every request of the window finished exactly once, the server stopped after
    log3 = tmp_path / "3.log"
    p = replay("--resume", str(out), log=log3)
    assert p.wait(900) == 0, log3.read_text()[-3000:]
    assert gone(server_pid(log3)) and not healthy(url, 1.0)
    recs = [json.loads(line) for line in requests.read_text().splitlines()]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) > kept2
    assert all(r["status"] == "finished" and r["generated_tokens"] == r["output_tokens"] for r in recs)
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["finished"] == len(recs) and summary["steps_source"] == "reconstructed from token times"
