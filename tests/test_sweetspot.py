"""Sweet spots and the efficiency surface ([SS26] Eq. 6, tokens/J = 1 / E_tok): the library and
``replay sweetspot`` (table, JSON, PNG heatmap)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from replay.cli import main
from replay.estimate.forms import Theta, preset, save_theta
from replay.sweetspot import DEFAULT_GRID, parse_lengths, plot_heatmap, sweet_spots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_surface_is_one_over_e_tok_and_spots_are_row_optima():
    t = preset("llama-3.1-8b")
    s = sweet_spots(t)
    assert s.n_in == s.n_out == DEFAULT_GRID == (64, 128, 256, 512, 1024, 2048, 4096)
    assert s.e_tok_j.shape == (7, 7)
    # one cell by hand: n_in 512, n_out 256 is 0.0786875 J/token (tests/estimate/test_forms.py)
    assert s.e_tok_j[3, 2] == pytest.approx(0.0786875, rel=1e-6)
    assert s.tokens_per_j[3, 2] == pytest.approx(1 / 0.0786875, rel=1e-6)
    for r, spot in enumerate(s.spots):
        assert spot.grid_tokens_per_j == s.tokens_per_j[r].max()
        assert spot.grid_n_out == s.n_out[int(np.argmax(s.tokens_per_j[r]))]
        # the continuous Eq. 6 optimum beats every grid point of its row
        assert spot.tokens_per_j_star >= spot.grid_tokens_per_j
        assert spot.e_tok_star_j == pytest.approx(float(t.e_tok(spot.n_in, spot.n_out_star)[0]))
    # [SS26] findings: best at the shortest input with n_out 128..512, worst at n_in 4096, n_out 64
    best = np.unravel_index(np.nanargmax(s.tokens_per_j), s.tokens_per_j.shape)
    worst = np.unravel_index(np.nanargmin(s.tokens_per_j), s.tokens_per_j.shape)
    assert s.n_in[best[0]] == 64 and 128 <= s.n_out[best[1]] <= 512
    assert (s.n_in[worst[0]], s.n_out[worst[1]]) == (4096, 64)
    assert 10 < s.best_over_worst < 100


def test_baseline_forms_have_no_eq6_but_a_grid_best():
    s = sweet_spots(Theta("b2", (0.02, 1.5), None, None, "hand"), (64, 128), (16, 64, 256))
    assert "Eq. 6 needs form eq5 or eq4" in s.eq6_reason
    assert all(p.n_out_star is None and p.grid_n_out == 256 for p in s.spots)


def test_nonpositive_predictions_are_marked_not_inverted():
    # E_tok = 1 - 0.01 n_in: negative for n_in = 128
    s = sweet_spots(Theta("b4", (1.0, 0.0, -0.01), None, None, "hand"), (64, 128), (16, 32))
    assert s.nonpositive_cells == 2
    assert np.isnan(s.tokens_per_j[1]).all() and s.spots[1].grid_n_out is None
    assert s.tokens_per_j[0] == pytest.approx([1 / 0.36, 1 / 0.36])


def test_parse_lengths():
    assert parse_lengths("64, 128,4096", "--n-in") == (64, 128, 4096)
    for bad, message in [("64,x", "not a token count"), ("64,0", "whole token count > 0"),
                         ("64,1.5", "whole token count"), ("128,64", "increasing")]:
        with pytest.raises(ValueError, match=f"--n-out: .*{message}"):
            parse_lengths(bad, "--n-out")


def test_cli_preset_writes_a_png_and_prints_the_table(tmp_path):
    png = tmp_path / "heat.png"
    result = _cli("sweetspot", "--preset", "llama-3.1-8b", "--heatmap", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    out = result.output
    assert "Eq. 6" in out and "tokens per joule" in out and f"wrote {png}" in out
    spots = sweet_spots(preset("llama-3.1-8b")).spots
    row64 = next(line for line in out.splitlines() if line.split()[:1] == ["64"])
    assert row64.split()[1] == f"{spots[0].n_out_star:.0f}"      # 290 output tokens at n_in = 64
    surface = [line for line in out.splitlines() if line.split()[:1] == ["4096"]][-1].split()
    assert len(surface) == 8 and float(surface[1]) == pytest.approx(0.792, abs=1e-3)


def test_cli_theta_file_json_and_grid(tmp_path):
    path = tmp_path / "t.yaml"
    save_theta(Theta("eq4", preset("qwen2-7b").theta[:5], "qwen2-7b", "h100-sxm", "test"), path)
    result = _cli("sweetspot", "--theta", path, "--n-in", "64,1024", "--n-out", "32,256,2048", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["form"] == "eq4" and data["n_in"] == [64, 1024] and data["n_out"] == [32, 256, 2048]
    assert len(data["tokens_per_j"]) == 2 and len(data["tokens_per_j"][0]) == 3
    th = preset("qwen2-7b").theta
    assert data["sweet_spots"][1]["n_out_star"] == pytest.approx(np.sqrt((th[1] * 1024**2 + th[3] * 1024) / th[4]))


def test_cli_errors(tmp_path):
    assert _cli("sweetspot").exit_code == 2
    assert _cli("sweetspot", "--preset", "llama-3.1-8b", "--theta", tmp_path / "x.yaml").exit_code == 2
    result = _cli("sweetspot", "--preset", "gpt-5")
    assert result.exit_code == 1 and "no [SS26] Table 5 preset for model 'gpt-5'" in result.output
    result = _cli("sweetspot", "--theta", tmp_path / "missing.yaml")
    assert result.exit_code == 1 and "missing.yaml: cannot read" in result.output
    result = _cli("sweetspot", "--preset", "llama-3.1-8b", "--n-in", "64,abc")
    assert result.exit_code == 1 and "--n-in" in result.output


def test_heatmap_for_a_form_without_eq6(tmp_path):
    png = tmp_path / "b3.png"
    plot_heatmap(sweet_spots(Theta("b3", (0.02, 30.0), None, None, "hand"), (64, 256), (64, 256)), png)
    assert png.read_bytes()[:8] == PNG_MAGIC
