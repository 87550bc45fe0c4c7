"""The [SS26] energy forms: prediction against hand-worked values, Table 5 presets, least-squares fitting,
MAPE, K-fold held-out error, Eq. 6 against a numerical minimum, and the theta YAML file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replay import specs
from replay.estimate.forms import (
    FORMS, PRESETS, Theta, features, fit, kfold, load_theta, mape, predict_e_tok, preset, save_theta,
    sweet_spot_n_out,
)

GRID = [64, 128, 256, 512, 1024, 2048, 4096]  # the [SS26] sweep


def _grid():
    n_in, n_out = np.meshgrid(GRID, GRID, indexing="ij")
    return n_in.ravel(), n_out.ravel()


# --- prediction ----------------------------------------------------------------------------------------------

# n_in = 4, n_out = 2, worked out by hand term by term
HAND = {
    "eq5": ((1, 2, 3, 4, 5, 6), 1 + 2 * 16 / 2 + 3 * 4 + 4 * 4 / 2 + 5 * 2 + 6 / 2),   # 50
    "eq4": ((1, 2, 3, 4, 5), 1 + 16 + 12 + 8 + 10),                                    # 47
    "b1": ((7,), 7),
    "b2": ((1, 2), 1 + 2 / 2),                                                           # 2
    "b3": ((1, 6), 1 + 6 / (4 + 2)),                                                     # 2
    "b4": ((1, 2, 3), 1 + 2 * 4 / 2 + 3 * 4),                                            # 17
}


@pytest.mark.parametrize("form", FORMS)
def test_predict_matches_hand_worked_value(form):
    theta, expected = HAND[form]
    assert predict_e_tok(form, theta, 4, 2) == pytest.approx([expected])
    assert features(form, [4, 4], [2, 2]).shape == (2, len(theta))


def test_hand_values_are_the_stated_numbers():
    assert [HAND[f][1] for f in FORMS] == [50, 47, 7, 2, 2, 17]


def test_predict_broadcasts_and_rejects_bad_lengths():
    assert predict_e_tok("b2", (1, 2), 4, [1, 2, 4]) == pytest.approx([3, 2, 1.5])
    with pytest.raises(ValueError, match="n_out must be finite and > 0"):
        predict_e_tok("b2", (1, 2), 4, 0)
    with pytest.raises(ValueError, match="n_in"):
        predict_e_tok("b4", (1, 2, 3), -1, 2)
    with pytest.raises(ValueError, match="form b2 has 2 coefficients"):
        predict_e_tok("b2", (1, 2, 3), 4, 2)
    with pytest.raises(ValueError, match="unknown energy form 'eq7'.*eq5, eq4, b1"):
        features("eq7", 4, 2)


def test_theta_request_energy_is_e_tok_times_n_out():
    t = Theta("b2", (1, 2), None, None, "test")
    assert t.e_tok([4, 4], [2, 8]) == pytest.approx([2, 1.25])
    assert t.e_request_j([4, 4], [2, 8]) == pytest.approx([4, 10])


# --- Table 5 -------------------------------------------------------------------------------------------------


def test_llama_3_1_8b_preset_at_one_point_by_hand():
    t = preset("llama-3.1-8b")
    assert (t.form, t.model, t.hardware) == ("eq5", "llama-3.1-8b", "h100-sxm")
    assert "[SS26] Table 5" in t.source
    n_in, n_out = 512, 256
    by_hand = (1.970934e-2                              # th0
               + 3.329326e-7 * 512 * 512 / 256          # th1 n_in^2 / n_out = 3.409230e-4
               + 3.583505e-5 * 512                      # th2 n_in           = 1.834755e-2
               + 1.551942e-2 * 512 / 256                # th3 n_in / n_out   = 3.103884e-2
               + 2.249613e-5 * 256                      # th4 n_out          = 5.759009e-3
               + 0.8939092 / 256)                       # th5 / n_out        = 3.491833e-3
    assert by_hand == pytest.approx(0.0786875, rel=1e-6)
    assert t.e_tok(n_in, n_out) == pytest.approx([by_hand], rel=1e-12)
    assert t.e_request_j(n_in, n_out) == pytest.approx([by_hand * 256], rel=1e-12)


def test_presets_are_the_13_table5_models_and_known_spec_keys():
    assert len(PRESETS) == 13
    known = set(specs.model_names())
    assert set(PRESETS) <= known
    for name, t in PRESETS.items():
        assert t.form == "eq5" and len(t.theta) == 6 and all(x > 0 for x in t.theta), name
    assert PRESETS["gemma2-9b"].theta[5] == 2.558409
    assert PRESETS["llama-3.2-1b"].theta[0] == 5.005153e-3


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="no .*preset for model 'gpt-5'.*llama-3.1-8b.*gemma2-9b"):
        preset("gpt-5")


# --- MAPE and fitting ----------------------------------------------------------------------------------------


def test_mape_in_percent_and_errors():
    assert mape([110, 90, 100], [100, 100, 100]) == pytest.approx(20 / 3)
    assert mape([1.5], [1.0]) == pytest.approx(50)
    with pytest.raises(ValueError, match="non-zero"):
        mape([1], [0])
    with pytest.raises(ValueError, match="2 predictions for 1"):
        mape([1, 2], [1])


TRUE = {
    "eq5": PRESETS["llama-3.1-8b"].theta,
    "eq4": PRESETS["llama-3.1-8b"].theta[:5],
    "b1": (0.05,),
    "b2": (0.02, 1.5),
    "b3": (0.02, 30.0),
    "b4": (0.01, 0.02, 4e-5),
}


@pytest.mark.parametrize("form", FORMS)
def test_fit_recovers_known_coefficients_from_noisy_data(form):
    rng = np.random.default_rng(7)
    n_in = np.round(2 ** rng.uniform(6, 12, 400))     # log-uniform over the [SS26] range 64..4096
    n_out = np.round(2 ** rng.uniform(6, 12, 400))
    truth = predict_e_tok(form, TRUE[form], n_in, n_out)
    noisy = truth * (1 + 0.001 * rng.standard_normal(truth.size))   # 0.1% noise
    t = fit(form, n_in, n_out, noisy, model="m", hardware="h", source="synthetic")
    assert (t.form, t.model, t.hardware, t.source) == (form, "m", "h", "synthetic")
    assert np.allclose(t.theta, TRUE[form], rtol=0.05, atol=0), (t.theta, TRUE[form])
    assert t.fit["n_points"] == 400
    assert t.fit["in_sample_mape_pct"] == pytest.approx(mape(t.e_tok(n_in, n_out), noisy))
    assert 0.02 < t.fit["in_sample_mape_pct"] < 0.25      # the noise, not an exact fit, and not a bad one
    assert "least squares" in t.fit["method"]


def test_fit_on_the_ss26_grid_is_exact_without_noise():
    n_in, n_out = _grid()
    truth = PRESETS["opt-6.7b"].e_tok(n_in, n_out)
    t = fit("eq5", n_in, n_out, truth)
    assert np.allclose(t.theta, PRESETS["opt-6.7b"].theta, rtol=1e-6)
    assert t.fit["in_sample_mape_pct"] < 1e-6


def test_fit_errors_name_the_problem():
    with pytest.raises(ValueError, match="6 coefficients but there are only 3 points"):
        fit("eq5", [64, 128, 256], [64, 64, 64], [1, 2, 3])
    with pytest.raises(ValueError, match="do not determine the 6 coefficients.*vary both n_in and n_out"):
        fit("eq5", GRID, [64] * 7, np.linspace(1, 2, 7))
    with pytest.raises(ValueError, match="7 .* points but 6 E_tok"):
        fit("b1", GRID, GRID, [1] * 6)
    with pytest.raises(ValueError, match="finite"):
        fit("b1", GRID, GRID, [1, 1, 1, float("nan"), 1, 1, 1])


# --- K-fold --------------------------------------------------------------------------------------------------


def test_leave_one_out_by_hand_never_sees_the_held_out_point():
    # b1 (a constant) on y = 1, 2, 3, 4: each point is predicted by the mean of the other three.
    y = [1.0, 2.0, 3.0, 4.0]
    held = kfold("b1", [64, 128, 256, 512], [64, 64, 64, 64], y, k=4, seed=3)
    # predictions 3, 8/3, 7/3, 2 -> errors 200%, 33.3%, 22.2%, 50%
    expected = [200.0, 100 / 3, 200 / 9, 50.0]
    assert sorted(held.per_fold_mape_pct) == pytest.approx(sorted(expected))
    assert held.mape_pct == pytest.approx(np.mean(expected))
    assert held.fold_sizes == (1, 1, 1, 1) and held.n_points == 4
    # in-sample (the mean 2.5 seen by the fit) is lower
    assert fit("b1", [64, 128, 256, 512], [64] * 4, y).fit["in_sample_mape_pct"] == pytest.approx(
        100 * np.mean([1.5, 0.25, 1 / 6, 0.375]))


def test_overflexible_form_overfits_small_noisy_data():
    # truth is B2 (2 coefficients), 10% noise, 12 points: Eq. 5 (6 coefficients) fits the noise
    rng = np.random.default_rng(1)
    n_in = rng.choice(GRID, 12)
    n_out = rng.choice(GRID, 12)
    y = predict_e_tok("b2", (0.02, 1.5), n_in, n_out) * (1 + 0.1 * rng.standard_normal(12))
    flexible = fit("eq5", n_in, n_out, y, folds=4)
    simple = fit("b2", n_in, n_out, y, folds=4)
    assert flexible.fit["heldout_mape_pct"] > flexible.fit["in_sample_mape_pct"]
    assert flexible.fit["in_sample_mape_pct"] < simple.fit["in_sample_mape_pct"]   # looks better in-sample
    assert flexible.fit["heldout_mape_pct"] > simple.fit["heldout_mape_pct"]       # and is worse held out
    assert flexible.fit["folds"] == 4 and len(flexible.fit["per_fold_mape_pct"]) == 4


def test_kfold_is_seeded_and_covers_every_point_once():
    n_in, n_out = _grid()
    y = PRESETS["qwen2-7b"].e_tok(n_in, n_out) * (1 + 0.01 * np.sin(np.arange(49)))
    a, b = kfold("eq5", n_in, n_out, y, k=5, seed=11), kfold("eq5", n_in, n_out, y, k=5, seed=11)
    assert a == b and sum(a.fold_sizes) == 49 and max(a.fold_sizes) - min(a.fold_sizes) <= 1
    assert kfold("eq5", n_in, n_out, y, k=5, seed=12).per_fold_mape_pct != a.per_fold_mape_pct


def test_kfold_errors():
    with pytest.raises(ValueError, match="5-fold cross-validation needs at least 5 points; there are 4"):
        kfold("b1", GRID[:4], GRID[:4], [1, 2, 3, 4], k=5)
    with pytest.raises(ValueError, match="on 7 points leaves 4 points to fit a fold: need at least 6"):
        kfold("eq5", GRID, GRID[::-1], np.arange(1, 8), k=3)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        kfold("b1", GRID, GRID, np.arange(1, 8), k=1)


# --- [SS26] Eq. 6 --------------------------------------------------------------------------------------------


def _numerical_argmin(f, lo: float, hi: float) -> float:
    """Golden-section search for the minimum of a unimodal f on [lo, hi] (independent of Eq. 6)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(200):
        c, d = b - g * (b - a), a + g * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return (a + b) / 2


