"""Runs drawn from a known law, for the tests that need answers known in advance.

Stage 1: an IsoFLOP design (METHOD.md s2: several widths at each of a few budgets,
bracketing the optimum) with losses from L(F, S) = E + A/F^alpha + B/S^beta times
log-normal noise. Stage 2: at given (F, steps) points, a log grid of LRs with the loss
a parabola in log10 LR around LR_opt(C) = k3 C^c.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.parametric import ParametricFit


def isoflop_runs(
    law: ParametricFit,
    budgets_flops: list[float],
    flops_per_feature_step: float,
    n_widths: int = 6,
    span_dex: float = 1.2,
    centre_dex: float = 0.0,
    noise_rel: float = 0.01,
    seed: int = 0,
) -> pd.DataFrame:
    """n_widths widths per budget, log-spaced over span_dex around 10^centre_dex x F_opt(C).

    Returns the runs table: n_features, n_steps (integers), compute_flops = k F S, loss.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for budget in budgets_flops:
        f_opt, _ = law.optimal_allocation(budget, flops_per_feature_step)
        offsets = np.linspace(-span_dex / 2, span_dex / 2, n_widths) + centre_dex
        for n_features in np.unique(np.round(f_opt * 10**offsets).astype(int)):
            n_steps = max(1, int(round(budget / (flops_per_feature_step * n_features))))
            loss = float(law.predict(n_features, n_steps)) * np.exp(noise_rel * rng.standard_normal())
            rows.append((int(n_features), n_steps, flops_per_feature_step * n_features * n_steps, loss))
    return pd.DataFrame(rows, columns=["n_features", "n_steps", "compute_flops", "loss"])


def lr_runs(
    points: pd.DataFrame,
    lr_coefficient: float,
    lr_exponent: float,
    curvature: float = 0.05,
    n_lrs: int = 7,
    span_dex: float = 1.5,
    centre_dex: float = 0.0,
    noise_rel: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """For each row of points (n_features, n_steps, compute_flops, loss at LR_opt), n_lrs
    LRs log-spaced over span_dex around 10^centre_dex x LR_opt; loss rises by
    curvature x (log10 lr - log10 LR_opt)^2."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in points.itertuples():
        lr_opt = lr_coefficient * p.compute_flops**lr_exponent
        for off in np.linspace(-span_dex / 2, span_dex / 2, n_lrs) + centre_dex:
            lr = lr_opt * 10**off
            loss = (p.loss + curvature * np.log10(lr / lr_opt) ** 2) * np.exp(noise_rel * rng.standard_normal())
            rows.append((p.n_features, p.n_steps, p.compute_flops, float(lr), float(loss)))
    return pd.DataFrame(rows, columns=["n_features", "n_steps", "compute_flops", "lr", "loss"])
