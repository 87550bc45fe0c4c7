"""replay's HTTP client overhead against a server that streams at once (benchmarks/instant_server.py), on one core.

    python benchmarks/client_speed.py [--rate 200] [--requests 2000] [--concurrency 1000] [--out FILE]

The server runs in its own process pinned to the last CPU, the client (this process) to CPU 0, so the client
has one core to itself. Two cases, each against a baseline measured in the same run: a bare aiohttp loop that
sends the same requests at the same times and reads the same streams, with no records, no SimPy and no
prompts (what any client must pay):

- rate: ``--requests`` Poisson arrivals at ``--rate`` per second (128 tokens in, 16 out, streamed at once):
  replay's arrival lag (``submitted_s - arrival_s``) and send lag (``sent_s - arrival_s``), p50/p99/max,
  against the baseline's send lag. Target: holds 200 requests/s with p99 arrival lag <= 2 ms.
- streams: a closed loop of ``--concurrency`` outstanding requests, each 50 tokens streamed 0.1 s apart
  (5 s per stream), 3 x concurrency requests: the most streams open at once, requests/s and tokens/s against
  the baseline's. Target: 1,000 concurrent streams on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replay.config import RunConfig  # noqa: E402
from replay.run import execute  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, token_gap_s: float) -> subprocess.Popen:
    cpu = (os.cpu_count() or 1) - 1
    p = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "instant_server.py"), str(port),
                          "--token-gap-s", str(token_gap_s), "--cpu", str(cpu)])
    import urllib.request
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise RuntimeError("the instant server did not start")


def trace(path: Path, n: int, n_in: int, n_out: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": str(i), "arrival_s": None, "input_tokens": n_in, "output_tokens": n_out}) + "\n")
    return path


def pct(x: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(x, 50) * 1e3), "p99_ms": float(np.percentile(x, 99) * 1e3),
            "max_ms": float(x.max() * 1e3)}


def max_open(starts: np.ndarray, ends: np.ndarray) -> int:
    t = np.concatenate([starts, ends])
    d = np.concatenate([np.ones(len(starts)), -np.ones(len(ends))])
    order = np.lexsort((d, t))
    return int(np.cumsum(d[order]).max())


async def bare(url: str, times_s: np.ndarray | None, n: int, n_in: int, n_out: int,
               concurrency: int | None) -> dict[str, np.ndarray]:
    """The baseline: aiohttp alone, the same requests (schedule or closed loop), the same streams read."""
    import aiohttp
    prompt = list(range(n_in))
    sent = np.zeros(n)
    ends = np.zeros(n)
    due = np.zeros(n)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = loop.time()

        async def one(i: int) -> None:
            sent[i] = loop.time() - t0
            body = {"model": "instant", "prompt": prompt, "max_tokens": n_out, "stream": True}
            async with session.post(url + "/v1/completions", json=body) as r:
                async for line in r.content:
                    if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                        json.loads(line[5:])
            ends[i] = loop.time() - t0

        if times_s is not None:
            tasks = []
            for i, t in enumerate(times_s.tolist()):
                delay = t - (loop.time() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                due[i] = t
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        else:
            queue = iter(range(n))

            async def worker() -> None:
                for i in queue:
                    due[i] = loop.time() - t0
                    await one(i)
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = loop.time() - t0
    return {"sent": sent, "ends": ends, "due": due, "wall": np.array([wall])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "client_speed.json"))
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    results: dict = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    tmp = Path(tempfile.mkdtemp())

    # --- rate -----------------------------------------------------------------------------------------------
    port = free_port()
    server = start_server(port, 0.0)
    url = f"http://127.0.0.1:{port}"
    try:
        path = trace(tmp / "rate.jsonl", args.requests, 128, 16)
        cfg = RunConfig(trace=str(path), engine="server", targets=[url], arrival="poisson", rate_per_s=args.rate,
                        limit=args.requests, meter="none", idle_s=0.0, out=str(tmp / "rate-run"))
        t0 = time.perf_counter()
        r = execute(cfg, progress=False)
        wall = time.perf_counter() - t0
        req = r.requests
        lag = (req["submitted_s"] - req["arrival_s"]).to_numpy()
        send = (req["sent_s"] - req["arrival_s"]).to_numpy()
        from replay import arrivals
        from replay.trace import read_trace
        times = arrivals.schedule_s("poisson", read_trace(str(path)), rate_per_s=args.rate, seed=0)
        b = asyncio.run(bare(url, times, args.requests, 128, 16, None))
        b_send = b["sent"] - b["due"]
        results["rate"] = {
            "requests": args.requests, "rate_per_s": args.rate, "finished": int((req["status"] == "finished").sum()),
            "achieved_per_s": float(r.summary.request_throughput), "wall_s": wall,
            "replay_arrival_lag": pct(lag), "replay_send_lag": pct(send), "baseline_send_lag": pct(b_send),
            "p99_send_lag_vs_baseline": float(np.percentile(send, 99) / max(np.percentile(b_send, 99), 1e-9)),
        }
    finally:
        server.kill()
        server.wait()
    print(json.dumps(results["rate"], indent=1))

    # --- streams ----------------------------------------------------------------------------------------------
    port = free_port()
    server = start_server(port, 0.1)
    url = f"http://127.0.0.1:{port}"
    n = 3 * args.concurrency
    try:
        path = trace(tmp / "streams.jsonl", n, 128, 50)
        cfg = RunConfig(trace=str(path), engine="server", targets=[url], mode="online", arrival="closed",
                        concurrency=args.concurrency, limit=n, meter="none", idle_s=0.0, out=str(tmp / "streams-run"))
        t0 = time.perf_counter()
        r = execute(cfg, progress=False)
        wall = time.perf_counter() - t0
        req = r.requests
        opened = max_open(req["sent_s"].to_numpy(), req["finished_s"].to_numpy())
        b = asyncio.run(bare(url, None, n, 128, 50, args.concurrency))
        b_open = max_open(b["sent"], b["ends"])
        toks = float(req["generated_tokens"].sum())
        results["streams"] = {
            "concurrency": args.concurrency, "requests": n, "finished": int((req["status"] == "finished").sum()),
            "replay_max_open_streams": opened, "baseline_max_open_streams": b_open,
            "replay_wall_s": wall, "baseline_wall_s": float(b["wall"][0]),
            "replay_requests_per_s": n / wall, "baseline_requests_per_s": n / float(b["wall"][0]),
            "replay_tokens_per_s": toks / wall,
            "throughput_vs_baseline": float(b["wall"][0] / wall),
            "replay_reconnect_lag": pct((req["sent_s"] - req["arrival_s"]).to_numpy()),
        }
    finally:
        server.kill()
        server.wait()
    print(json.dumps(results["streams"], indent=1))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
