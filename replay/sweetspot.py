"""Energy-efficiency sweet spots ([SS26]): for each input length the output length that minimises energy per
output token, and the efficiency surface tokens/J = 1 / E_tok over a grid of lengths, as a table, JSON and a
heatmap, from a fitted or published coefficient set (``replay.estimate.forms.Theta``).

The sweet spot is [SS26] Eq. 6 (``sweet_spot_n_out``), a continuous n_out, for the forms that have one (Eq. 5,
Eq. 4); the best output length on the grid is given beside it for every form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from replay.estimate.forms import FORM_TITLES, Theta, sweet_spot_n_out

__all__ = ["DEFAULT_GRID", "Spot", "SweetSpots", "format_sweet_spots", "parse_lengths", "plot_heatmap",
           "sweet_spots"]

DEFAULT_GRID = (64, 128, 256, 512, 1024, 2048, 4096)  # the [SS26] sweep, both n_in and n_out


def parse_lengths(text: str, name: str) -> tuple[int, ...]:
    """``"64,128,256"`` -> (64, 128, 256): whole token counts > 0, increasing; errors name the option."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not a token count (expected e.g. 64,128,256)") from None
        if not (math.isfinite(value) and value == int(value) and value > 0):
            raise ValueError(f"{name}: {part!r} is not a whole token count > 0")
        values.append(int(value))
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name}: lengths must be increasing, got {text!r}")
    return tuple(values)


@dataclass(frozen=True)
class Spot:
    """The most efficient output length at one input length: [SS26] Eq. 6 where defined, and on the grid."""

    n_in: int
    n_out_star: float | None          # Eq. 6 (continuous); None where undefined (see SweetSpots.eq6_reason)
    e_tok_star_j: float | None        # E_tok at n_out_star, J/token
    tokens_per_j_star: float | None
    grid_n_out: int | None            # the grid's most efficient n_out (None: no positive E_tok on the row)
    grid_e_tok_j: float | None
    grid_tokens_per_j: float | None


@dataclass(frozen=True)
class SweetSpots:
    """Sweet spots and the efficiency surface of one coefficient set over an (n_in, n_out) grid.

    ``e_tok_j[i, o]`` is the predicted E_tok at (n_in[i], n_out[o]) and ``tokens_per_j`` its inverse, NaN where
    the form predicts E_tok <= 0 (a fitted form extrapolating; counted in ``nonpositive_cells``).
    """

    theta: Theta
    n_in: tuple[int, ...]
    n_out: tuple[int, ...]
    e_tok_j: np.ndarray
    tokens_per_j: np.ndarray
    spots: tuple[Spot, ...]
    eq6_reason: str | None            # why Eq. 6 gives no sweet spot, None where it does
    nonpositive_cells: int

    @property
    def best_over_worst(self) -> float | None:
        """Best over worst tokens/J on the grid ([SS26] reports 33x on average over its models)."""
        finite = self.tokens_per_j[np.isfinite(self.tokens_per_j)]
        return float(finite.max() / finite.min()) if finite.size else None

    def to_dict(self) -> dict[str, Any]:
        def num(x):
            return None if x is None or not math.isfinite(x) else float(x)
        return {
            "form": self.theta.form, "theta": list(self.theta.theta), "model": self.theta.model,
            "hardware": self.theta.hardware, "source": self.theta.source,
            "n_in": list(self.n_in), "n_out": list(self.n_out),
            "sweet_spots": [{k: num(v) if isinstance(v, float) else v for k, v in vars(s).items()}
                            for s in self.spots],
            "eq6_not_defined": self.eq6_reason,
            "tokens_per_j": [[num(x) for x in row] for row in self.tokens_per_j],
            "e_tok_j": [[num(x) for x in row] for row in self.e_tok_j],
            "nonpositive_cells": self.nonpositive_cells,
            "best_over_worst": num(self.best_over_worst),
        }


def sweet_spots(theta: Theta, n_in=DEFAULT_GRID, n_out=DEFAULT_GRID) -> SweetSpots:
    """For each input length the [SS26] Eq. 6 sweet spot (where the form has one) and the grid's best output
    length, with E_tok and tokens/J, and the efficiency surface tokens/J = 1 / E_tok over n_in x n_out."""
    n_in, n_out = tuple(int(x) for x in n_in), tuple(int(x) for x in n_out)
    if not n_in or not n_out:
        raise ValueError("the grid needs at least one input length and one output length")
    ii, oo = np.meshgrid(np.array(n_in, float), np.array(n_out, float), indexing="ij")
    e_tok = theta.e_tok(ii, oo).reshape(ii.shape)
    positive = e_tok > 0
    tpj = np.where(positive, 1.0 / np.where(positive, e_tok, 1.0), np.nan)
    try:
        stars, reason = sweet_spot_n_out(theta, np.array(n_in, float)), None
    except ValueError as exc:
        stars, reason = None, str(exc)
    spots = []
    for r, i in enumerate(n_in):
        star = e_star = None
        if stars is not None:
            star = float(stars[r])
            e_star = float(theta.e_tok(i, star)[0])
        row = tpj[r]
        best = int(np.nanargmax(row)) if np.isfinite(row).any() else None
        spots.append(Spot(
            n_in=i, n_out_star=star, e_tok_star_j=e_star,
            tokens_per_j_star=1.0 / e_star if e_star is not None and e_star > 0 else None,
            grid_n_out=n_out[best] if best is not None else None,
            grid_e_tok_j=float(e_tok[r, best]) if best is not None else None,
            grid_tokens_per_j=float(row[best]) if best is not None else None,
        ))
    return SweetSpots(theta, n_in, n_out, e_tok, tpj, tuple(spots), reason, int((~positive).sum()))


