"""A sweep's points as Ray tasks, so a sweep spreads over a cluster (``replay sweep --ray ADDRESS``).

Each point is one task running ``replay.sweep.runner.attempt`` (the same function as a local sweep, so the
run directories and the table are the same). A real-engine point (or ``--engine auto``, which each worker
makes concrete) asks for ``tp`` GPUs where the cluster has GPUs and runs in a worker used for that task alone
(``max_calls=1``: one vLLM engine per process); a simulated point asks for none.
Results are gathered as they finish. Ray is optional: imported here only, with a clear error when missing.

The cluster must see the same files: the sweep directory (and the trace) on a filesystem every node mounts,
at the same path, and replay installed on every node. Paths are made absolute before they are sent.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from replay.sweep.grid import POINT_TRACE, Point

__all__ = ["import_ray", "run_on_ray"]


def import_ray():
    """The ray module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'replay-energy[ray]' (or pip install ray)") from None
    return ray


def _task_options(point: Point, cluster_gpus: float) -> dict[str, Any]:
    """num_gpus: tp for a real-engine point (or engine auto) where the cluster has GPUs, else 0; such a
    task's worker is used once (a fresh process per vLLM engine)."""
    vllm = point.config.engine != "sim"  # auto may be the real engine on the worker
    return {"num_gpus": point.config.tp if vllm and cluster_gpus > 0 else 0, "max_calls": 1 if vllm else 0}


def _absolute(point: Point, synthetic: bool) -> dict[str, Any]:
    """The point's config with its paths (out, trace, perf, power, a model given as a directory) absolute (a Ray
    worker's working directory is not ours)."""
    c = point.config
    out = Path(c.out).resolve()
    trace = str(out / POINT_TRACE) if synthetic else str(Path(c.trace).resolve())
    perf, power = (str(Path(f).resolve()) if f and f.strip().lower() != "none" else f for f in (c.perf, c.power))
    model = str(Path(c.model).expanduser().resolve()) if c.model and Path(c.model).expanduser().exists() else c.model
    return replace(c, out=str(out), trace=trace, perf=perf, power=power, model=model).to_dict()


def run_on_ray(points: list[tuple[Point, tuple[int, int, int] | None]], address: str,
               say: Callable[[str], None]) -> Iterator[tuple[Point, str | None, float]]:
    """Run ``points`` (each with its synthetic lengths, or None) as Ray tasks on the cluster at ``address``
    (``local``: start Ray on this machine; ``auto``: the running cluster; else its address), yielding
    (point, error or None, wall seconds) as each finishes. Uses a Ray already initialised in this process
    as it is; shuts down only a Ray it started. Ctrl-C cancels the tasks not finished."""
    ray = import_ray()
    from replay.sweep.runner import attempt, record_failure

    started = not ray.is_initialized()
    if started:
        ray.init(**({"include_dashboard": False} if address == "local" else {"address": address}))
    pending: dict = {}
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        engines = {p.config.engine for p, _ in points}
        if "sim" in engines:
            say("ray: simulated points run as CPU tasks (num_gpus=0)")
        if "auto" in engines:
            say("ray: --engine auto is chosen on each worker (the real engine where vLLM is installed there)")
        if engines - {"sim"}:
            say(f"ray: real-engine points ask for --tp GPUs each ({gpus:g} in the cluster)" if gpus > 0 else
                "ray: the cluster has no GPUs: real-engine points run with num_gpus=0 (vLLM's CPU build)")
        tasks: dict[int, Any] = {}  # max_calls -> the remote function (Ray takes max_calls only there)
        for point, lengths in points:
            options = _task_options(point, gpus)
            max_calls = options.pop("max_calls")
            task = tasks.setdefault(max_calls, ray.remote(max_calls=max_calls)(attempt))
            ref = task.options(**options).remote(_absolute(point, lengths is not None), lengths)
            pending[ref] = point
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            point = pending.pop(done[0])
            try:
                error, wall_s = ray.get(done[0])
            except Exception as exc:  # the worker died (out of memory, node lost): Ray's error
                first = (str(exc).splitlines() or [""])[0]
                error, wall_s = f"the Ray task failed: {type(exc).__name__}: {first}", 0.0
                record_failure(Path(point.config.out), error, str(exc))
            yield point, error, wall_s
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
