"""The estimates a report sets beside a run's energy: what the estimators are told about the run (model,
hardware, dtype, tp, its steps), which ones run by default, and running them so that one that cannot estimate
says why instead of stopping the report.

Choices (a demanding user's defaults):

- Hardware: a simulated run's ``gpu``; a real-engine run on vLLM's CPU build (config.yaml's
  ``resolved_engine.platform`` is "cpu") the ``cpu`` entry of replay/specs/hardware.yaml, whatever ``--gpu``
  said (the option only names a GPU, and the run had none); a real-engine run on a GPU the platform's name
  where hardware.yaml knows it, else the run's ``gpu`` option. ``gpu=`` overrides all of it. The report always
  says which hardware the estimates assumed and why.
- Model: config.yaml's ``model`` (a shipped name or a config directory), else (missing, or a relative directory
  not found from here) the resolved engine's.
- Default estimators: flops and roofline ([Na25] theoretical; the ideal roofline at the run's own batches);
  with ``theta`` the [SS26] form it was fitted for (sweetspot for eq5, sweetspot-flops for eq4, b1..b4),
  without it sweetspot where [SS26] Table 5 has the model; binned where batch energies are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from replay.estimate.estimators import ESTIMATORS, FORM_ESTIMATOR, Estimate, EstimateContext, estimate
from replay.estimate.forms import PRESETS, Theta
from replay.report.rundir import RunData
from replay.specs import Hardware, hardware, model

__all__ = ["FORM_ESTIMATOR", "Assumed", "default_estimators", "parse_estimators", "run_context", "run_estimates"]


@dataclass(frozen=True)
class Assumed:
    """What the estimates assume about the run, and why (one line each), for the report."""

    model: str
    hardware: str
    hardware_name: str
    dtype: str
    tp: int
    peak: str
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"model": self.model, "hardware": self.hardware, "hardware_name": self.hardware_name,
                "dtype": self.dtype, "tp": self.tp, "peak": self.peak, "notes": list(self.notes)}


def _hardware(run: RunData, override: str | None) -> tuple[Hardware, str]:
    """The hardware the estimates assume and a line saying why."""
    if override:
        return hardware(override), f"hardware {override!r} as given (--gpu)"
    engine = run.engine
    gpu = run.config.get("gpu") or engine.get("gpu")
    if engine.get("engine") in ("vllm", "server"):  # real engines: in-process, or a server
        platform = engine.get("platform")
        if platform == "cpu":
            hw = hardware("cpu")
            return hw, (f"the run was on vLLM's CPU build, so the estimates assume hardware.yaml's 'cpu' entry "
                        f"({hw.name}), not the --gpu option ({gpu}); --gpu NAME to assume another")
        if platform:
            try:
                return hardware(str(platform)), f"the run's device {platform!r} (config.yaml resolved_engine)"
            except ValueError:
                pass
        if not gpu:
            raise ValueError(f"{run.name}: config.yaml names no gpu and the engine's platform {platform!r} is not "
                             "in replay/specs/hardware.yaml; give the hardware (--gpu NAME)")
        why = (f"the engine's platform {platform!r} is not a hardware.yaml name" if platform else
               "a server reports no device")
        return hardware(str(gpu)), f"the run's --gpu option {gpu!r} ({why}); --gpu NAME to assume another"
    if not gpu:
        raise ValueError(f"{run.name}: config.yaml: missing key 'gpu'; give the hardware (--gpu NAME)")
    return hardware(str(gpu)), f"the simulated engine's hardware {gpu!r}"


def run_context(run: RunData, theta: Theta | None = None, batch_energies: pd.DataFrame | None = None,
                peak: str = "dense", gpu: str | None = None) -> tuple[EstimateContext, Assumed]:
    """The estimator context of ``run`` (its model, the hardware chosen as the module docstring says, dtype, tp,
    its steps for the roofline) and what it assumes."""
    names = [str(n) for n in (run.config.get("model"), run.engine.get("model")) if n]
    if not names:
        raise ValueError(f"{run.name}: config.yaml: missing key 'model'; the estimates need the run's model")
    try:
        spec = model(names[0])
    except ValueError:
        if len(names) == 1 or names[1] == names[0]:
            raise
        spec = model(names[1])   # e.g. a relative model directory; the engine recorded where it resolved it
    hw, why = _hardware(run, gpu)
    dtype = run.config.get("dtype") or None
    tp = int(run.config.get("tp") or 1)
    ctx = EstimateContext(model=spec, hardware=hw, dtype=dtype, tp=tp,
                          steps=run.steps if len(run.steps) else None, theta=theta,
                          batch_energies=batch_energies, peak=peak)
    notes = [why]
    if theta is not None:
        notes.append(f"[SS26] coefficients: form {theta.form}, {theta.source}")
    if batch_energies is not None:
        notes.append(f"[Na25] batch energies: {len(batch_energies)} measured full batches")
    return ctx, Assumed(spec.key, hw.key, hw.name, ctx.dtype_name, tp, peak, tuple(notes))


def default_estimators(ctx: EstimateContext) -> list[str]:
    """flops and roofline; the form of ``ctx.theta`` (else sweetspot where a Table 5 preset exists); binned
    where batch energies are given."""
    names = ["flops", "roofline"]
    if ctx.theta is not None:
        names.append(FORM_ESTIMATOR[ctx.theta.form])
    elif ctx.model.key in PRESETS:
        names.append("sweetspot")
    if ctx.batch_energies is not None:
        names.append("binned")
    return names


def parse_estimators(names: tuple[str, ...] | list[str] | None, ctx: EstimateContext) -> list[str]:
    """The estimators asked for: none -> the defaults; "all" -> every one; else the names given, in order,
    once each. An unknown name is an error listing the known ones."""
    if not names:
        return default_estimators(ctx)
    out: list[str] = []
    for name in names:
        chosen = list(ESTIMATORS) if name == "all" else [name]
        for n in chosen:
            if n not in ESTIMATORS:
                raise ValueError(f"--estimator {n!r}: unknown; expected one of {', '.join(ESTIMATORS)} or all")
            if n not in out:
                out.append(n)
    return out


def run_estimates(requests: pd.DataFrame, ctx: EstimateContext, names: list[str]) -> dict[str, Estimate]:
    """Each estimator's Estimate of ``requests``. One that raises ValueError (the model lacks a shape it needs,
    the hardware a peak for the dtype) becomes an Estimate with no numbers and the error as its reason: a report
    shows why, never a 0."""
    out = {}
    for name in names:
        try:
            out[name] = estimate(name, requests, ctx)
        except ValueError as exc:
            out[name] = Estimate(name, name, np.full(len(requests), np.nan), None, str(exc), {})
    return out
