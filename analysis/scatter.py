"""Run-to-run scatter around the fitted law, measured at two levels, and resampling by it.

A run's log loss is log L(F, S) + u + e: u is its design point's deviation from the law
(what the law misses at that (F, steps, lr); a point's seed replicates share it) and e is
seed-to-seed noise. Seed replicates (runs that differ only in `seed`) measure e directly,
from their spread about their point's mean; the point means' scatter about the law, less
what seed noise explains of it, gives u. Without replicates the two are one term.

The stage-1 bootstrap draws new deviations on the fixed design (model-based resampling,
Davison & Hinkley 1997, "Bootstrap methods and their application", s6.2.3; two levels
with their variances from the data, as Carpenter, Goldstein & Rasbash 2003, JRSS C 52, do
for multilevel models): every draw keeps every (F, steps) of the sweep, so an IsoFLOP
budget never loses a width. Resampling design points instead (runs, or points with their
seeds) changes the design: a budget's parabola needs 3 of its 3-5 widths, and
conditioning the draws on keeping them shrank the intervals (coverage before and after:
tests/test_fit_coverage.py).

The deviations are drawn as normal, not from the residuals themselves: the Huber fit
(delta = 1e-3 in log loss, below the noise) is nearly a least-absolute-deviation fit and
passes through about one run per parameter, so ~40% of its residuals sit within 1e-3 of
zero where the noise puts ~16% (planted 0.5% noise, 20 runs). Resampling that spike made
the refits too precise: over 100 such planted sweeps the 95% intervals of alpha and of the
F_opt exponent covered 0.83 and 0.90 with resampled residuals, 0.88 and 0.92 with normal
deviations, 0.91 and 0.94 with the variances redrawn as below.

Variances: a fit with p parameters through N design points leaves residuals smaller than
the deviations, by (N - p) / N; the point-level variance is divided by N - p. Each draw
also redraws the variances from their sampling distribution, sigma*^2 = s^2 df / chi2(df)
(the posterior of a normal variance: Gelman et al., "Bayesian Data Analysis", 3rd ed.,
s14.2), so that few degrees of freedom widen the intervals as Student's t widens a
regression's: with 20 runs and 5 parameters, t(15) is 9% wider than the normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

N_LAW_PARAMS = 5  # E, A, B, alpha, beta
N_SCATTER_QUANTILES = 200  # normal quantiles that stand for a new run's deviation, per draw


@dataclass(frozen=True)
class RunScatter:
    """Standard deviations (log loss) of a design point's deviation from the law (u) and of
    seed-to-seed noise (e; 0 without replicates), with their degrees of freedom."""

    point_sd: float
    seed_sd: float
    point_df: int
    seed_df: int = 0

    @property
    def total_sd(self) -> float:
        return float(np.hypot(self.point_sd, self.seed_sd))

    def draw_sds(self, rng: np.random.Generator) -> tuple[float, float]:
        """(sigma_u*, sigma_e*): each s sqrt(df / chi2(df)); s itself where df is 0."""
        return _draw_sd(self.point_sd, self.point_df, rng), _draw_sd(self.seed_sd, self.seed_df, rng)


def _draw_sd(sd: float, df: int, rng: np.random.Generator) -> float:
    return float(sd * np.sqrt(df / rng.chisquare(df))) if df > 0 and sd > 0 else sd


def run_scatter(log_deviation: np.ndarray, point_ids: np.ndarray, n_params: int = N_LAW_PARAMS) -> RunScatter:
    """From the point fit's deviations log L_obs - log L_fit [n_runs] and each run's design
    point [n_runs] (replicates share one).

    sigma_e^2: pooled within-point variance, squared deviations from the point means over
    sum(n_i - 1). sigma_u^2: the point means' squared deviations over N - p, less the mean
    sigma_e^2 / n_i that their own seed noise contributes (floored at 0).
    """
    r = np.asarray(log_deviation, dtype=float)
    _, inverse, counts = np.unique(np.asarray(point_ids), return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=r) / counts
    seed_df = int((counts - 1).sum())
    seed_var = float(((r - means[inverse]) ** 2).sum() / seed_df) if seed_df else 0.0
    point_df = max(len(means) - n_params, 1)
    point_var = float((means**2).sum() / point_df)
    point_var = max(point_var - seed_var * float(np.mean(1.0 / counts)), 0.0)
    return RunScatter(float(np.sqrt(point_var)), float(np.sqrt(seed_var)), point_df, seed_df)


def resample_log_loss(
    fitted_log_loss: np.ndarray, point_ids: np.ndarray, sds: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """One draw on the fixed design: log L_fit + u* (one per design point, shared by its
    replicates) + e* (one per run), normal with deviations sds = (sigma_u*, sigma_e*)."""
    _, inverse = np.unique(np.asarray(point_ids), return_inverse=True)
    u = sds[0] * rng.standard_normal(inverse.max() + 1)
    e = sds[1] * rng.standard_normal(len(inverse))
    return np.asarray(fitted_log_loss, dtype=float) + u[inverse] + e


def new_run_samples(predicted: np.ndarray, scatter_sd: np.ndarray) -> np.ndarray:
    """Loss of one new run: each draw's predicted loss [n_draws] times exp(its scatter sd
    [n_draws] x each of N_SCATTER_QUANTILES normal quantiles), flat."""
    z = special.ndtri((np.arange(N_SCATTER_QUANTILES) + 0.5) / N_SCATTER_QUANTILES)
    pred, sd = np.asarray(predicted, dtype=float), np.asarray(scatter_sd, dtype=float)
    return (pred[:, None] * np.exp(sd[:, None] * z[None, :])).ravel()
