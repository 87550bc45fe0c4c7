"""Where a run's energy went: idle versus above idle, inside steps versus between them, prefill versus decode.

Definitions:

- ``total_j`` and ``idle_j`` are the run's summary (``energy_total_j``, ``energy_idle_j``: idle power, measured
  before the run or the power model's, times the run's duration). ``idle_share`` = idle / total. No idle
  figure (``--idle-s 0``) leaves the idle fields None with a note, never 0.
- Step energy: each step's joules, from steps.jsonl's ``energy_j`` where the records carry it (the simulated
  engine's power model), else the power.csv timeline over the step's [start_s, end_s]
  (``replay.energy.attribution.step_energies_j``). ``outside_steps_j`` = total - steps (no step running).
- Prefill versus decode: each step's energy split by its tokens, ``prefill_tokens`` against ``decode_tokens``
  (the same rule that splits step energy over requests, so the two views agree), then summed. Splitting by
  FLOPs would give prefill more (a prompt token also attends to the tokens before it); by time a step that
  holds both cannot be split at all (one forward pass runs them together). ``mixed_steps_j`` (the energy of
  steps holding both) says how much of the split rests on the rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from replay.energy.attribution import step_energies_j
from replay.report.rundir import RunData

__all__ = ["EnergyBreakdown", "SPLIT_RULE", "energy_breakdown"]

SPLIT_RULE = "each step's energy split by its prefill vs decode tokens"


@dataclass(frozen=True)
class EnergyBreakdown:
    """Where the energy went (module docstring); every figure None when the run's energy was not measured."""

    kind: str | None                 # measured | modelled | None (not measured)
    reason: str | None               # why not measured
    total_j: float | None
    idle_j: float | None
    idle_share: float | None
    above_idle_j: float | None
    steps_j: float | None
    outside_steps_j: float | None
    prefill_j: float | None
    decode_j: float | None
    prefill_share: float | None      # of step energy
    decode_share: float | None
    mixed_steps_j: float | None      # energy of steps with both prefill and decode tokens
    split: str
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["energy"] = self.kind or "not measured"
        return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _step_energies(run: RunData) -> tuple[np.ndarray | None, str | None]:
    """(joules per step, None) or (None, why not)."""
    steps = run.steps
    if not len(steps):
        return None, "the run has no steps"
    if "energy_j" in steps.columns:
        e = steps["energy_j"].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isfinite(e).all():
            return e, None
    if run.timeline is None:
        return None, "no step energies in steps.jsonl and no power.csv to take them from"
    return step_energies_j(run.timeline, steps), None


def energy_breakdown(run: RunData) -> EnergyBreakdown:
    """Where ``run``'s energy went (module docstring)."""
    kind = run.energy_kind
    none = dict.fromkeys(("total_j", "idle_j", "idle_share", "above_idle_j", "steps_j", "outside_steps_j",
                          "prefill_j", "decode_j", "prefill_share", "decode_share", "mixed_steps_j"))
    if kind is None:
        return EnergyBreakdown(kind=None, reason=run.energy_reason, split=SPLIT_RULE, notes=(), **none)
    s = run.summary
    notes = []
    total = s.get("energy_total_j")
    idle = s.get("energy_idle_j")
    if idle is None:
        why = " (--idle-s 0)" if run.config.get("idle_s") == 0 else ""
        notes.append(f"idle power not measured{why}: no idle share")
    out = dict(none, total_j=total, idle_j=idle, idle_share=_ratio(idle, total),
               above_idle_j=None if idle is None or total is None else total - idle)
    step_j, why = _step_energies(run)
    if step_j is None:
        notes.append(f"no prefill/decode split: {why}")
    else:
        pre = run.steps["prefill_tokens"].to_numpy(np.float64)
        dec = run.steps["decode_tokens"].to_numpy(np.float64)
        work = pre + dec
        with np.errstate(invalid="ignore", divide="ignore"):
            pre_frac = np.where(work > 0, pre / work, 0.0)
        no_work = step_j[work <= 0].sum()
        if no_work > 0:
            notes.append(f"{no_work:,.3f} J in steps that processed no tokens: in neither prefill nor decode")
        steps_j = float(step_j.sum())
        prefill = float((step_j * pre_frac)[work > 0].sum())
        decode = float((step_j * (1 - pre_frac))[work > 0].sum())
        out.update(steps_j=steps_j, outside_steps_j=None if total is None else total - steps_j, prefill_j=prefill,
                   decode_j=decode, prefill_share=_ratio(prefill, prefill + decode),
                   decode_share=_ratio(decode, prefill + decode),
                   mixed_steps_j=float(step_j[(pre > 0) & (dec > 0)].sum()))
    return EnergyBreakdown(kind=kind, reason=None, split=SPLIT_RULE, notes=tuple(notes), **out)
