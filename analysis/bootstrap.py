"""Uncertainty by bootstrap over runs (METHOD.md s2; Epoch AI 2024 resample the 240 runs).

Each draw resamples the runs with replacement and recomputes every derived quantity from
that draw (exponents, F_opt, steps_opt, LR_opt, predicted loss), so the intervals carry the
correlations between them. Resampling is stratified by an optional label (the compute
budget), so every draw keeps the sweep's design: an IsoFLOP budget keeps its run count.

Fast path: the caller's `derive` warm-starts the parametric fit from the point fit (one
scipy L-BFGS-B run, ~10-30 ms) instead of the 4500-start grid (seconds); a resample moves
the optimum only a little. On Chinchilla's 240 runs, 200 warm-started draws gave alpha
[0.318, 0.374], beta [0.327, 0.410], a [0.481, 0.557] against the 1000 full-grid
resamples of expected_fits.json: [0.317, 0.371], [0.334, 0.414], [0.481, 0.557]
(tests/test_fit_chinchilla.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from sae_core.errors import UserError

N_DRAWS = 200  # enough for 2.5/97.5 percentiles to +-~1 draw-spacing; Epoch used 4000


def resample(runs: pd.DataFrame, rng: np.random.Generator, strata: pd.Series | None = None) -> pd.DataFrame:
    """Rows drawn with replacement, the same count per stratum (NaN label = own stratum)."""
    if strata is None:
        return runs.iloc[rng.integers(0, len(runs), len(runs))]
    labels = strata.fillna(-1.0).to_numpy()
    picks = [
        rng.choice(np.flatnonzero(labels == label), size=int((labels == label).sum()))
        for label in np.unique(labels)
    ]
    return runs.iloc[np.concatenate(picks)]


def bootstrap_draws(
    runs: pd.DataFrame,
    derive: Callable[[pd.DataFrame], dict[str, float]],
    n_draws: int = N_DRAWS,
    seed: int = 0,
    strata: pd.Series | None = None,
) -> pd.DataFrame:
    """[n_draws, n_quantities]: derive() of each resample; NaN where a draw cannot be fitted
    (say a budget lost its third width)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_draws):
        try:  # a degenerate resample may overflow a fit: it yields inf/NaN, not a warning
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                rows.append(derive(resample(runs, rng, strata)))
        except (UserError, ValueError, np.linalg.LinAlgError):
            rows.append({})
    return pd.DataFrame(rows)


def interval(values: pd.Series | np.ndarray, level: float = 0.95) -> list[float] | None:
    """Central percentile interval of the finite draws; None when fewer than half are finite."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    if finite.size < max(2, v.size // 2):
        return None
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def prediction_interval(
    predicted: np.ndarray, log_residuals: np.ndarray, level: float = 0.95
) -> list[float] | None:
    """Interval for one new run's loss: fit uncertainty times run-to-run scatter.

    predicted: [n_draws] the loss each bootstrap draw predicts; log_residuals: [n_runs]
    log L_pred - log L_obs of the point fit. Every draw is combined with every residual.
    """
    predicted = np.asarray(predicted, dtype=float)
    scatter = np.exp(-np.asarray(log_residuals, dtype=float))
    return interval((predicted[:, None] * scatter[None, :]).ravel(), level)