@pytest.mark.parametrize("model", ["llama-3.1-8b", "gemma2-9b", "opt-1.3b"])
def test_eq6_is_the_numerical_minimum_of_e_tok(model):
    t = preset(model)
    n_in = np.array([64, 512, 4096])
    star = sweet_spot_n_out(t, n_in)
    for i, s in zip(n_in, star):
        numeric = _numerical_argmin(lambda o: float(t.e_tok(i, o)[0]), 1.0, 1e6)
        assert s == pytest.approx(numeric, rel=1e-6)
        assert t.e_tok(i, s)[0] < t.e_tok(i, [s * 0.9, s * 1.1]).min()


def test_eq6_for_eq4_drops_th5_and_llama_sweet_spot_matches_the_paper():
    t5 = preset("llama-3.1-8b")
    t4 = Theta("eq4", t5.theta[:5], None, None, "test")
    i = np.array([64.0, 1024.0])
    th = t5.theta
    assert sweet_spot_n_out(t4, i) == pytest.approx(np.sqrt((th[1] * i**2 + th[3] * i) / th[4]))
    assert sweet_spot_n_out(t5, i) == pytest.approx(np.sqrt((th[1] * i**2 + th[3] * i + th[5]) / th[4]))
    # [SS26]: efficiency peaks at n_in = 64 with n_out around 128 to 512
    assert 128 <= sweet_spot_n_out(t5, 64)[0] <= 512


