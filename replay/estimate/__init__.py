"""Energy estimates set beside the measurement: the [SS26] analytical energy forms (Eq. 4, Eq. 5 and the
baselines B1-B4, with the published Table 5 coefficients and the Eq. 6 sweet spot) and their fitting."""

from replay.estimate.forms import (
    FORMS, PRESETS, HeldOut, Theta, features, fit, kfold, load_theta, mape, predict_e_tok, preset, save_theta,
    sweet_spot_n_out,
)

__all__ = [
    "FORMS", "PRESETS", "HeldOut", "Theta", "features", "fit", "kfold", "load_theta", "mape", "predict_e_tok",
    "preset", "save_theta", "sweet_spot_n_out",
]
