"""Gao et al.'s joint law of width and sparsity for the TopK family (arXiv 2406.04093,
docs/METHOD.md §3.5), fitted where a sweep varies both n (= F) and k:

    L(n, k) = exp(α + β_k log k + β_n log n + γ log k log n) + exp(ζ + η log k)

on the normalised MSE. Gao fits it at convergence; here each (n, k) contributes its
best run (the one trained longest at the largest budget), which is what the sweep knows
of that pair's converged loss. Least squares in log L from several starts (scipy), with
bootstrap intervals over the (n, k) points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from analysis.bootstrap import interval
from sae_core.errors import UserError

NAMES = ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")
# Starts: Gao's GPT-4 values (−0.50, 0.26, −0.017, −0.042, −1.32, −0.085; a secondary
# transcription, docs/METHOD.md §3.5) and a few spread around them.
STARTS = np.array([[-0.50, 0.26, -0.017, -0.042, -1.32, -0.085],
                   [0.0, 0.0, -0.2, 0.0, -3.0, 0.0],
                   [1.0, -0.3, -0.3, 0.0, -2.0, -0.2],
                   [-1.0, 0.5, 0.0, -0.1, -5.0, 0.1]])
MIN_POINTS = 7  # six parameters and one degree of freedom


@dataclass(frozen=True)
class JointLaw:
    alpha: float
    beta_k: float
    beta_n: float
    gamma: float
    zeta: float
    eta: float

    def predict(self, n: np.ndarray | float, k: np.ndarray | float) -> np.ndarray:
        log_n, log_k = np.log(np.asarray(n, float)), np.log(np.asarray(k, float))
        return (np.exp(self.alpha + self.beta_k * log_k + self.beta_n * log_n
                       + self.gamma * log_k * log_n) + np.exp(self.zeta + self.eta * log_k))


def best_per_pair(runs: pd.DataFrame) -> pd.DataFrame:
    """n_features, k, loss: the lowest loss of each (F, k) pair."""
    best = runs.loc[runs.groupby(["n_features", "k"])["loss"].idxmin()]
    return best[["n_features", "k", "loss"]].reset_index(drop=True)


def _fit(points: pd.DataFrame) -> JointLaw:
    log_n = np.log(points["n_features"].to_numpy(float))
    log_k = np.log(points["k"].to_numpy(float))
    log_loss = np.log(points["loss"].to_numpy(float))

    def residuals(theta: np.ndarray) -> np.ndarray:
        a, bk, bn, g, z, e = theta
        first = a + bk * log_k + bn * log_n + g * log_k * log_n
        return np.logaddexp(first, z + e * log_k) - log_loss

    fits = [least_squares(residuals, start, method="lm") for start in STARTS]
    best = min(fits, key=lambda r: float(np.sum(r.fun**2)) if r.success else np.inf)
    return JointLaw(*map(float, best.x))


def fit_joint_law(runs: pd.DataFrame, n_draws: int = 200, seed: int = 0) -> dict[str, object]:
    """The joint law with 95% bootstrap intervals. runs: n_features, k, loss."""
    points = best_per_pair(runs)
    if len(points) < MIN_POINTS or points["k"].nunique() < 2 or points["n_features"].nunique() < 2:
        raise UserError(f"the joint law L(n, k) needs >= {MIN_POINTS} (n, k) pairs with "
                        f">= 2 widths and >= 2 values of k, got {len(points)}")
    law = _fit(points)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        sample = points.iloc[rng.integers(0, len(points), len(points))]
        if sample["k"].nunique() >= 2 and sample["n_features"].nunique() >= 2:
            draws.append([getattr(_fit(sample), n) for n in NAMES])
    table = np.array(draws) if draws else np.full((0, len(NAMES)), np.nan)
    residual = np.log(law.predict(points["n_features"], points["k"])) - np.log(points["loss"])
    return {
        "form": "L(n, k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) "
                "+ exp(zeta + eta log k)",
        "n_points": len(points),
        **{n: {"value": getattr(law, n), "ci95": interval(table[:, i]) if len(table) else None}
           for i, n in enumerate(NAMES)},
        "rms_log_residual": float(np.sqrt(np.mean(residual**2))),
        "points": points.to_dict("records"),
    }
