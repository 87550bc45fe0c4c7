"""The server loop (DESIGN.md "One server loop, two clocks"), the router in front of several replicas, and the
records they produce.

One ``ServerLoop`` per replica, a SimPy process::

    while True:
        hand every request that has arrived to the engine
        step = engine.step()
        yield env.timeout(step.duration_s)
        record the step and what each request got from it

Under ``simpy.Environment`` the step's duration comes from the simulated engine's model; under
``simpy.rt.RealtimeEnvironment(strict=False)`` the real engine's ``step()`` takes that long in wall-clock time,
so the timeout is already due. Requests arriving during a step join the next one, as in a real server.
Records go to a ``Recorder`` as they are produced: one per step, one per request when it finishes or is
rejected.
"""

from __future__ import annotations

import itertools
import json
from array import array
import math
import time
from pathlib import Path
from typing import IO, Any, Callable, Generator

import numpy as np
import pandas as pd
import simpy
import simpy.rt

from replay.arrivals import wait_until
from replay.engines.base import Engine, Step
from replay.trace.schema import Request

__all__ = ["ROUTERS", "Completions", "Recorder", "RequestRecord", "Router", "STEP_FIELDS", "ServerLoop"]

STEP_FIELDS = ("replica", "step", "start_s", "end_s", "duration_s", "prefill_tokens", "decode_tokens", "num_seqs",
               "sampled_seqs", "attn_pairs", "kv_read_tokens", "running", "waiting", "kv_blocks_used",
               "kv_blocks_total", "preempted", "energy_j")
STEP_DTYPES = {name: (np.float64 if name in ("start_s", "end_s", "duration_s", "attn_pairs", "energy_j")
                      else np.int64) for name in STEP_FIELDS}
PACK_ROWS = 4096  # single-step rows are packed into typed arrays this many at a time (memory: 8 bytes a field)


class RequestRecord:
    """What happened to one request, filled in as it moves through the server (times on the run clock)."""

    __slots__ = ("request", "replica", "arrival_s", "submitted_s", "admitted_s", "first_token_s", "finished_s",
                 "cached_tokens", "preemptions", "energy_j", "token_steps", "prefill_steps", "run_start",
                 "last_step", "mark", "status", "reason")

    def __init__(self, request: Request, replica: int, arrival_s: float, submitted_s: float):
        self.request, self.replica = request, replica
        self.arrival_s, self.submitted_s = arrival_s, submitted_s
        self.admitted_s = self.first_token_s = self.finished_s = None
        self.cached_tokens = self.preemptions = 0
        self.energy_j = 0.0                      # attributed step energy (meaningful when the engine gives it)
        self.token_steps: list[list[int]] = []  # closed runs [first_step, count] of steps that emitted a token
        self.prefill_steps: list[list[int]] = []  # [step, tokens] of each prompt (or recompute) chunk
        self.run_start = self.last_step = -2     # the open run
        self.mark = 0.0                          # the loop's energy-per-token sum before its open decode stretch
        self.status, self.reason = "unfinished", None

    def emit(self, k: int) -> None:
        """A token came out of step k (the hot path inlines the common case: ``last_step == k - 1``)."""
        if self.last_step == k - 1:
            self.last_step = k
            return
        if self.run_start >= 0:
            self.token_steps.append([self.run_start, self.last_step - self.run_start + 1])
        self.run_start = self.last_step = k

    def to_dict(self, energy: bool = True) -> dict[str, Any]:
        """The record as requests.jsonl holds it; ``energy`` False: the engine gave no step energy (null)."""
        r, a = self.request, self.arrival_s
        if self.run_start >= 0:
            self.token_steps.append([self.run_start, self.last_step - self.run_start + 1])
            self.run_start = self.last_step = -2
        generated = sum(count for _, count in self.token_steps)

        def since(t: float | None) -> float | None:
            return None if t is None else t - a

        tpot = None
        if self.finished_s is not None and generated > 1:
            tpot = (self.finished_s - self.first_token_s) / (generated - 1)
        return {
            "id": r.id, "kind": r.kind, "replica": self.replica, "status": self.status, "reason": self.reason,
            "arrival_s": a, "submitted_s": self.submitted_s, "admitted_s": self.admitted_s,
            "first_token_s": self.first_token_s, "finished_s": self.finished_s,
            "input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "generated_tokens": generated,
            "cached_tokens": self.cached_tokens, "preemptions": self.preemptions,
            "queue_s": since(self.admitted_s), "ttft_s": since(self.first_token_s), "tpot_s": tpot,
            "e2e_s": since(self.finished_s), "energy_j": self.energy_j if energy else None,
            "token_steps": self.token_steps, "prefill_steps": self.prefill_steps,
        }


