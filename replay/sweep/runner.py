"""Running a sweep's points, here or on Ray, going on from where an earlier attempt stopped.

A point's state is read from its directory: ``summary.json`` -> done (skipped); ``error.txt`` -> failed (run
again from the start); ``config.yaml`` without either -> interrupted (``replay.run.resume`` goes on with it);
otherwise not started. A point that raises is recorded as failed (``error.txt``: the message, then the
traceback) and the sweep goes on, because in an [Na25] batch-size sweep the largest batches are expected to
run out of memory; Ctrl-C (KeyboardInterrupt) stops the sweep, keeping what each point recorded.

The real engine (vLLM's in-process engine) allows one engine per process, so here each ``engine=vllm`` point
runs in a fresh spawned process; simulated points run in this process. On Ray each point is a task.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from replay.config import RunConfig
from replay.files import write_atomic
from replay.run import choose_engine, execute, resume
from replay.sweep.grid import (
    DONE,
    ERROR_FILE,
    FAILED,
    INTERRUPTED,
    POINT_TRACE,
    Point,
    SweepSpec,
    load_sweep,
    point_state,
    save_or_check,
)
from replay.sweep.table import RESULTS_FILE, results_table
from replay.trace.synth import LengthDist, synthesize
from replay.trace.writers import write_trace

__all__ = ["SweepResult", "attempt", "record_failure", "resume_sweep", "run_sweep"]

def point_lengths(spec: SweepSpec, point: Point) -> tuple[int, int, int] | None:
    """(requests, n_in, n_out) of a synthetic point; None for a point of a trace sweep."""
    if not spec.synthetic:
        return None
    return spec.requests, point.value("n_in"), point.value("n_out")


def concrete(config: RunConfig, lengths: tuple[int, int, int] | None) -> tuple[RunConfig, list[str]]:
    """A point's config as it will run, with a line for each choice made for the user: ``--engine auto``
    made concrete where the point runs (``replay.run.choose_engine``); a synthetic point's ``limit`` is its
    request count, so the real engine's default bound on a CPU does not cut what --requests asked for."""
    if lengths is not None and config.limit is None:
        config = replace(config, limit=lengths[0])
    return choose_engine(config)