def test_eq6_refuses_forms_and_coefficients_without_a_minimum():
    with pytest.raises(ValueError, match="Eq. 6 needs form eq5 or eq4; this theta is b4"):
        sweet_spot_n_out(Theta("b4", (1, 2, 3), None, None, "t"), 64)
    with pytest.raises(ValueError, match="th4 = -1 <= 0"):
        sweet_spot_n_out(Theta("eq5", (1, 1, 1, 1, -1, 1), None, None, "t"), 64)
    with pytest.raises(ValueError, match="no sweet spot at n_in = 64"):
        sweet_spot_n_out(Theta("eq4", (1, 0, 1, -1, 1), None, None, "t"), [64])


# --- theta YAML ----------------------------------------------------------------------------------------------


def test_theta_yaml_round_trip(tmp_path):
    n_in, n_out = _grid()
    fitted = fit("eq4", n_in, n_out, PRESETS["granite-8b"].e_tok(n_in, n_out) * 1.01, model="granite-8b",
                 hardware="h100-sxm", source="fitted by a test", folds=5)
    for theta in (fitted, preset("gemma2-2b"), Theta("b3", (0.5, 7), None, None, "hand")):
        path = tmp_path / f"{theta.form}.yaml"
        save_theta(theta, path)
        back = load_theta(path)
        assert back == theta
        assert back.e_tok(300, 70) == pytest.approx(theta.e_tok(300, 70), rel=0, abs=0)


