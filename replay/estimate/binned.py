"""[Na25] section 4.1 binned workload energy from measured full batches: each request costs E_batch / B of its bin.

[Na25] estimates a workload's energy as ``E_total = sum over bins (I*, O*) of N(I*, O*) / B(I*, O*) *
E_batch(I*, O*)``: N requests in the bin, B the largest batch the hardware and backend allow for it, E_batch the
measured energy of one full batch of that bin. Per request that is E_batch / B of its bin, and the sum over the
bin's N requests gives the paper's term. Requests go to bins by ``replay.trace.bins`` (nearest edge at or
above, the paper's edges by default). A request above the largest bin, or in a bin without a measured batch,
cannot be estimated: NaN, counted, never a silent 0.

The batch energies are a frame with columns ``input_bin, output_bin, batch_size, energy_j`` (one full batch of
that bin, measured; e.g. from a static-batch sweep: ``replay.sweep`` builds it; other columns are ignored). A bin
measured at several batch sizes uses the largest, as [Na25]'s B is the largest batch the hardware allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from replay.trace.bins import DEFAULT_INPUT_BINS, DEFAULT_OUTPUT_BINS, bin_indices

__all__ = ["BATCH_ENERGY_COLUMNS", "BinnedEnergy", "binned_energy", "check_batch_energies"]

BATCH_ENERGY_COLUMNS = ("input_bin", "output_bin", "batch_size", "energy_j")


@dataclass(frozen=True, eq=False)
class BinnedEnergy:
    """Per-request E_batch / B (NaN where not estimable) and what was left out, by reason.

    ``bins``: one row per bin that has requests and a measured batch (input_bin, output_bin, requests,
    batch_size, energy_j, batches = N / B, total_j); ``unmeasured_bins``: bins that have requests but no
    measured batch (input_bin, output_bin, requests)."""

    per_request_j: np.ndarray
    above_input: int          # input above the largest input bin (output within range)
    above_output: int         # output above the largest output bin (input within range)
    above_both: int
    unmeasured: int           # in a bin without a measured batch
    bins: pd.DataFrame
    unmeasured_bins: pd.DataFrame

    @property
    def above_largest_bin(self) -> int:
        return self.above_input + self.above_output + self.above_both


def check_batch_energies(frame: pd.DataFrame, input_bins: Iterable[int] = DEFAULT_INPUT_BINS,
                         output_bins: Iterable[int] = DEFAULT_OUTPUT_BINS) -> pd.DataFrame:
    """The frame's four columns as numbers, checked: bins are edges of the binning, batch_size a whole number
    >= 1, energy_j finite and > 0, at most one row per bin and batch size. Errors name the row and the field."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"batch energies: expected a DataFrame with columns {', '.join(BATCH_ENERGY_COLUMNS)}, "
                         f"got {type(frame).__name__}")
    missing = [c for c in BATCH_ENERGY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"batch energies: missing column {missing[0]!r}; expected columns "
                         f"{', '.join(BATCH_ENERGY_COLUMNS)}")
    edges = {"input_bin": tuple(int(e) for e in input_bins), "output_bin": tuple(int(e) for e in output_bins)}
    out = {}
    for col in BATCH_ENERGY_COLUMNS:
        v = pd.to_numeric(frame[col], errors="coerce").to_numpy(np.float64)
        if col == "energy_j":
            bad = ~(np.isfinite(v) & (v > 0))
            want = "a measured energy > 0 J"
        elif col == "batch_size":
            bad = ~(np.isfinite(v) & (v >= 1) & (v == np.round(v)))
            want = "a whole number of requests >= 1"
        else:
            bad = ~np.isin(v, edges[col])
            want = f"one of the bin edges {', '.join(map(str, edges[col]))}"
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"batch energies: row {frame.index[i]!r}: field {col!r}: expected {want}, "
                             f"got {frame[col].iloc[i]!r}")
        out[col] = v.astype(np.int64) if col != "energy_j" else v
    clean = pd.DataFrame(out, index=frame.index)
    key = ["input_bin", "output_bin", "batch_size"]
    dup = clean.duplicated(key, keep=False)
    if dup.any():
        first = clean[dup].iloc[0]
        rows = list(clean.index[dup & (clean[key] == first[key]).all(axis=1)])
        raise ValueError(f"batch energies: rows {', '.join(map(repr, rows))}: bin ({int(first['input_bin'])}, "
                         f"{int(first['output_bin'])}) with batch size {int(first['batch_size'])} given more than "
                         "once; expected one full-batch energy per bin and batch size")
    return clean.reset_index(drop=True)


def binned_energy(n_in: Any, n_out: Any, batch_energies: pd.DataFrame,
                  input_bins: Iterable[int] = DEFAULT_INPUT_BINS,
                  output_bins: Iterable[int] = DEFAULT_OUTPUT_BINS) -> BinnedEnergy:
    """Each request's E_batch / B of its [Na25] bin (arrays of whole token counts >= 1)."""
    in_edges, out_edges = tuple(int(e) for e in input_bins), tuple(int(e) for e in output_bins)
    table = check_batch_energies(batch_energies, in_edges, out_edges)
    # B(I*, O*) is the largest batch measured for the bin ([Na25]: the largest the hardware and backend allow)
    table = table.sort_values("batch_size", kind="stable").drop_duplicates(["input_bin", "output_bin"], keep="last")
    j, k = bin_indices(n_in, n_out, in_edges, out_edges)
    n_i, n_o = len(in_edges), len(out_edges)
    over_in, over_out = j == n_i, k == n_o
    inside = ~(over_in | over_out)
    per_bin = np.full((n_i, n_o), np.nan)
    batch = np.zeros((n_i, n_o), np.int64)
    energy = np.full((n_i, n_o), np.nan)
    ji = np.searchsorted(in_edges, table["input_bin"].to_numpy())
    ko = np.searchsorted(out_edges, table["output_bin"].to_numpy())
    per_bin[ji, ko] = table["energy_j"].to_numpy() / table["batch_size"].to_numpy()
    batch[ji, ko] = table["batch_size"].to_numpy()
    energy[ji, ko] = table["energy_j"].to_numpy()
    per = np.full(len(j), np.nan)
    per[inside] = per_bin[j[inside], k[inside]]
    counts = np.bincount(j[inside] * n_o + k[inside], minlength=n_i * n_o).reshape(n_i, n_o)
    has = counts > 0
    measured = has & np.isfinite(per_bin)
    ii, oo = np.nonzero(measured)
    bins = pd.DataFrame({"input_bin": np.asarray(in_edges)[ii], "output_bin": np.asarray(out_edges)[oo],
                         "requests": counts[ii, oo], "batch_size": batch[ii, oo], "energy_j": energy[ii, oo],
                         "batches": counts[ii, oo] / batch[ii, oo], "total_j": counts[ii, oo] * per_bin[ii, oo]})
    ui, uo = np.nonzero(has & ~measured)
    unmeasured = pd.DataFrame({"input_bin": np.asarray(in_edges, np.int64)[ui],
                               "output_bin": np.asarray(out_edges, np.int64)[uo], "requests": counts[ui, uo]})
    both = int(np.count_nonzero(over_in & over_out))
    return BinnedEnergy(per_request_j=per, above_input=int(np.count_nonzero(over_in)) - both,
                        above_output=int(np.count_nonzero(over_out)) - both, above_both=both,
                        unmeasured=int(unmeasured["requests"].sum()), bins=bins, unmeasured_bins=unmeasured)
