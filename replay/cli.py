"""The `replay` command line: one thin command per verb; the work lives in the package."""

from __future__ import annotations

import functools
import json
import sys

import click

from replay import __version__
from replay.trace import FORMATS, ReadOptions, ReadReport, TraceError, convert, read_trace, write_trace
from replay.trace.bins import DEFAULT_INPUT_BINS, DEFAULT_OUTPUT_BINS, bin_workload, format_bins, parse_edges
from replay.trace.stats import format_stats, trace_stats
from replay.trace.synth import ARRIVALS, parse_length_spec, synthesize


def _friendly(fn):
    """Bad input becomes one clear line on stderr and exit status 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TraceError, ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _warn(report: ReadReport) -> None:
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)


format_option = click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default=None,
                             help="Input format; detected from the content when omitted.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="replay")
def main() -> None:
    """Replay LLM request traces and measure the energy they cost.

    \b
    Example:
      replay stats traces/chat.jsonl
      replay convert AzureLLMInferenceTrace_conv.csv chat.jsonl --kind chat
    """


@main.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@format_option
@click.option("--kind", default=None, help="Stamp every request with this kind (chat, code, ...).")
@click.option("--limit", type=int, default=None, help="Keep at most N requests.")
@click.option("--start-s", type=float, default=None, help="Window start, seconds after the first request.")
@click.option("--duration-s", type=float, default=None, help="Window length in seconds.")
@click.option("--sort", is_flag=True, help="Reorder requests whose time goes backwards (with a warning) "
                                            "instead of stopping with an error.")
@_friendly
def convert_cmd(src, dst, fmt, kind, limit, start_s, duration_s, sort):
    """Convert a trace (Azure 2023/2024, BurstGPT, Mooncake, Vidur/Splitwise, length-only CSV, or canonical)
    to the canonical JSON Lines (*.jsonl) or Parquet (*.parquet) form.

    Arrival times in the output count from its first request. On any error the process exits non-zero
    and nothing is written under DST.

    \b
    Example:
      replay convert AzureLLMInferenceTrace_conv.csv traces/chat.jsonl --kind chat
      replay convert burstgpt.csv first-hour.parquet --start-s 0 --duration-s 3600
    """
    report = convert(src, dst, ReadOptions(fmt, kind, limit, start_s, duration_s, sort))
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(report.summary())


@main.command("stats")
@click.argument("trace", type=click.Path(dir_okay=False))
@format_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@_friendly
def stats_cmd(trace, fmt, as_json):
    """Requests, duration, rate, inter-arrival CV, and input/output token statistics ([Na25] Table 1 form).

    \b
    Example:
      replay stats traces/chat.jsonl
      replay stats traces/code.jsonl --json
    """
    report = ReadReport(trace)
    stats = trace_stats(read_trace(trace, ReadOptions(format=fmt), report))
    _warn(report)
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2))
    else:
        click.echo(format_stats(stats, title=trace))


@main.command("bins")
@click.argument("trace", type=click.Path(dir_okay=False))
@format_option
@click.option("--input-bins", default=",".join(map(str, DEFAULT_INPUT_BINS)), show_default=True,
              help="Input-token bin edges.")
@click.option("--output-bins", default=",".join(map(str, DEFAULT_OUTPUT_BINS)), show_default=True,
              help="Output-token bin edges.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: input_bin,output_bin,requests.")
@_friendly
def bins_cmd(trace, fmt, input_bins, output_bins, as_json, as_csv):
    """Count requests per ([Na25]) workload bin: each request goes to the nearest bin at or above its
    input and output lengths; requests above the largest bins are counted separately.

    \b
    Example:
      replay bins traces/chat.jsonl
      replay bins traces/code.jsonl --input-bins 512,2048,8192 --csv
    """
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    report = ReadReport(trace)
    workload = read_trace(trace, ReadOptions(format=fmt), report)
    _warn(report)
    binning = bin_workload(workload, parse_edges(input_bins, "--input-bins"), parse_edges(output_bins, "--output-bins"))
    if as_json:
        click.echo(json.dumps(binning.to_dict(), indent=2))
    elif as_csv:
        click.echo(binning.to_frame().to_csv(index=False), nl=False)
    else:
        click.echo(format_bins(binning))


@main.command("synth")
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--like", type=click.Path(dir_okay=False), default=None,
              help="Resample the joint input/output lengths (and by default the rate and CV) of this trace.")
@click.option("--input", "input_spec", default=None, help="Input lengths: const:N, uniform:LO,HI or lognormal:MEAN,STD.")
@click.option("--output", "output_spec", default=None, help="Output lengths, same forms as --input.")
@click.option("--requests", type=int, default=None, help="Number of requests.")
@click.option("--duration-s", type=float, default=None, help="Or: every arrival before this many seconds.")
@click.option("--arrival", type=click.Choice(ARRIVALS), default="poisson", show_default=True,
              help="Arrival process; 'none' writes an untimed trace.")
@click.option("--rate", type=float, default=None, help="Mean requests per second (default: the --like trace's).")
@click.option("--cv", type=float, default=None, help="Inter-arrival coefficient of variation for gamma arrivals "
                                                     "(burstiness = 1/cv^2; default: the --like trace's, else 1).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--kind", default=None, help="Stamp every request with this kind.")
@_friendly
def synth_cmd(dst, like, input_spec, output_spec, requests, duration_s, arrival, rate, cv, seed, kind):
    """Write a synthetic trace: lengths like a given trace or from distributions, Poisson or gamma arrivals.
    Seeded and reproducible.

    \b
    Example:
      replay synth chat-2x.jsonl --like traces/chat.jsonl --rate 11 --duration-s 600
      replay synth bursty.jsonl --input lognormal:1000,800 --output lognormal:200,150 \\
          --arrival gamma --rate 5 --cv 3 --requests 5000
    """
    workload = synthesize(
        requests=requests, duration_s=duration_s, like=read_trace(like) if like else None,
        input=parse_length_spec(input_spec) if input_spec else None,
        output=parse_length_spec(output_spec) if output_spec else None,
        arrival=arrival, rate_per_s=rate, cv=1.0 if cv is None else cv, seed=seed, kind=kind,
    )
    write_trace(workload, dst)
    click.echo(f"wrote {len(workload)} synthetic requests to {dst}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
