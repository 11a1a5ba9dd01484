"""Runs tables drawn from planted laws, with the answers known in advance (tests only).

- `isoflop_runs`: an IsoFLOP design (several widths at each of a few budgets, bracketing
  the optimum) with losses from L(F, S) = E + A/F^alpha + B/S^beta times log-normal noise.
- `lr_runs`: at given (F, steps) points, a log grid of LRs with the loss a parabola in
  log10 LR around LR_opt(C) = k3 C^c.
- `factorial_runs`: a plain F x steps grid, the design that leaves the compute-optimal
  width on the grid's edge at most budgets.
- `replicated_isoflop_runs`: an IsoFLOP design whose design points carry a shared
  deviation from the law (what a law misses at that point: a seed cannot remove it) and
  each seed replicate its own (seed-to-seed noise).
- `asymmetric_lr_runs`: at given (F, steps) points, loss against log10 LR rising faster
  above the optimum than below it, in the shape fitted to MiniLM's stage-2 runs.
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


COLUMNS = ["n_features", "n_steps", "compute_flops", "seed", "loss"]


def factorial_runs(
    law: ParametricFit, n_features: list[int], n_steps: list[int], flops_per_feature_step: float,
    noise_rel: float = 0.005, seed: int = 0,
) -> pd.DataFrame:
    """Every (F, S) of the grid once, loss = L(F, S) exp(noise_rel z)."""
    rng = np.random.default_rng(seed)
    f, s = (a.ravel() for a in np.meshgrid(n_features, n_steps))
    loss = law.predict(f, s) * np.exp(noise_rel * rng.standard_normal(f.size))
    return pd.DataFrame({"n_features": f, "n_steps": s, "compute_flops": flops_per_feature_step * f * s,
                         "seed": 0, "loss": loss})[COLUMNS]


def isoflop_points(
    law: ParametricFit, budgets_flops: list[float], flops_per_feature_step: float,
    n_widths: int = 5, span_dex: float = 1.5, centre_dex: float | list[float] = 0.0,
) -> pd.DataFrame:
    """The design: n_widths widths log-spaced over span_dex around 10^centre_dex F_opt(C) at
    each budget (centre_dex: one number or one per budget), steps S = C / (k F) rounded.
    Columns n_features, n_steps, compute_flops."""
    rows = []
    centres = [centre_dex] * len(budgets_flops) if isinstance(centre_dex, float | int) else centre_dex
    for budget, centre in zip(budgets_flops, centres, strict=True):
        f_opt, _ = law.optimal_allocation(budget, flops_per_feature_step)
        offsets = np.linspace(-span_dex / 2, span_dex / 2, n_widths) + centre
        for f in np.unique(np.round(f_opt * 10**offsets).astype(int)):
            s = max(1, int(round(budget / (flops_per_feature_step * f))))
            rows.append((int(f), s, flops_per_feature_step * f * s))
    return pd.DataFrame(rows, columns=["n_features", "n_steps", "compute_flops"])


def replicated_isoflop_runs(
    law: ParametricFit, budgets_flops: list[float], flops_per_feature_step: float,
    n_seeds: int | list[int] = 1, point_noise_rel: float = 0.0, seed_noise_rel: float = 0.0,
    n_widths: int = 5, span_dex: float = 1.5, centre_dex: float | list[float] = 0.0, seed: int = 0,
) -> pd.DataFrame:
    """loss = L(F, S) exp(u_point + e_seed), u ~ N(0, point_noise_rel^2) shared by a design
    point's replicates, e ~ N(0, seed_noise_rel^2) per run. n_seeds: replicates per point,
    one number or one per budget."""
    rng = np.random.default_rng(seed)
    points = isoflop_points(law, budgets_flops, flops_per_feature_step, n_widths, span_dex, centre_dex)
    per_budget = [n_seeds] * len(budgets_flops) if isinstance(n_seeds, int) else list(n_seeds)
    seeds_of = dict(zip(budgets_flops, per_budget, strict=True))
    rows = []
    for p in points.itertuples():
        budget = min(budgets_flops, key=lambda b: abs(np.log(b / p.compute_flops)))
        base = float(law.predict(p.n_features, p.n_steps)) * np.exp(point_noise_rel * rng.standard_normal())
        for s in range(seeds_of[budget]):
            loss = base * np.exp(seed_noise_rel * rng.standard_normal())
            rows.append((p.n_features, p.n_steps, p.compute_flops, s, loss))
    return pd.DataFrame(rows, columns=COLUMNS)


# Loss against log10 LR on MiniLM (the demo's 15 stage-2 runs, 3 budgets x 5 LRs over two
# decades), fitted with a shared shape and a free optimum per budget: relative rise
# 0.26 |d|^1.45 below the optimum and 0.54 d^2.55 above it (d in dex), 0.38% rms residual.
MINILM_LR_SHAPE = (0.26, 1.45, 0.54, 2.55)


def lr_rise(log10_lr_offset: np.ndarray, shape: tuple[float, float, float, float] = MINILM_LR_SHAPE) -> np.ndarray:
    """Relative loss increase at d = log10(LR / LR_opt): c_low |d|^p_low below the optimum,
    c_high d^p_high above it; shape = (c_low, p_low, c_high, p_high)."""
    d = np.asarray(log10_lr_offset, dtype=float)
    c_low, p_low, c_high, p_high = shape
    return np.where(d < 0, c_low * np.abs(d) ** p_low, c_high * np.abs(d) ** p_high)


def asymmetric_lr_runs(
    points: pd.DataFrame, lr_coefficient: float, lr_exponent: float, lrs: list[np.ndarray],
    shape: tuple[float, float, float, float] = MINILM_LR_SHAPE, noise_rel: float = 0.0,
    lr_reference: float | None = None, seed: int = 0,
) -> pd.DataFrame:
    """For each row of points (n_features, n_steps, compute_flops, loss) and its LRs (lrs[i],
    absolute): loss = loss_point (1 + lr_rise(log10 LR/LR_opt)) exp(noise_rel z) with
    LR_opt = k C^c, divided by (1 + lr_rise) at lr_reference when given (the loss of the
    points is then that at lr_reference: stage 1's law at stage 1's LR). Columns
    n_features, n_steps, compute_flops, lr, loss."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, point_lrs in zip(points.itertuples(), lrs, strict=True):
        lr_opt = lr_coefficient * p.compute_flops**lr_exponent
        base = p.loss / (1 + float(lr_rise(np.log10(lr_reference / lr_opt), shape))) if lr_reference else p.loss
        for lr in np.asarray(point_lrs, dtype=float):
            rise = float(lr_rise(np.log10(lr / lr_opt), shape))
            loss = base * (1 + rise) * np.exp(noise_rel * rng.standard_normal())
            rows.append((p.n_features, p.n_steps, p.compute_flops, float(lr), float(loss)))
    return pd.DataFrame(rows, columns=["n_features", "n_steps", "compute_flops", "lr", "loss"])
