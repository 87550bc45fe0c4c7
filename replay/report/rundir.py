"""A finished run directory read back for reporting: config.yaml, requests.jsonl, steps.jsonl, summary.json
and, for a measured run, power.csv.

Why a module of its own: every report (``replay report``, the short version ``replay run`` prints) starts from
the same record set, read either from disk (``load_run``) or from the ``RunResult`` a run just returned
(``from_result``), so the rest of the report never knows which.

Errors name the file and what is wrong with it (missing, not JSON, not YAML, a key missing); a run without
summary.json (interrupted) is an error that says how to finish it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from replay.energy.timeline import EnergyTimeline
from replay.files import read_jsonl, read_yaml

__all__ = ["RunData", "energy_kind", "from_result", "load_run", "not_measured_reason", "read_summary"]

ENERGY_KINDS = ("measured", "modelled")


@dataclass(frozen=True, eq=False)
class RunData:
    """One run's records. ``config`` is config.yaml (with ``resolved_engine`` and ``choices``); ``summary`` the
    flat summary (summary.json's "summary": ``replay.report.metrics.Summary.to_dict()``); ``doc`` the whole
    summary.json (meter choice, idle power, attribution); ``timeline`` power.csv, None where the run has none
    (simulated or unmeasured runs)."""

    path: Path | None
    config: dict[str, Any]
    requests: pd.DataFrame
    steps: pd.DataFrame
    summary: dict[str, Any]
    doc: dict[str, Any]
    timeline: EnergyTimeline | None

    @property
    def energy_kind(self) -> str | None:
        """"measured", "modelled" (the simulated engine's power model) or None (not measured)."""
        return energy_kind(self.summary.get("energy_source"))

    @property
    def energy_reason(self) -> str | None:
        """Why there is no energy, for a run without it (never None then)."""
        if self.energy_kind is not None:
            return None
        return not_measured_reason(self.doc)

    @property
    def engine(self) -> dict[str, Any]:
        """The resolved engine (config.yaml's ``resolved_engine``, else summary.json's ``engine``)."""
        info = self.config.get("resolved_engine") or self.doc.get("engine") or {}
        return info if isinstance(info, dict) else {}

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "(this run)"


def energy_kind(source: str | None) -> str | None:
    """The kind of energy a summary's ``energy_source`` names: None (not measured), "modelled" (it says so:
    the simulated engine's power model) or "measured" (a meter)."""
    if source is None:
        return None
    return "modelled" if str(source).lower().startswith("modelled") else "measured"


def not_measured_reason(doc: dict[str, Any]) -> str:
    """Why a run's energy was not measured, from its summary.json document (the summary's reason, else the
    meter's); never empty."""
    summary = doc.get("summary") if isinstance(doc.get("summary"), dict) else {}
    meter = doc.get("meter") if isinstance(doc.get("meter"), dict) else {}
    return summary.get("energy_not_measured_reason") or meter.get("reason") or "no reason recorded"


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's summary.json, checked to hold the ``summary`` mapping with its ``energy_source``. Raises
    ValueError naming the file for a broken one, or the directory (with how to finish it) when there is none."""
    path = Path(run_dir)
    sum_path = path / "summary.json"
    if not sum_path.exists():
        raise ValueError(f"{path}: no summary.json: the run did not finish; go on with: replay run --resume {path}")
    try:
        doc = json.loads(sum_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{sum_path}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        raise ValueError(f"{sum_path}: missing key 'summary' (the run's serving and energy summary)")
    if "energy_source" not in doc["summary"]:
        raise ValueError(f"{sum_path}: missing key 'summary.energy_source'")
    return doc


def _records(path: Path) -> pd.DataFrame:
    """A JSON Lines record file as a frame (an empty file: an empty frame); a bad line is an error naming it."""
    if not path.exists():
        raise ValueError(f"{path}: missing; a run directory holds config.yaml, steps.jsonl, requests.jsonl and "
                         "summary.json")
    return pd.DataFrame(read_jsonl(path))


def _require(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    if len(frame):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing field {missing[0]!r} in the records")


REQUEST_FIELDS = ("id", "status", "input_tokens", "output_tokens", "generated_tokens", "energy_j")
STEP_FIELDS = ("replica", "step", "start_s", "end_s", "duration_s", "prefill_tokens", "decode_tokens")


def load_run(run_dir: str | Path) -> RunData:
    """Read a finished run directory. Raises ValueError naming the directory or the file for a missing
    directory, a missing or broken file, or an interrupted run (no summary.json)."""
    path = Path(run_dir)
    if not path.exists():
        raise ValueError(f"{path}: no such run directory")
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory; expected a run directory (replay run --out DIR)")
    cfg_path = path / "config.yaml"
    if not cfg_path.exists():
        raise ValueError(f"{path}: no config.yaml: not a run directory (replay run --out DIR writes one)")
    config = read_yaml(cfg_path)
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path}: expected a mapping of option: value")
    doc = read_summary(path)
    summary = doc["summary"]
    requests = _records(path / "requests.jsonl")
    _require(requests, path / "requests.jsonl", REQUEST_FIELDS)
    steps = _records(path / "steps.jsonl")
    _require(steps, path / "steps.jsonl", STEP_FIELDS)
    timeline = None
    if (path / "power.csv").exists():
        timeline = EnergyTimeline.from_csv(path / "power.csv", label=str(summary.get("energy_source") or ""))
    return RunData(path, config, requests, steps, summary, doc, timeline)


def from_result(result: Any) -> RunData:
    """The records of a ``replay.run.RunResult`` just returned (no files read, except power.csv where the run
    wrote one: the result does not carry the timeline)."""
    out = Path(result.out) if result.out is not None else None
    timeline = None
    if out is not None and (out / "power.csv").exists():
        timeline = EnergyTimeline.from_csv(out / "power.csv", label=str(result.energy.source or ""))
    config = {**result.config.to_dict(), "resolved_engine": result.engine}
    summary = result.summary.to_dict()
    doc = {"summary": summary, "engine": result.engine,
           "meter": {"reason": result.energy.reason} if result.energy.reason else {}}
    return RunData(out, config, result.requests, result.steps, summary, doc, timeline)

