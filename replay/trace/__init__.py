"""Workloads in: the canonical trace, readers for public formats, statistics, binning and synthesis."""

from replay.trace.bins import Binning, bin_workload
from replay.trace.convert import ConvertReport, convert
from replay.trace.formats import FORMATS, ReadReport
from replay.trace.pipeline import ReadOptions, read_trace
from replay.trace.schema import COLUMNS, SCHEMA, Request, TraceError, Workload
from replay.trace.stats import TraceStats, trace_stats
from replay.trace.synth import synthesize
from replay.trace.writers import write_trace

__all__ = [
    "COLUMNS", "FORMATS", "SCHEMA", "Binning", "ConvertReport", "ReadOptions", "ReadReport", "Request",
    "TraceError", "TraceStats", "Workload", "bin_workload", "convert", "read_trace", "synthesize",
    "trace_stats", "write_trace",
]
