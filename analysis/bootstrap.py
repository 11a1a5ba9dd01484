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


# A stratum's draw keeps at least this many of its distinct design points (or all it has):
# a parabola through an IsoFLOP budget needs 3 widths. Unconditioned, 82.5% of 200 draws
# of the demo's stage 1 (4 budgets x 4 widths) lost a budget's third width, and with it
# that budget's vertex: the F_opt exponent's interval spanned [0.00, 1.30].
MIN_DISTINCT_POINTS = 3
MAX_REDRAWS = 1000


def resample(runs: pd.DataFrame, rng: np.random.Generator, strata: pd.Series | None = None,
             points: pd.Series | None = None) -> pd.DataFrame:
    """Rows drawn with replacement, the same count per stratum (NaN label = own stratum).
    With `points` (a design-point label per row), each stratum is redrawn until it keeps
    min(MIN_DISTINCT_POINTS, its distinct points) of them: the bootstrap conditioned on
    every budget's fit being identifiable."""
    if strata is None:
        return runs.iloc[rng.integers(0, len(runs), len(runs))]
    labels = strata.fillna(-1.0).to_numpy()
    point_ids = None if points is None else pd.factorize(points)[0]
    picks = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        need = 0 if point_ids is None else min(MIN_DISTINCT_POINTS,
                                                len(np.unique(point_ids[rows])))
        for _ in range(MAX_REDRAWS):
            pick = rng.choice(rows, size=len(rows))
            if point_ids is None or len(np.unique(point_ids[pick])) >= need:
                break
        picks.append(pick)
    return runs.iloc[np.concatenate(picks)]


def bootstrap_draws(
    runs: pd.DataFrame,
    derive: Callable[[pd.DataFrame], dict[str, float]],
    n_draws: int = N_DRAWS,
    seed: int = 0,
    strata: pd.Series | None = None,
    points: pd.Series | None = None,
) -> pd.DataFrame:
    """[n_draws, n_quantities]: derive() of each resample (within `strata`, keeping enough
    distinct `points`: see resample); NaN where a draw cannot be fitted."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_draws):
        try:  # a degenerate resample may overflow a fit: it yields inf/NaN, not a warning
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                rows.append(derive(resample(runs, rng, strata, points)))
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
