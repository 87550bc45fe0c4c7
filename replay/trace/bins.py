"""Workload binning by input and output length, after [Na25] section 4.1.

A request with ``i`` input and ``o`` output tokens goes to the nearest bin at or above in each dimension:
``I* = min{I in I_bins : I >= i}`` and ``O* = min{O in O_bins : O >= o}``. So a length exactly equal to an
edge falls in that edge's bin and one token more falls in the next. Requests above the largest bin in
either dimension are excluded from the counts and reported, split by the dimension(s) they exceed.

The counts ``N(I*, O*)`` feed [Na25]'s workload energy estimate
``E_total = sum over (I*, O*) of N(I*, O*) / B(I*, O*) * E_batch(I*, O*)``.

Default edges are the lists printed in [Na25] section 4.1 (its set-builder form ``2^m, 4 <= m <= 13``
would also give 16 and 64 for the input bins; pass other edges to use those).

[Na25] Fernandez et al., "Energy Considerations of Large Language Model Inference and Efficiency
Optimizations", ACL 2025, section 4.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from replay.trace.schema import Workload

__all__ = [
    "DEFAULT_INPUT_BINS",
    "DEFAULT_OUTPUT_BINS",
    "Binning",
    "parse_edges",
    "bin_workload",
    "bin_indices",
    "format_bins",
]

DEFAULT_INPUT_BINS: tuple[int, ...] = (32, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_OUTPUT_BINS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)

_INT = re.compile(r"[+-]?\d+")


def parse_edges(text: str, name: str) -> tuple[int, ...]:
    """Parse comma-separated bin edges such as ``"32,128,256"``.

    Returns the edges sorted ascending (they may be given in any order). Raises ``ValueError`` naming
    ``name`` and the offending value for an empty list, an empty item, a non-integer, a value <= 0 or a
    duplicate.
    """
    if text is None or not str(text).strip():
        raise ValueError(f"{name}: no bin edges given (expected e.g. '32,128,256')")
    edges: list[int] = []
    for raw in str(text).split(","):
        tok = raw.strip()
        if not _INT.fullmatch(tok):
            raise ValueError(f"{name}: bin edge {tok!r} is not an integer")
        value = int(tok)
        if value <= 0:
            raise ValueError(f"{name}: bin edge {value} is not positive")
        if value in edges:
            raise ValueError(f"{name}: bin edge {value} given twice")
        edges.append(value)
    return tuple(sorted(edges))


def _check_edges(edges: Iterable[int], name: str) -> tuple[int, ...]:
    out = tuple(int(e) for e in edges)
    if not out:
        raise ValueError(f"{name}: no bin edges given")
    if any(e <= 0 for e in out):
        raise ValueError(f"{name}: bin edges must be positive, got {out}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{name}: bin edges must be strictly increasing, got {out}")
    return out


@dataclass(frozen=True)
class Binning:
    """Request counts per (input bin, output bin), [Na25] section 4.1, and the requests left out.

    ``counts[j, k]`` is ``N(input_bins[j], output_bins[k])``. ``above_input`` counts requests whose input is
    above the largest input bin while their output is within range; ``above_output`` the reverse;
    ``above_both`` those above in both dimensions.
    """

    input_bins: tuple[int, ...]
    output_bins: tuple[int, ...]
    counts: np.ndarray
    requests: int
    above_input: int
    above_output: int
    above_both: int

    @property
    def binned(self) -> int:
        return int(self.counts.sum())

    @property
    def excluded(self) -> int:
        return self.above_input + self.above_output + self.above_both

    def to_frame(self) -> pd.DataFrame:
        """Long form, one row per cell (zero cells included), input bin major: input_bin, output_bin,
        requests."""
        n_in, n_out = len(self.input_bins), len(self.output_bins)
        return pd.DataFrame(
            {
                "input_bin": np.repeat(np.asarray(self.input_bins, dtype=np.int64), n_out),
                "output_bin": np.tile(np.asarray(self.output_bins, dtype=np.int64), n_in),
                "requests": np.asarray(self.counts, dtype=np.int64).reshape(-1),
            }
        )

    def to_dict(self) -> dict:
        """Plain python values, ready for ``json.dumps``; ``counts`` lists every cell, zero cells included."""
        return {
            "input_bins": [int(e) for e in self.input_bins],
            "output_bins": [int(e) for e in self.output_bins],
            "counts": [
                {"input_bin": int(i), "output_bin": int(o), "requests": int(self.counts[j, k])}
                for j, i in enumerate(self.input_bins)
                for k, o in enumerate(self.output_bins)
            ],
            "requests": int(self.requests),
            "binned": self.binned,
            "excluded": self.excluded,
            "above_input": int(self.above_input),
            "above_output": int(self.above_output),
            "above_both": int(self.above_both),
        }


def bin_workload(
    workload: Workload,
    input_bins: Iterable[int] = DEFAULT_INPUT_BINS,
    output_bins: Iterable[int] = DEFAULT_OUTPUT_BINS,
) -> Binning:
    """Count the requests of ``workload`` per ([Na25] section 4.1) bin: each request goes to the smallest
    edge at or above its length in each dimension; requests above the largest edge are excluded and counted.

    Edges must be positive and strictly increasing (``ValueError`` otherwise).
    """
    in_edges = _check_edges(input_bins, "input bins")
    out_edges = _check_edges(output_bins, "output bins")
    n_in, n_out = len(in_edges), len(out_edges)

    inp = np.asarray(workload.input_tokens, dtype=np.int64)
    j, k = bin_indices(inp, workload.output_tokens, in_edges, out_edges)
    in_over = j == n_in
    out_over = k == n_out
    ok = ~(in_over | out_over)

    flat = np.bincount(j[ok] * n_out + k[ok], minlength=n_in * n_out)
    counts = flat.astype(np.int64, copy=False).reshape(n_in, n_out)

    above_both = int(np.count_nonzero(in_over & out_over))
    return Binning(
        input_bins=in_edges,
        output_bins=out_edges,
        counts=counts,
        requests=int(inp.size),
        above_input=int(np.count_nonzero(in_over)) - above_both,
        above_output=int(np.count_nonzero(out_over)) - above_both,
        above_both=above_both,
    )


def bin_indices(input_tokens, output_tokens, input_bins: Iterable[int] = DEFAULT_INPUT_BINS,
                output_bins: Iterable[int] = DEFAULT_OUTPUT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Each request's bin, as indices into the edges: the first edge >= its length in each dimension
    (``len(edges)`` when above the largest edge). Per-request form of ``bin_workload`` (the [Na25] binned
    estimator uses it)."""
    in_edges = np.asarray(_check_edges(input_bins, "input bins"), dtype=np.int64)
    out_edges = np.asarray(_check_edges(output_bins, "output bins"), dtype=np.int64)
    j = np.searchsorted(in_edges, np.asarray(input_tokens, dtype=np.int64), side="left")
    k = np.searchsorted(out_edges, np.asarray(output_tokens, dtype=np.int64), side="left")
    return j, k


def format_bins(b: Binning) -> str:
    """A human-readable table: rows are input bins, columns output bins (each cell the request count, edges
    read as "up to"), with row and column totals, and a line on how many requests were binned and how many
    fell above the largest bins, by dimension."""
    corner = "input \\ output"
    header = [corner] + [f"<={o}" for o in b.output_bins] + ["total"]
    rows = [header]
    for j, i in enumerate(b.input_bins):
        rows.append([f"<={i}"] + [str(int(c)) for c in b.counts[j]] + [str(int(b.counts[j].sum()))])
    rows.append(["total"] + [str(int(c)) for c in b.counts.sum(axis=0)] + [str(b.binned)])
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[c]) if c == 0 else cell.rjust(widths[c]) for c, cell in enumerate(r))
        for r in rows
    ]
    pct = f" ({100.0 * b.binned / b.requests:.2f}%)" if b.requests else ""
    lines.append("")
    lines.append(f"binned {b.binned} of {b.requests} requests{pct}; excluded {b.excluded} above the largest bins: "
                 f"{b.above_input} with input > {b.input_bins[-1]}, "
                 f"{b.above_output} with output > {b.output_bins[-1]}, "
                 f"{b.above_both} with both")
    return "\n".join(lines)