class _StepTable:
    """Step records as typed columns that grow by doubling (8 bytes a field, no Python object per value)."""

    def __init__(self) -> None:
        self.size = 0
        self.columns = {name: np.empty(1024, STEP_DTYPES[name]) for name in STEP_FIELDS}

    def append(self, n: int, values: list) -> None:
        """n rows; per STEP_FIELDS column a scalar (every row) or a sequence of n values (None -> NaN)."""
        end = self.size + n
        if end > len(self.columns["step"]):
            capacity = max(end, 2 * len(self.columns["step"]))
            for name, column in self.columns.items():
                grown = np.empty(capacity, column.dtype)
                grown[:self.size] = column[:self.size]
                self.columns[name] = grown
        for name, value in zip(STEP_FIELDS, values):
            self.columns[name][self.size:end] = np.nan if value is None else value
        self.size = end

    def frame(self) -> pd.DataFrame:
        n = self.size
        order = np.lexsort((self.columns["step"][:n], self.columns["replica"][:n]))
        return pd.DataFrame({name: column[:n][order] for name, column in self.columns.items()},
                            columns=list(STEP_FIELDS), copy=False)


class Recorder:
    """Collects step and request records; with a directory, appends them to ``steps.jsonl`` and
    ``requests.jsonl`` as they come (flushed at least every ``flush_s`` seconds of wall time and at close), so
    an interrupted run keeps what it finished.

    Request lines reach the disk only after the steps they point at: they wait in memory until the steps file
    has been flushed, so a run killed at any moment (SIGKILL included) never leaves a request naming a step that
    was not written. A write that fails (a full disk) raises OSError naming the file."""

    def __init__(self, out_dir: str | Path | None = None, flush_s: float = 1.0):
        self._rows: list[tuple] = []         # single steps not yet in the table
        self._table = _StepTable()
        self.requests: list[dict[str, Any]] = []
        self.flush_s = flush_s
        self._files: list[IO[str]] = []
        self._steps_file = self._requests_file = None
        self._pending: list[str] = []        # request lines not yet written: they go after the steps they name
        self._pending_bytes = 0
        if out_dir is not None:
            out = Path(out_dir)
            self._steps_file = open(out / "steps.jsonl", "a", encoding="utf-8", buffering=1 << 20)
            self._requests_file = open(out / "requests.jsonl", "a", encoding="utf-8", buffering=1 << 20)
            self._files = [self._steps_file, self._requests_file]
        self._next_flush = time.monotonic() + flush_s
        self._step_line = "{{" + ",".join(f'"{name}":{{}}' for name in STEP_FIELDS) + "}}\n"

    def step(self, row: tuple) -> None:
        """One step, a tuple in STEP_FIELDS order."""
        self._rows.append(row)
        if len(self._rows) >= PACK_ROWS:
            self._pack()
        if self._steps_file is not None:
            self._steps_write(self._step_line.format(*map(_json_number, row)))

    def steps_block(self, columns: list) -> None:
        """Many steps at once: per STEP_FIELDS column either one value for all of them or a numpy array (floats
        must be finite: the caller checks its arrays, where it is cheap; energy may be None for all)."""
        n = max(len(c) for c in columns if isinstance(c, np.ndarray))
        self._table.append(n, columns)
        if self._steps_file is not None:
            # bake the columns that hold one value into the line template: formatting numbers is the cost
            parts, varying = [], []
            for name, values in zip(STEP_FIELDS, columns):
                if isinstance(values, np.ndarray):
                    parts.append(f'"{name}":{{}}')
                    varying.append(values.tolist())
                else:
                    parts.append(f'"{name}":{_json_number(values)}')
            fmt = ("{{" + ",".join(parts) + "}}\n").format  # str() of a finite float is its repr: valid JSON
            self._steps_write("".join(fmt(*row) for row in zip(*varying)))

    def _pack(self) -> None:
        if self._rows:
            columns = list(zip(*self._rows))
            columns[-1] = [np.nan if v is None else v for v in columns[-1]]  # energy_j
            self._table.append(len(self._rows), columns)
            self._rows = []

    def steps_frame(self) -> "pd.DataFrame":
        """Every step recorded so far, ordered by replica and step, STEP_FIELDS columns (energy_j NaN where the
        engine gave none)."""
        self._pack()
        return self._table.frame()

    def request(self, record: dict[str, Any]) -> None:
        self.requests.append(record)
        if self._requests_file is not None:
            line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
            self._pending.append(line)
            self._pending_bytes += len(line)
            if self._pending_bytes >= 1 << 20:
                self._flush()
            else:
                self._maybe_flush()

    def _steps_write(self, text: str) -> None:
        _written(self._steps_file, text, flush=False)   # the buffer may go to disk here: a full disk names the file
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() >= self._next_flush:
            self._flush()

    def _flush(self) -> None:
        """The steps to disk, then the requests waiting for them."""
        self._next_flush = time.monotonic() + self.flush_s
        if self._steps_file is None:
            return
        _written(self._steps_file, "")
        _written(self._requests_file, "".join(self._pending))
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        try:
            if self._steps_file is not None:
                self._flush()
        finally:
            for f in self._files:
                try:
                    f.close()
                except OSError:
                    pass            # the flush above said what failed; a second error would hide it
            self._files = []
            self._steps_file = self._requests_file = None


