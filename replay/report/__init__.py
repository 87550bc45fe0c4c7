"""Reports: serving metrics (TTFT, TPOT, ITL, E2E, goodput) and energy per request and per token; a run's energy
set against the estimators per request, per [Na25] bin and in total, as text, JSON, PNG plots and HTML."""

from replay.report.build import Report, Written, build_report, write_report
from replay.report.compare import Comparison, compare, gap, gap_text, mape
from replay.report.rundir import RunData, load_run
from replay.report.text import format_report, short_report

__all__ = ["Comparison", "Report", "RunData", "Written", "build_report", "compare", "format_report", "gap",
           "gap_text", "load_run", "mape", "short_report", "write_report"]
