"""Energy estimates set beside the measurement: the [SS26] analytical energy forms (Eq. 4, Eq. 5 and the
baselines B1-B4, with the published Table 5 coefficients and the Eq. 6 sweet spot) and their fitting; FLOP and
byte counting from a model config; the estimator family (flops, roofline, the forms, [Na25] binned)."""

from replay.estimate.forms import (
    FORMS, PRESETS, HeldOut, Theta, features, fit, kfold, load_theta, mape, predict_e_tok, preset, save_theta,
    sweet_spot_n_out,
)
from replay.estimate.counting import (
    Coefficients, Counts, SimplifiedCounts, StepCounts, coefficients, request_counts, simplified_counts, step_counts,
)
from replay.estimate.estimators import ESTIMATORS, Estimate, EstimateContext, estimate

__all__ = [
    "ESTIMATORS", "Coefficients", "Counts", "Estimate", "EstimateContext", "SimplifiedCounts", "StepCounts",
    "coefficients", "estimate", "request_counts", "simplified_counts", "step_counts",
    "FORMS", "PRESETS", "HeldOut", "Theta", "features", "fit", "kfold", "load_theta", "mape", "predict_e_tok",
    "preset", "save_theta", "sweet_spot_n_out",
]