def test_theta_yaml_accepts_a_list(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("form: b2\ntheta: [0.5, 2]\nsource: hand\n")
    assert load_theta(path) == Theta("b2", (0.5, 2.0), None, None, "hand")


@pytest.mark.parametrize("text, message", [
    ("form: eq5\ntheta: [1, 2]\nsource: s\n", "key 'theta': form eq5 has 6 coefficients; got 2"),
    ("form: eq9\ntheta: [1]\nsource: s\n", "key 'form': unknown form 'eq9'"),
    ("theta: [1]\nsource: s\n", "missing key 'form'"),
    ("form: b1\nsource: s\n", "missing key 'theta'"),
    ("form: b1\ntheta: [1]\n", "missing key 'source'"),
    ("form: b2\ntheta: {th0: 1}\nsource: s\n", "missing key 'theta.th1'"),
    ("form: b2\ntheta: {th0: 1, th1: 2, th2: 3}\nsource: s\n", "key 'theta.th2'"),
    ("form: b2\ntheta: {th0: 1, th1: abc}\nsource: s\n", "key 'theta.th1': expected a finite number, got 'abc'"),
    ("form: b2\ntheta: [1, .nan]\nsource: s\n", r"key 'theta\[1\]': expected a finite number"),
    ("form: b1\ntheta: [1]\nsource: s\nthetas: 2\n", "unknown key 'thetas'"),
    ("form: b1\ntheta: [1]\nsource: s\nterms: [n_in]\n", "key 'terms'"),
    ("form: b1\ntheta: [1]\nsource: s\nmodel: [a]\n", "key 'model': expected a string"),
    ("form: b1\ntheta: 3\nsource: s\n", "key 'theta': expected a mapping"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("form: [b1\n", "not valid YAML"),
])
def test_bad_theta_file_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_theta(path)
    assert str(path) in str(err.value)


def test_missing_theta_file(tmp_path):
    with pytest.raises(ValueError, match="nope.yaml: cannot read"):
        load_theta(tmp_path / "nope.yaml")
