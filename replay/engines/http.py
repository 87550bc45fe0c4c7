"""A running OpenAI-compatible server (``vllm serve``, SGLang, ``trtllm-serve``) as an engine, over HTTP.

Each trace request becomes one streaming ``POST /v1/completions`` whose prompt is exactly the request's input
length as token ids (``replay.engines.prompts``: the same prompts, shared prefixes included, as the in-process
engine) and whose output is exactly its output length (``max_tokens`` = ``min_tokens`` = n_out with
``ignore_eos``; vLLM and SGLang accept both). The stream asks for ``continuous_usage_stats``, so every chunk
says how many tokens came so far: a chunk that carried several tokens is counted as several. The client is
aiohttp (asyncio streaming, as vLLM's own ``bench serve`` uses), one session for the run.

The arrival processes stay the SimPy generators of ``replay.arrivals``: ``WallClock`` runs the SimPy environment
on the wall clock from inside the asyncio loop (an event is processed when its time comes, an HTTP stream that
ends schedules its completion at the wall time it ended), so closed loops and static batches see real
completions. One ``ClientLoop`` per target URL takes the place of the server loop of a replica behind
``replay.server.Router``.

Per request the record holds the send time, every token's arrival time (``token_times_s``), the end time and
the server's usage; the steps are not visible over HTTP, so ``replay.energy.reconstruct`` rebuilds them from the
token times after the run. A request the server refuses (HTTP 4xx) is ``rejected`` with its message; one that
fails (HTTP 5xx, a timeout, a broken stream, fewer tokens than asked) is ``failed`` with ``error`` naming the
kind. A server that stops answering altogether stops the run (``ServerGone``): what finished is kept, and
``--resume`` redoes what was in flight.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator

import simpy

from replay.engines.prompts import Tokens
from replay.server import Completions
from replay.trace.schema import Request

__all__ = ["ClientLoop", "Launched", "ServerEngine", "ServerGone", "Target", "WallClock", "check_url", "healthy",
           "is_local", "launch", "launch_option", "launch_settings", "open_servers", "probe", "scrape_metrics", "serve", "server_gpus",
           "stream_request"]

SAFE_VOCAB = 1000          # token ids below this exist in every model's vocabulary
HEALTH_TIMEOUT_S = 5.0


class ServerGone(RuntimeError):
    """The server stopped answering mid-run (connection refused or dropped, and /health gone too)."""


def check_url(url: str) -> str:
    """``url`` without a trailing slash (and without a trailing ``/v1``), or a ValueError naming it."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--target {url!r}: expected an http:// or https:// URL of a server, e.g. "
                         "http://127.0.0.1:8000")
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def is_local(url: str) -> bool:
    """True when ``url`` points at this machine (its GPUs are the ones NVML here sees)."""
    host = urllib.parse.urlparse(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.startswith("127.") or \
        host == os.uname().nodename


def _get_json(url: str, timeout_s: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read().decode("utf-8"))


def healthy(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """The server answers ``/health`` (or, for servers without it, ``/v1/models``) with 200."""
    for path in ("/health", "/v1/models"):
        try:
            with urllib.request.urlopen(url + path, timeout=timeout_s) as response:
                if response.status == 200:
                    return True
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                return False
        except (OSError, ValueError):
            return False
    return False


@dataclass(frozen=True)
class Target:
    """One server replay sends requests to: its URL, the model name it serves, its context length (when it
    says), and the vocabulary the prompts' token ids are drawn from (and where that came from)."""

    url: str
    model: str
    max_model_len: int | None
    vocab_size: int
    vocab_from: str
    models: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "models": list(self.models)}


def _vocab(names: list[str]) -> tuple[int, str]:
    """The vocabulary size of the first of ``names`` replay knows (a shipped model, an alias of one, or a local
    directory holding config.json), else SAFE_VOCAB."""
    from replay.specs import model as spec
    for name in names:
        if not name:
            continue
        try:
            vocab = spec(name).config.get("vocab_size")
        except (ValueError, OSError):
            continue
        if isinstance(vocab, int) and vocab >= 2:
            return vocab, f"vocab_size of {name}"
    return SAFE_VOCAB, f"no config.json known for {names[0] if names else 'the model'}: ids below {SAFE_VOCAB}"


def probe(url: str, model: str | None = None, timeout_s: float = 10.0) -> Target:
    """Ask the server at ``url`` what it serves (``GET /v1/models``); a ValueError in one line naming the URL
    when nothing answers there or the answer is not an OpenAI-compatible model list."""
    url = check_url(url)
    try:
        doc = _get_json(url + "/v1/models", timeout_s)
    except urllib.error.HTTPError as exc:
        raise ValueError(f"{url}: the server answered GET /v1/models with HTTP {exc.code}: is it an "
                         "OpenAI-compatible server?") from None
    except (OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise ValueError(f"{url}: no server answers there ({why}); start it (vllm serve ...), or give "
                         "--launch \"vllm serve ...\" to have replay start it") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not data or not all(isinstance(m, dict) and "id" in m for m in data):
        raise ValueError(f"{url}: GET /v1/models did not list any model ({str(doc)[:120]})")
    names = tuple(str(m["id"]) for m in data)
    if model is not None and model not in names:
        raise ValueError(f"{url}: the server does not serve --model {model!r}; it serves {', '.join(names)}")
    card = data[names.index(model)] if model is not None else data[0]
    served = str(card["id"])
    max_len = card.get("max_model_len")
    vocab, vocab_from = _vocab([served, str(card.get("root") or "")])
    return Target(url, served, int(max_len) if isinstance(max_len, int) else None, vocab, vocab_from, names)


_METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def scrape_metrics(url: str, timeout_s: float = 5.0) -> dict[str, float] | None:
    """The server's Prometheus ``/metrics`` as {name: value summed over label sets} for vLLM's ``vllm:``
    series (counters, gauges, histogram ``_count``/``_sum``), or None when there is no such page."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout_s) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m or not m.group(1).startswith(("vllm:", "sglang:")) or m.group(1).endswith(("_bucket", "_created")):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if math.isfinite(value):
            out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out or None


# --- launching a server -------------------------------------------------------------------------------------

@dataclass
class Launched:
    """A server replay started (``--launch``): its process group, log, URL, and what it was given."""

    command: str
    process: subprocess.Popen
    log: Path
    url: str
    env: dict[str, str] = field(default_factory=dict)
    ready_s: float | None = None

    def stop(self, grace_s: float = 30.0) -> int | None:
        """Stop the server and everything it started (SIGINT to its process group, as Ctrl-C; SIGKILL after
        ``grace_s``); its exit code."""
        p = self.process
        if p.poll() is None:
            for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # workers it left in its group
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return p.poll()


def launch_settings(command: str) -> tuple[list[str], dict[str, str], int, str]:
    """(argv, environment assignments before it, tensor-parallel size, URL) of a ``--launch`` command such as
    ``CUDA_VISIBLE_DEVICES=1 vllm serve MODEL --port 8001 -tp 2``."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"--launch {command!r}: {exc}") from None
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if not words:
        raise ValueError(f"--launch {command!r}: no command to run")

    def option(*names: str) -> str | None:
        return _option(words, names)

    tp_text = option("--tensor-parallel-size", "-tp") or "1"
    if not tp_text.isdigit() or int(tp_text) < 1:
        raise ValueError(f"--launch: --tensor-parallel-size {tp_text!r}: expected an integer >= 1")
    port = option("--port") or "8000"
    host = option("--host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return words, env, int(tp_text), f"http://{host}:{port}"


def _option(words: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the first of ``names`` in a command's words (``--name VALUE`` or ``--name=VALUE``)."""
    for i, w in enumerate(words):
        for name in names:
            if w == name and i + 1 < len(words):
                return words[i + 1]
            if w.startswith(name + "="):
                return w.split("=", 1)[1]
    return None


def launch_option(command: str, *names: str) -> str | None:
    """The value a ``--launch`` command gives one of ``names`` (e.g. ``--max-num-batched-tokens``), or None."""
    return _option(launch_settings(command)[0], names)


def launch(command: str, log: Path, url: str | None = None, timeout_s: float = 600.0,
           say: Callable[[str], None] = print) -> Launched:
    """Start ``command`` (a server; its output to ``log``) in a process group of its own and wait until
    ``url`` (default: from its --host/--port) is healthy, at most ``timeout_s``. A server that exits first,
    or is not ready in time (then it is stopped), is a ValueError in one line naming the log."""
    argv, env, _, guessed = launch_settings(command)
    url = check_url(url or guessed)
    if healthy(url, 1.0):
        raise ValueError(f"--launch: a server already answers at {url}; stop it, or drop --launch to use it")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "ab") as out:
        try:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **env}, start_new_session=True)
        except OSError as exc:
            raise ValueError(f"--launch: could not start {argv[0]!r}: {exc.strerror or exc}") from None
    server = Launched(command, process, log, url, env)
    say(f"launched: {command} (pid {process.pid}, log {log}); waiting for {url}/health, at most {timeout_s:g} s")
    try:
        while True:
            code = process.poll()
            if code is not None:
                raise ValueError(f"--launch: the server exited with code {code} before it was ready; its log: "
                                 f"{log} (last line: {_last_line(log)})")
            if healthy(url, 2.0):
                break
            if time.monotonic() - t0 > timeout_s:
                server.stop()
                raise ValueError(f"--launch: the server was not ready at {url} after {timeout_s:g} s (stopped); "
                                 f"its log: {log} (last line: {_last_line(log)})")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    server.ready_s = time.monotonic() - t0
    say(f"server ready after {server.ready_s:.1f} s")
    return server


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "none"
    return lines[-1][:200] if lines else "none"


# --- the wall clock under asyncio -----------------------------------------------------------------------------

class WallClock:
    """Runs a ``simpy.Environment`` on the wall clock from inside an asyncio loop: each event is processed when
    its time comes (``run``), and asyncio code hands results to SimPy processes at the wall time they happen
    (``call_now``). The run clock is ``env.now`` at ``sync`` plus the wall seconds since.

    The loop sleeps until ``SPIN_S`` before the next event and yields to other tasks (``sleep(0)``) for the last
    stretch: the poller's timeout has millisecond steps, and an arrival handed over a millisecond late would
    be the larger part of the arrival lag (benchmarks/client_speed.py)."""

    SPIN_S = 0.0015

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.origin = time.monotonic() - env.now
        self.error: BaseException | None = None
        self._waiter: asyncio.Future | None = None

    def now(self) -> float:
        return time.monotonic() - self.origin

    def sync(self) -> None:
        """The run clock reads ``env.now`` at this moment (as ``RealtimeEnvironment.sync``)."""
        self.origin = time.monotonic() - self.env.now

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def call_now(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` inside the environment at the run time it is now (from asyncio code)."""
        event = self.env.timeout(max(0.0, self.now() - self.env.now))
        event.callbacks.append(lambda _event: fn())
        self._wake()

    def fail(self, error: BaseException) -> None:
        """Stop ``run`` with ``error`` (from a task)."""
        if self.error is None:
            self.error = error
        self._wake()

    async def run(self, until: simpy.Event) -> None:
        env, loop = self.env, asyncio.get_running_loop()
        while not until.processed:
            if self.error is not None:
                raise self.error
            due = env.peek()
            delay = due - self.now()
            if delay <= 0:
                env.step()
                continue
            if delay <= self.SPIN_S:
                await asyncio.sleep(0)
                continue
            self._waiter = loop.create_future()
            timer = None if due == math.inf else loop.call_later(delay - self.SPIN_S, self._wake)
            try:
                await self._waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        if self.error is not None:
            raise self.error


# --- one replica: a client of one server ----------------------------------------------------------------------

class ClientLoop(Completions):
    """What the arrival processes and the router see of one server (as ``replay.server.ServerLoop``): each
    submitted request streams as its own asyncio task; records go to ``recorder`` as requests end."""

    def __init__(self, clock: WallClock, session: Any, target: Target, recorder: Any, replica: int = 0,
                 seed: int = 0, timeout_s: float | None = None, on_finish: Callable[[dict], None] | None = None):
        super().__init__(clock.env)
        self.clock, self.session, self.target = clock, session, target
        self.recorder, self.replica, self.on_finish = recorder, replica, on_finish
        self.timeout_s = timeout_s
        self.tokens = Tokens(target.vocab_size, seed)
        self.outstanding = 0
        self.submitted: set[str] = set()
        self.tasks: set[asyncio.Task] = set()
        self.process = self.env.process(self._wait())

    def submit(self, request: Request, scheduled_s: float) -> None:
        if request.id in self.submitted:
            raise ValueError(f"request id {request.id!r} submitted twice: ids must be unique in a run")
        self.submitted.add(request.id)
        self.outstanding += 1
        task = asyncio.get_running_loop().create_task(self._one(request, scheduled_s, self.clock.now()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _wait(self) -> Generator[simpy.Event, Any, None]:
        while not (self.closed and self.outstanding == 0):
            self._wake = self.env.event()
            yield self._wake

    def _end(self, record: dict[str, Any]) -> None:
        """Inside the environment: the request is over (recorded; closed loops may go on)."""
        self.outstanding -= 1
        self.recorder.request(record)
        if self.on_finish is not None:
            self.on_finish(record)
        self._completed(record["id"])
        self._poke()

    async def _one(self, request: Request, scheduled_s: float, submitted_s: float) -> None:
        try:
            record = await stream_request(self.session, self.target, request, self.tokens.prompt(request),
                                          self.clock.now, self.timeout_s)
        except Exception as exc:  # ServerGone, or an unexpected failure: stop the run, do not hide it
            self.clock.fail(exc)
            return
        record.update(replica=self.replica, arrival_s=scheduled_s, submitted_s=submitted_s)
        _latencies(record)
        self.clock.call_now(lambda: self._end(record))


def _latencies(record: dict[str, Any]) -> None:
    a = record["arrival_s"]

    def since(t: float | None) -> float | None:
        return None if t is None else t - a

    n = record["generated_tokens"]
    record["ttft_s"] = since(record["first_token_s"])
    record["e2e_s"] = since(record["finished_s"]) if record["status"] == "finished" else None
    record["tpot_s"] = ((record["finished_s"] - record["first_token_s"]) / (n - 1)
                        if record["status"] == "finished" and n > 1 else None)


RECORD_KEYS = ("id", "kind", "replica", "status", "reason", "error", "arrival_s", "submitted_s", "sent_s",
               "admitted_s", "first_token_s", "finished_s", "input_tokens", "output_tokens", "generated_tokens",
               "cached_tokens", "preemptions", "queue_s", "ttft_s", "tpot_s", "e2e_s", "energy_j", "token_steps",
               "prefill_steps", "token_times_s", "usage")


async def stream_request(session: Any, target: Target, request: Request, prompt: list[int],
                         now: Callable[[], float], timeout_s: float | None) -> dict[str, Any]:
    """Send one request and read its stream to the end: the record (without replica and arrival times).
    Raises ServerGone when the connection fails and the server no longer answers ``/health``."""
    import aiohttp
    n_out = request.output_tokens
    payload = {"model": target.model, "prompt": prompt, "max_tokens": n_out, "min_tokens": n_out,
               "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    record: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    record.update(id=request.id, kind=request.kind, input_tokens=request.input_tokens, output_tokens=n_out,
                  generated_tokens=0, cached_tokens=0, preemptions=0, token_steps=[], prefill_steps=[],
                  token_times_s=[])
    times: list[float] = record["token_times_s"]
    usage: dict[str, Any] | None = None
    finish_reason = None
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    record["sent_s"] = now()
    try:
        async with session.post(target.url + "/v1/completions", json=payload, timeout=timeout) as response:
            if response.status != 200:
                body = (await response.text())[:2000]
                return _http_error(record, response.status, body, now())
            seen = 0
            async for raw in response.content:
                t = now()
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    return _failed(record, "bad stream", f"a stream line is not JSON: {data[:120]!r}", t)
                if "error" in chunk and not chunk.get("choices"):
                    err = chunk["error"]
                    msg = err.get("message") if isinstance(err, dict) else err
                    return _failed(record, "server error", f"the server reported mid-stream: {str(msg)[:300]}", t)
                usage = chunk.get("usage") or usage
                choices = chunk.get("choices") or []
                if not choices:
                    continue
                choice = choices[0]
                finish_reason = choice.get("finish_reason") or finish_reason
                if chunk.get("usage") and isinstance(chunk["usage"].get("completion_tokens"), int):
                    k = chunk["usage"]["completion_tokens"] - seen
                elif isinstance(choice.get("token_ids"), list):
                    k = len(choice["token_ids"])
                else:
                    k = 1 if (choice.get("text") or finish_reason is None) else 0
                if k > 0:
                    times.extend([t] * k)
                    seen += k
    except asyncio.TimeoutError:
        return _failed(record, "timeout", f"no complete answer within --request-timeout-s {timeout_s:g}", now())
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        t = now()
        if not await asyncio.to_thread(healthy, target.url):
            raise ServerGone(f"{target.url}: the server stopped answering ({type(exc).__name__}: {exc})") from None
        return _failed(record, "disconnect", f"the stream broke off: {type(exc).__name__}: {exc}", t)
    end = now()
    record["usage"] = _usage(usage)
    if record["usage"] and record["usage"].get("cached_tokens"):
        record["cached_tokens"] = int(record["usage"]["cached_tokens"])
    record["generated_tokens"] = len(times)
    record["first_token_s"] = times[0] if times else None
    record["finished_s"] = end
    if len(times) < n_out:
        return _failed(record, "short", f"got {len(times)} of {n_out} tokens (finish_reason {finish_reason})", end,
                       keep_end=True)
    record["status"] = "finished"
    return record


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    out = {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens") if isinstance(usage.get(k), int)}
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        out["cached_tokens"] = details["cached_tokens"]
    return out or None


def _failed(record: dict[str, Any], kind: str, reason: str, t: float, keep_end: bool = False) -> dict[str, Any]:
    record.update(status="failed", error=kind, reason=reason)
    times = record["token_times_s"]
    record["generated_tokens"] = len(times)
    record["first_token_s"] = times[0] if times else None
    if not keep_end:
        record["finished_s"] = t
    return record


def _http_error(record: dict[str, Any], status: int, body: str, t: float) -> dict[str, Any]:
    try:
        doc = json.loads(body)
        message = doc.get("error", doc) if isinstance(doc, dict) else doc
        if isinstance(message, dict):
            message = message.get("message", message)
        if isinstance(doc, dict) and "message" in doc and not isinstance(doc.get("error"), dict):
            message = doc["message"]
    except ValueError:
        message = body
    message = " ".join(str(message).split())[:500]
    if 400 <= status < 500:
        record.update(status="rejected", error=f"http {status}", reason=f"the server refused it (HTTP {status}): "
                      f"{message}")
        record["finished_s"] = t
        return record
    return _failed(record, f"http {status}", f"HTTP {status}: {message}", t)


# --- the run ------------------------------------------------------------------------------------------------

def serve(clock: WallClock, targets: list[Target], start_feeder: Callable[[Any], simpy.Process],
          recorder: Any, router: str = "round-robin", seed: int = 0, timeout_s: float | None = None,
          on_finish: Callable[[dict], None] | None = None,
          on_start: Callable[[], None] | None = None) -> list[ClientLoop]:
    """Run the arrival process that ``start_feeder(front)`` starts (``front``: the router over one client per
    target, which the process closes once it has submitted everything) until every request has ended, on ``clock`` (its environment's time is the run clock).
    ``on_start``: called once the client is set up, right before the first event (default: ``clock.sync``);
    it must sync the clock (a meter started there then samples from the run's time 0)."""
    return asyncio.run(_serve(clock, targets, start_feeder, recorder, router, seed, timeout_s, on_finish,
                              on_start or clock.sync))


async def _serve(clock, targets, start_feeder, recorder, router, seed, timeout_s, on_finish,
                 on_start) -> list[ClientLoop]:
    import aiohttp

    from replay.server import Router
    env = clock.env
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        loops = [ClientLoop(clock, session, t, recorder, replica=i, seed=seed, timeout_s=timeout_s,
                            on_finish=on_finish) for i, t in enumerate(targets)]
        front = Router(loops, router)
        feeder = start_feeder(front)
        on_start()  # the run clock (and the meter) start now, after the client's set-up (imports, session)
        try:
            await clock.run(env.all_of([feeder] + [loop.process for loop in loops]))
        finally:
            pending = [t for loop in loops for t in loop.tasks]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
    return loops


# --- the engine as the runner holds it ------------------------------------------------------------------------

@dataclass
class ServerEngine:
    """One replica of a server run: the target it sends to, and the server process when replay launched it
    (stopped by ``close``)."""

    target: Target
    launched: Launched | None = None
    metrics_before: dict[str, float] | None = None

    energy_label = "measured"

    def close(self) -> None:
        if self.launched is not None:
            self.launched.stop()

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"engine": "server", **self.target.to_dict()}
        if self.launched is not None:
            out.update(launch=self.launched.command, launch_ready_s=self.launched.ready_s,
                       server_log=str(self.launched.log))
        return out


def open_servers(urls: list[str] | None, command: str | None, model: str | None, log: Path | None,
                 launch_timeout_s: float = 600.0, say: Callable[[str], None] = print) -> list[ServerEngine]:
    """The servers of a run: each URL probed (``probe``), after starting ``command`` first when given (its log
    at ``log``; a launched server is stopped again if anything here fails)."""
    launched = None
    if command is not None:
        launched = launch(command, log or Path("server.log"), urls[0] if urls else None, launch_timeout_s, say)
        urls = [launched.url]
    try:
        engines = []
        for url in urls or []:
            target = probe(url, model)
            engines.append(ServerEngine(target, launched if not engines else None, scrape_metrics(target.url)))
        return engines
    except BaseException:
        if launched is not None:
            launched.stop()
        raise


def server_gpus(target_gpus: str | None, command: str | None, urls: list[str] | None) -> tuple[list | None, str]:
    """The GPUs to measure for a server run, as ``NvmlMeter`` takes them (None: every GPU here), and why; a
    ValueError when they cannot be known (a server on another machine, with no --target-gpus to say)."""
    if target_gpus is not None:
        gpus: list[int | str] = []
        for entry in (e.strip() for e in target_gpus.split(",")):
            if entry.isdigit():
                gpus.append(int(entry))
            elif entry.startswith(("GPU-", "MIG-")):
                gpus.append(entry)
            else:
                raise ValueError(f"--target-gpus {target_gpus!r}: {entry!r} is neither a GPU index nor a "
                                 "GPU-/MIG- UUID")
        return gpus, f"--target-gpus {target_gpus}"
    if command is not None:
        from replay.energy.meters import gpus_in_use
        _, env, tp, _ = launch_settings(command)
        visible = env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
        return gpus_in_use(tp, visible), f"the launched server's (tp {tp}, CUDA_VISIBLE_DEVICES={visible})"
    remote = [u for u in urls or [] if not is_local(u)]
    if remote:
        raise ValueError(f"the server at {remote[0]} is not on this machine, so NVML here cannot see its GPUs "
                         "(run replay beside it, or give --target-gpus for GPUs of this machine)")
    return None, "every GPU of this machine (a local server; --target-gpus to choose)"