def _run_point(config: RunConfig, lengths: tuple[int, int, int] | None) -> None:
    """Bring one point to its summary.json: resume it when interrupted, else run it from the start (a failed
    attempt's files replaced); a synthetic point first writes its trace of fixed-length requests."""
    out = Path(config.out)
    state = point_state(out)
    if state == DONE:
        return
    (out / ERROR_FILE).unlink(missing_ok=True)  # a retry interrupted in turn is resumed, not started over
    if state == INTERRUPTED:
        resume(out, progress=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    if lengths is not None and not (out / POINT_TRACE).exists():
        requests, n_in, n_out = lengths
        workload = synthesize(requests=requests, input=LengthDist("const", n_in), output=LengthDist("const", n_out),
                              arrival="none", seed=config.seed, source=f"sweep n_in={n_in} n_out={n_out}")
        write_trace(workload, out / POINT_TRACE)
    config, notes = concrete(config, lengths)
    execute(config, force=True, progress=False, choices=notes)


def attempt(config: dict[str, Any], lengths: tuple[int, int, int] | None) -> tuple[str | None, float]:
    """Run one point (``config``: its RunConfig as a dict, so the call pickles for a spawned process or a Ray
    task): (None, wall seconds) when it finished, or (the error's first line, wall seconds) with the error
    recorded in the point's error.txt. KeyboardInterrupt is not caught."""
    run = RunConfig.from_dict(config)
    t0 = time.perf_counter()
    try:
        _run_point(run, lengths)
        return None, time.perf_counter() - t0
    except Exception as exc:
        message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        record_failure(Path(run.out), message, traceback.format_exc())
        return message.splitlines()[0] if message else type(exc).__name__, time.perf_counter() - t0


def record_failure(out: Path, message: str, trace: str) -> None:
    """Mark a point failed: its error.txt holds the message, a blank line, then the traceback."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / ERROR_FILE, f"{message}\n\n{trace}")


def _in_fresh_process(config: dict[str, Any], lengths: tuple[int, int, int] | None) -> tuple[str | None, float]:
    """``attempt`` in a new spawned process (one vLLM engine per process); a process that dies is a failure."""
    t0 = time.perf_counter()
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(attempt, config, lengths).result()
    except BrokenProcessPool as exc:
        message = f"the point's process died ({exc}); out of memory?"
        record_failure(Path(config["out"]), message, "")
        return message, time.perf_counter() - t0


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its spec, the results table (one row per point, also in results.csv) and the points
    that failed this time or earlier (their errors are in the table's ``error`` column)."""

    spec: SweepSpec
    table: pd.DataFrame
    failed: tuple[str, ...]

    @property
    def csv(self) -> Path:
        return Path(self.spec.out) / RESULTS_FILE


def run_sweep(spec: SweepSpec, *, ray: str | None = None, isolate: bool | None = None,
              echo: Callable[[str], None] | None = None) -> SweepResult:
    """Run every point of ``spec`` not yet done, then write and return the results table.

    The first call writes ``sweep.yaml``; a later call with the same spec goes on (see the module docstring),
    with another spec it is an error. ``ray``: a Ray address (``auto``, ``host:port``, ``ray://...``, or
    ``local`` to start Ray on this machine) to run the points as Ray tasks; None: one after another here.
    ``isolate``: run each point in a fresh process (default: only real-engine points). ``echo``: progress
    lines (one per point as it finishes)."""
    say = echo or (lambda _line: None)
    save_or_check(spec)
    points = spec.points()
    todo = [p for p in points if point_state(p.config.out) != DONE]
    states = [point_state(p.config.out) for p in todo]
    say(f"sweep of {len(points)} point(s) in {spec.out}: {len(points) - len(todo)} done already"
        + "".join(f", {states.count(s)} {s}" for s in (INTERRUPTED, FAILED) if states.count(s))
        + f", {len(todo)} to run")
    if todo and ray is None:
        for line in concrete(todo[0].config, point_lengths(spec, todo[0]))[1]:
            say(line)
    if ray is not None:
        from replay.sweep.on_ray import run_on_ray
        outcomes = run_on_ray([(p, point_lengths(spec, p)) for p in todo], ray, say)
    else:
        outcomes = _run_here(spec, todo, isolate)
    for k, (point, error, wall_s) in enumerate(outcomes, 1):
        say(f"[{k}/{len(todo)}] {point.name}: " + (f"failed after {wall_s:.1f} s: {error}" if error
                                                   else f"done in {wall_s:.1f} s"))
    table = results_table(spec)
    _write_csv(table, Path(spec.out) / RESULTS_FILE)
    failed = tuple(table.loc[table["status"] == FAILED, "dir"])
    return SweepResult(spec, table, failed)


def resume_sweep(out: str | Path, *, ray: str | None = None, isolate: bool | None = None,
                 echo: Callable[[str], None] | None = None) -> SweepResult:
    """Go on with the sweep in ``out`` as its sweep.yaml records it (``run_sweep`` of the same spec)."""
    return run_sweep(load_sweep(out), ray=ray, isolate=isolate, echo=echo)


def _run_here(spec: SweepSpec, todo: list[Point], isolate: bool | None) -> Iterator[tuple[Point, str | None, float]]:
    for point in todo:
        lengths = point_lengths(spec, point)
        fresh = isolate if isolate is not None else concrete(point.config, lengths)[0].engine == "vllm"
        run = _in_fresh_process if fresh else attempt
        error, wall_s = run(point.config.to_dict(), lengths)
        yield point, error, wall_s


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    write_atomic(path, table.to_csv(index=False))
