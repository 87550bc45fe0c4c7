"""Which step-time and power parameters a simulated run uses, and where they come from.

Why: the simulator's defaults are a roofline and a power model resting on published figures; where replay ships a
calibration fitted on measured runs of a GPU (``replay/specs/calibrations/<gpu>-perf.yaml`` and
``<gpu>-power.yaml``, each with its provenance in ``meta``), ``--engine sim --gpu <gpu>`` starts from that measured
behaviour instead. ``--perf FILE`` / ``--power FILE`` override it, ``--perf none`` / ``--power none`` keep the
uncalibrated defaults, and every run says which it used (summary.json ``engine.calibration``, the run's output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replay.engines.sim.perf import PerfParams, load_perf
from replay.engines.sim.power import PowerParams
from replay.engines.sim.power_fit import load_power
from replay.files import read_yaml

__all__ = ["NONE", "SHIPPED_DIR", "Calibration", "calibration_line", "choose_calibration", "shipped_calibration"]

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "specs" / "calibrations"
NONE = "none"          # --perf none / --power none: the uncalibrated defaults
_LOADERS = {"perf": load_perf, "power": load_power}


@dataclass(frozen=True)
class Calibration:
    """The parameters a simulated run uses (None: the defaults) and, for each, a line saying where they come
    from."""

    perf: PerfParams | None
    power: PowerParams | None
    perf_from: str
    power_from: str

    def to_dict(self) -> dict[str, str]:
        return {"perf": self.perf_from, "power": self.power_from}



def calibration_line(sources: dict[str, str]) -> str:
    """One line for a run's output from ``Calibration.to_dict()`` (as summary.json keeps it)."""
    if sources["perf"] == sources["power"]:
        return f"calibration: step time and power: {sources['perf']}"
    return f"calibration: step time: {sources['perf']}; power: {sources['power']}"


def shipped_calibration(gpu: str, kind: str) -> Path | None:
    """The calibration file replay ships for ``gpu`` (a hardware key) of ``kind`` (perf or power), or None."""
    path = SHIPPED_DIR / f"{gpu}-{kind}.yaml"
    return path if path.exists() else None


def _provenance(path: Path, model: str) -> str:
    """'shipped for h200 (fitted on llama-3.1-8b, <how it was measured>)' from the file's meta (the same words
    for the perf and the power file of one GPU, so a run's output says it once)."""
    doc = read_yaml(path)
    meta: dict[str, Any] = doc.get("meta") or {} if isinstance(doc, dict) else {}
    fitted = meta.get("model")
    where = f"fitted on {fitted}" if fitted else "fitted"
    if meta.get("measured"):
        where += f", {meta['measured']}"
    if fitted and fitted != model:
        where += f"; used here for {model}"
    return f"shipped for {meta.get('gpu', path.name.split('-')[0])} ({where}; replay/specs/calibrations)"


def _one(kind: str, option: str | None, gpu: str, model: str) -> tuple[Any, str]:
    if option is not None and option.strip().lower() == NONE:
        return None, f"uncalibrated defaults (--{kind} none)"
    if option is not None:
        return _LOADERS[kind](option), f"--{kind} {option}"
    path = shipped_calibration(gpu, kind)
    if path is None:
        what = "roofline" if kind == "perf" else "power model"
        return None, f"uncalibrated {what} defaults (replay ships no calibration for {gpu})"
    return _LOADERS[kind](path), _provenance(path, model)


def choose_calibration(perf: str | None, power: str | None, gpu: str, model: str) -> Calibration:
    """The step-time and power parameters of a simulated run of ``model`` on ``gpu`` (hardware and model keys):
    the files given, else the shipped calibration for the GPU, else the defaults; ``none`` keeps the defaults."""
    perf_params, perf_from = _one("perf", perf, gpu, model)
    power_params, power_from = _one("power", power, gpu, model)
    return Calibration(perf_params, power_params, perf_from, power_from)
