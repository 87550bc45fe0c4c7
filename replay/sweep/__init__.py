"""`replay sweep`: a grid of runs (input length x output length x any run option) against any engine, here or
on a Ray cluster, each point a normal run directory, resumable, with one results table.

What was chosen, and why:

- Axes (grid.py). ``n_in`` and ``n_out`` make synthetic points: ``requests`` requests (1,000 as in [SS26]) of
  exactly that many input and output tokens, an untimed canonical trace written into the point's directory
  (``trace.jsonl``); a synthetic sweep always has both, one not given taking the [SS26] values 64..4096. Any
  other axis is a RunConfig field, typed by the field. Or a TRACE is replayed at every point (no length axes).
  ``key=v1,v2`` or ``key=A..B`` (the powers of two from A to B). Every point's configuration is validated
  before anything runs.
- Points are the product of the axes, the first outermost; point i is ``OUT/<i>-<key=value,...>/``, written by
  ``replay.run.execute``. ``OUT/sweep.yaml`` records the trace, requests, grid and base configuration.
- Going on (runner.py): the same sweep again (or ``replay sweep --resume OUT``) skips done points (summary.json),
  resumes interrupted ones (``replay.run.resume``), runs failed ones (error.txt) again from the start, and runs
  the rest; another sweep against the same OUT is an error. A point that raises is recorded as failed and the
  sweep goes on ([Na25] batch-size sweeps run into memory limits by design); Ctrl-C stops it.
- One vLLM engine per process: real-engine points run in a fresh spawned process each (in-process for the
  simulator); on Ray (on_ray.py) each point is a task, a real-engine one with ``tp`` GPUs in a worker used once.
- The table (table.py): ``OUT/results.csv``, one row per point from its summary.json, [SS26]'s E_tok, and for
  static-batch points the energy of one full batch; ``batch_energies`` turns a static-batch synthetic sweep into
  the [Na25] (input_bin, output_bin, batch_size, energy_j) frame.
"""

from replay.sweep.grid import (LENGTH_AXES, SS26_LENGTHS, SYNTHETIC, Axis, Point, SweepSpec, grid_keys, load_sweep,
                               make_sweep, parse_axis, point_state)
from replay.sweep.runner import SweepResult, resume_sweep, run_sweep
from replay.sweep.table import batch_energies, format_table, results_table

__all__ = [
    "LENGTH_AXES", "SS26_LENGTHS", "SYNTHETIC", "Axis", "Point", "SweepResult", "SweepSpec", "batch_energies",
    "format_table", "grid_keys", "load_sweep", "make_sweep", "parse_axis", "point_state", "results_table",
    "resume_sweep", "run_sweep",
]