def _num(x: float | None, fmt: str = ".4g") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def format_sweet_spots(s: SweetSpots) -> str:
    """The sweet spots per input length, then the tokens/J surface (rows n_in, columns n_out)."""
    t = s.theta
    lines = [f"{FORM_TITLES[t.form]} for {t.model or 'an unnamed model'} on {t.hardware or 'unnamed hardware'}"
             f" ({t.source})"]
    lo, hi = s.n_out[0], s.n_out[-1]
    head = (f"{'n_in':>6}  {'Eq. 6 n_out*':>12} {'E_tok J/tok':>12} {'tokens/J':>9}   "
            f"{'grid best n_out':>15} {'E_tok J/tok':>12} {'tokens/J':>9}")
    lines += ["", "sweet spots: the output length that minimises energy per output token ([SS26] Eq. 6)", head,
              "-" * len(head)]
    for p in s.spots:
        star = _num(p.n_out_star, ".0f")
        if p.n_out_star is not None and not lo <= p.n_out_star <= hi:
            star += "*"
        lines.append(f"{p.n_in:>6}  {star:>12} {_num(p.e_tok_star_j):>12} {_num(p.tokens_per_j_star):>9}   "
                     f"{_num(p.grid_n_out, 'd') if p.grid_n_out else 'n/a':>15} {_num(p.grid_e_tok_j):>12} "
                     f"{_num(p.grid_tokens_per_j):>9}")
    if s.eq6_reason:
        lines.append(f"Eq. 6 not defined: {s.eq6_reason}")
    if any(p.n_out_star is not None and not lo <= p.n_out_star <= hi for p in s.spots):
        lines.append(f"* outside the output grid {lo}..{hi}: an extrapolation of the form")
    lines += ["", "efficiency surface, output tokens per joule (rows n_in, columns n_out)"]
    width = max(9, max(len(str(o)) for o in s.n_out) + 1)
    lines.append(f"{'n_in':>6}" + "".join(f"{o:>{width}}" for o in s.n_out))
    for i, row in zip(s.n_in, s.tokens_per_j):
        lines.append(f"{i:>6}" + "".join(f"{_num(x, '.3g'):>{width}}" for x in row))
    if s.nonpositive_cells:
        lines.append(f"n/a: {s.nonpositive_cells} cell(s) where the form predicts E_tok <= 0 (outside the range "
                     f"it was fitted on)")
    ratio = s.best_over_worst
    if ratio is not None:
        lines.append(f"best over worst on the grid: {ratio:.1f}x")
    return "\n".join(lines)


def plot_heatmap(s: SweetSpots, path: str | Path) -> None:
    """Write the tokens/J surface as a PNG heatmap (n_in rows, n_out columns), each row's grid best boxed and
    the Eq. 6 sweet spots drawn where they fall inside the output grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from replay.report.plots import heatmap

    grid = np.asarray(s.tokens_per_j, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(s.n_out), 1.2 + 0.6 * len(s.n_in)))
    try:
        heatmap(fig, ax, grid, lambda r, c: f"{grid[r, c]:.3g}", [str(o) for o in s.n_out], [str(i) for i in s.n_in],
                "output tokens n_out", "input tokens n_in", "output tokens per joule")
        for r, spot in enumerate(s.spots):
            if spot.grid_n_out is not None:
                c = s.n_out.index(spot.grid_n_out)
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        xs, ys = [], []
        logs = np.log(np.array(s.n_out, float))
        for r, spot in enumerate(s.spots):
            if spot.n_out_star is not None and s.n_out[0] <= spot.n_out_star <= s.n_out[-1] and len(logs) > 1:
                xs.append(float(np.interp(math.log(spot.n_out_star), logs, np.arange(len(logs)))))
                ys.append(r)
        if xs:
            ax.plot(xs, ys, "w--o", markersize=3, linewidth=1)
        t = s.theta
        ax.set_title(f"{FORM_TITLES[t.form]}: {t.model or 'model'} on {t.hardware or 'hardware'}\n"
                     f"red box: most efficient n_out on the grid"
                     + ("; white line: [SS26] Eq. 6 sweet spot" if xs else ""), fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