def _written(f: IO[str], text: str, flush: bool = True) -> None:
    """Write ``text`` to ``f`` (and flush it); a failure (a full disk) is an OSError naming the file."""
    try:
        if text:
            f.write(text)
        if flush:
            f.flush()
    except OSError as exc:
        raise OSError(exc.errno, f"{f.name}: cannot write: {exc.strerror or exc} (the records written so far are "
                                 f"kept; free space, then go on with replay run --resume)") from None


def _json_number(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite number in a record: {value!r}")
    return repr(value)


def run_clock(env: simpy.Environment) -> Callable[[], float]:
    """The time now on the run clock. Simulated: ``env.now``. Real time (``simpy.rt``): the wall clock mapped
    onto the run clock, since ``env.now`` still shows an event's due time when a blocking engine step made it
    late: the difference is the arrival lag the summary reports."""
    if isinstance(env, simpy.rt.RealtimeEnvironment):
        return lambda: max(env.now, env.env_start + (time.monotonic() - env.real_start) / env.factor)
    return lambda: env.now


class Completions:
    """What the arrival processes wait on, kept alike by every replica's loop (``ServerLoop`` here, the HTTP
    client's ``ClientLoop``): an event per request that fires when it ends, ``close`` when no more will come, and
    a wake-up for the loop's own process."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.events: dict[str, simpy.Event] = {}
        self.done: set[str] = set()
        self.closed = False
        self._wake: simpy.Event | None = None

    def finished(self, request_id: str) -> simpy.Event:
        if request_id in self.done:
            event = self.env.event()
            event.succeed()
            return event
        if request_id not in self.events:
            self.events[request_id] = self.env.event()
        return self.events[request_id]

    def close(self) -> None:
        """No more requests will come: the loop ends once what is in flight has ended."""
        self.closed = True
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _completed(self, request_id: str) -> None:
        """The request is over: whoever waits on it goes on."""
        self.done.add(request_id)
        event = self.events.pop(request_id, None)
        if event is not None:
            event.succeed()


class ServerLoop(Completions):
    """The server loop of one replica: a SimPy process driving ``engine`` and feeding ``recorder``."""

    def __init__(self, env: simpy.Environment, engine: Engine, recorder: Recorder, replica: int = 0,
                 on_finish: Callable[[RequestRecord], None] | None = None,
                 next_arrival: Callable[[], float] | None = None, first_step: int = 0):
        """``next_arrival()``: the earliest time a new request may reach this replica (default: the next event
        of the environment, always safe; the runner passes the arrival schedule when it is known).
        ``first_step``: the index of the first step (a resumed run goes on from where its records stop)."""
        super().__init__(env)
        self.engine, self.recorder, self.replica = engine, recorder, replica
        self.next_arrival = next_arrival
        self.clock = run_clock(env)
        self.on_finish = on_finish
        self.pending: list[RequestRecord] = []
        self.records: dict[str, RequestRecord] = {}
        self.outstanding = 0
        self.busy_s = 0.0
        self.steps = 0
        self.energy_known = True   # every step so far came with the engine's energy
        self.first_step = first_step
        self.per_token_sum = array("d", bytes(8 * first_step))  # [k]: sum over steps ..k of energy / tokens
        self.process = env.process(self._run())

    # --- what arrival processes and the router call ------------------------------------------------------

    def submit(self, request: Request, scheduled_s: float) -> None:
        if request.id in self.records or request.id in self.done:
            raise ValueError(f"request id {request.id!r} submitted twice: ids must be unique in a run")
        record = RequestRecord(request, self.replica, scheduled_s, self.clock())
        self.records[request.id] = record
        self.pending.append(record)
        self.outstanding += 1
        self._poke()

    # --- the loop ----------------------------------------------------------------------------------------

    def _settle(self, record: RequestRecord) -> None:
        """Add the energy of the decode stretch that ends at ``record.last_step`` (see ``_run``)."""
        if record.run_start >= 0 and self.energy_known:
            record.energy_j += self.per_token_sum[record.last_step] - record.mark

    def _end(self, record: RequestRecord) -> None:
        rid = record.request.id
        self._settle(record)
        del self.records[rid]
        self.outstanding -= 1
        self.recorder.request(record.to_dict(self.energy_known))
        if self.on_finish is not None:
            self.on_finish(record)
        self._completed(rid)

    def _admit_pending(self) -> None:
        pending, self.pending = self.pending, []
        for record in pending:
            reason = self.engine.add(record.request)
            if reason is not None:
                record.status, record.reason = "rejected", reason
                self._end(record)

    def _run(self) -> Generator[simpy.Event, Any, None]:
        env, engine, records, replica = self.env, self.engine, self.records, self.replica
        record_step = self.recorder.step
        next_arrival = self.next_arrival or env.peek
        clock = self.clock
        k = self.first_step
        while True:
            while True:
                if self.pending:
                    self._admit_pending()
                if engine.has_work():
                    break
                if self.closed:
                    return
                self._wake = env.event()
                yield self._wake
                self._wake = None
            behind = clock() - env.now  # real time only: catch up with the wall clock (due arrivals join)
            if behind > 0:
                yield env.timeout(behind)
                if self.pending:
                    self._admit_pending()
            start_s = env.now
            step = engine.step(next_arrival() - start_s)
            yield env.timeout(step.duration_s)
            end_s = env.now
            self.busy_s += end_s - start_s
            self.steps = k + 1
            shape = step.shape
            energy = step.energy_j
            km1 = k - 1
            # Energy is split by tokens. A decode's share is the step's energy per token, so a request's decode
            # energy over steps a..b is per_token_sum[b] - per_token_sum[a - 1], added when its stretch of
            # decodes ends (_settle): no per-request work per decode step.
            if energy is not None:
                per_token = energy / shape.tokens if shape.tokens else 0.0
                sums = self.per_token_sum
                sums.append((sums[-1] if sums else 0.0) + per_token)
                for rid, n in zip(step.prefilled, step.prefill_sizes):
                    r = records[rid]
                    r.energy_j += per_token * n
                    r.prefill_steps.append([k, n])
            else:
                self.energy_known = False
                for rid, n in zip(step.prefilled, step.prefill_sizes):
                    records[rid].prefill_steps.append([k, n])
            for rid in step.decoded:
                r = records[rid]
                if r.last_step == km1:
                    r.last_step = k
                else:  # decodes resume after a gap: settle the last stretch, open a new one
                    self._settle(r)
                    r.mark = self.per_token_sum[km1] if self.energy_known and km1 >= 0 else 0.0
                    r.emit(k)
            for rid in step.completed:  # a prompt (or recompute) done: its token opens a stretch of decodes
                r = records[rid]
                self._settle(r)
                r.mark = self.per_token_sum[k] if self.energy_known else 0.0
                r.emit(k)
            for rid in step.first_token:
                records[rid].first_token_s = end_s
            for rid, cached in zip(step.admitted, step.admitted_cached):
                r = records[rid]
                if r.admitted_s is None:        # the first admission's hits: a re-admission after a
                    r.admitted_s = start_s      # preemption finds the request's own blocks, not a shared prefix
                    r.cached_tokens = cached
            for rid in step.preempted:
                records[rid].preemptions += 1
            record_step((replica, k, start_s, end_s, end_s - start_s, shape.prefill_tokens, shape.decode_tokens,
                         shape.num_seqs, shape.sampled_seqs, shape.attn_pairs, shape.kv_read_tokens, step.running,
                         step.waiting, step.kv_blocks_used, step.kv_blocks_total, len(step.preempted), energy))
            for rid in step.finished:
                r = records[rid]
                r.finished_s, r.status = end_s, "finished"
                self._end(r)
            k += 1
            if step.run is not None:
                yield from self._decode_run(step, k)
                k += step.run.count

    def _decode_run(self, step: Step, k0: int) -> Generator[simpy.Event, Any, None]:
        """Record the DecodeRun after ``step`` as steps k0, k0 + 1, ...: the same rows and request updates as
        stepping one at a time, paid for once."""
        run, env, records = step.run, self.env, self.records
        t0 = t = env.now
        ends = []
        for d in run.durations_s.tolist():  # added one at a time, as single steps would be: the same bits
            t += d
            ends.append(t)
        yield from wait_until(env, t)
        ends = np.array(ends)
        starts = np.concatenate(([t0], ends[:-1]))
        self.busy_s += env.now - t0
        last = k0 + run.count - 1
        self.steps = last + 1
        batch = len(step.decoded)
        if run.energies_j is not None and self.energy_known:
            sums = self.per_token_sum
            total = sums[-1]
            for e in run.energies_j.tolist():
                total += e / batch
                sums.append(total)
        else:
            self.energy_known = False
        for rid in step.decoded:
            records[rid].last_step = last  # they emitted in step k0 - 1 too: their open stretch goes on
        count = run.count
        if not (np.isfinite(ends).all() and (run.energies_j is None or np.isfinite(run.energies_j).all())):
            raise ValueError(f"replica {self.replica}: non-finite step time or energy in steps {k0}..{last}")
        if run.running == step.running:
            running = step.running
        else:
            running = np.full(count, step.running, dtype=np.int64)
            running[-1] = run.running
        kv = run.kv_read_tokens
        self.recorder.steps_block([
            self.replica, np.arange(k0, k0 + count, dtype=np.int64), starts, ends, ends - starts, 0, batch, batch,
            batch, kv.astype(np.float64), kv, running, run.waiting, run.kv_blocks_used, step.kv_blocks_total, 0,
            run.energies_j])
        end_s = env.now
        for rid in run.finished:
            r = records[rid]
            r.finished_s, r.status = end_s, "finished"
            self._end(r)


class Router:
    """Sends each arriving request to one replica's server loop (the Server the arrival processes see).

    ``round-robin``: in turn. ``least-outstanding``: the replica with the fewest submitted-and-unfinished
    requests, the lowest index on ties.
    """

    def __init__(self, loops: list[ServerLoop], policy: str = "round-robin"):
        if policy not in ROUTERS:
            raise ValueError(f"unknown router {policy!r}: expected one of {', '.join(ROUTERS)}")
        if not loops:
            raise ValueError("a router needs at least one replica")
        self.loops, self.policy = loops, policy
        self.owner: dict[str, ServerLoop] = {}
        self._turn = itertools.cycle(loops)

    def submit(self, request: Request, scheduled_s: float) -> None:
        if len(self.loops) == 1:
            loop = self.loops[0]
        elif self.policy == "round-robin":
            loop = next(self._turn)
        else:
            loop = min(self.loops, key=lambda lp: lp.outstanding)
        self.owner[request.id] = loop
        loop.submit(request, scheduled_s)

    def finished(self, request_id: str) -> simpy.Event:
        return self.owner[request_id].finished(request_id)

    def close(self) -> None:
        for loop in self.loops:
            loop.close()


ROUTERS = ("round-robin", "least-outstanding")
