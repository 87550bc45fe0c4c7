"""Calibration from recorded runs: ``replay calibrate --perf`` fits the simulated engine's step-time model to
the step records of runs (a real engine's, so the simulator learns its speed), with in-sample and held-out
error, and writes the parameters ``replay run --perf`` reads.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from replay.engines.sim.perf import SHAPE_COLUMNS, fit_perf, save_perf
from replay import specs

__all__ = ["calibrate_perf", "read_steps"]


def _run_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return data if isinstance(data, dict) else {}


def read_steps(run_dir: str | Path) -> pd.DataFrame:
    """A run directory's ``steps.jsonl`` as a frame (errors name the file and the missing column)."""
    path = Path(run_dir) / "steps.jsonl"
    if not path.exists():
        raise ValueError(f"{run_dir}: no steps.jsonl (is it a run directory?)")
    try:
        steps = pd.read_json(path, lines=True)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON Lines: {exc}") from None
    for column in ("duration_s", *SHAPE_COLUMNS):
        if column not in steps.columns:
            raise ValueError(f"{path}: missing field {column!r} in the step records")
    return steps


def calibrate_perf(run_dirs: list[str | Path], model: str | None = None, gpu: str | None = None,
                   tp: int | None = None, out: str | Path | None = None) -> str:
    """Fit the step-time model to the steps of ``run_dirs`` (one model, GPU and tp), write the parameters to
    ``out`` (default ``perf.yaml`` in the first run directory) and return a short report."""
    dirs = [Path(d) for d in run_dirs]
    frames, seen = [], set()
    for d in dirs:
        steps = read_steps(d)
        cfg = _run_config(d)
        setting = (model or cfg.get("model"), gpu or cfg.get("gpu"), tp or cfg.get("tp") or 1)
        if setting[0] is None or setting[1] is None:
            raise ValueError(f"{d}: no config.yaml naming the model and gpu; pass --model and --gpu")
        seen.add(setting)
        frames.append(steps)
    if len(seen) > 1:
        raise ValueError("the runs differ in model, GPU or tp ("
                         + "; ".join(f"{m} on {tp_} x {g}" for m, g, tp_ in sorted(seen, key=str))
                         + "): fit one setting at a time")
    (model_name, gpu_name, tp_) = seen.pop()
    steps = pd.concat(frames, ignore_index=True)
    fit = fit_perf(steps, specs.model(model_name), specs.hardware(gpu_name), tp=int(tp_))
    target = Path(out) if out is not None else dirs[0] / "perf.yaml"
    save_perf(target, fit, {"model": model_name, "gpu": gpu_name, "tp": int(tp_),
                            "runs": [str(d) for d in dirs], "steps": int(len(steps))})
    p = fit.params
    held = (f"{fit.holdout_mape:.1f}% on {fit.holdout_n} held-out steps" if fit.holdout_mape is not None
            else "not computed (fewer than 20 steps)")
    return "\n".join([
        f"fitted the step-time model of {model_name} on {tp_} x {gpu_name} to {fit.n_steps:,} steps "
        f"from {len(dirs)} run(s)",
        f"  compute efficiency {p.compute_efficiency:.4g}, memory efficiency {p.memory_efficiency:.4g}, "
        f"overhead {p.overhead_s * 1e3:.4g} ms/step, {p.per_seq_s * 1e6:.4g} us/sequence",
        f"  step-time error: in-sample MAPE {fit.mape:.1f}% (median {fit.median_ape:.1f}%), held-out MAPE {held}",
        f"wrote {target}",
    ])
