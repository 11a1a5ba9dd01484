"""The learning-rate stage: LR_opt per compute budget, and its power law in compute.

docs/METHOD.md §2.3, stage 2: at the compute-optimal (F, steps) of several budgets
sweep the LR; the optimal LR falls roughly as a power law in compute.

Per swept point the optimum is the vertex of a parabola of log loss in log10 LR through
the runs within WINDOW_DEX of the best sampled LR, not through all of them. Loss against
log LR is far from a parabola over two decades: on MiniLM it rises ~0.26 |d|^1.45 below
the optimum and ~0.54 d^2.55 above it (d in dex; the demo's 15 stage-2 runs), and an
all-points parabola there put the vertex a quarter-decade or more off. On planted curves
of that shape the all-points parabola biased the LR exponent by -0.23 (true -0.3), the
window by under 0.03 (tests/test_fit_lr.py; the comparison table is in its docstring).

A point whose best sampled LR is the grid's smallest or largest is flagged and never
enters the LR law, as an IsoFLOP budget on its edge never enters the allocation laws.
DeepSeek LLM (2024) fits the law to every run within a band of the best loss rather than
the optimum alone: `near_optimal_band`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.isoflop import edge_message
from analysis.powerlaw import PowerLaw, fit_power_law
from sae_core.errors import UserError

MIN_LRS = 3  # a parabola has three coefficients
# The window: the best sampled LR and one half-decade step (the demo's grid) either side;
# after a refining round (plan_lr.lr_refine_specs) it holds 5 runs, 2 residual df.
WINDOW_DEX = 0.55
LR_COLUMNS = ["compute_flops", "n_features", "n_steps", "n_runs", "lr_opt", "loss_opt", "edge",
              "lr_vertex", "loss_vertex", "curvature", "n_window", "window_lr_min", "window_lr_max",
              "lr_best", "lr_min", "lr_max"]
POINT = ["n_features", "n_steps"]


def lr_groups(runs: pd.DataFrame) -> pd.Series:
    """True for runs at an (n_features, n_steps) point swept over >= 3 distinct LRs."""
    if "lr" not in runs.columns:
        return pd.Series(False, index=runs.index)
    n_lr = runs.groupby(POINT)["lr"].transform("nunique")
    return n_lr >= MIN_LRS


def window(log_lr: np.ndarray, loss: np.ndarray, half_dex: float = WINDOW_DEX) -> np.ndarray:
    """Mask of the runs within half_dex of the best sampled LR (log_lr: log10 LR)."""
    return np.abs(log_lr - log_lr[np.argmin(loss)]) <= half_dex + 1e-9


def window_parabola(log_lr: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(window mask, coefficients of log loss = c2 x^2 + c1 x + c0 over it, or None when
    the window holds fewer than MIN_LRS distinct LRs)."""
    inside = window(log_lr, loss)
    if len(np.unique(log_lr[inside])) < MIN_LRS:
        return inside, None
    return inside, np.polyfit(log_lr[inside], np.log(loss[inside]), 2)


def fit_lr_optima(lr_runs: pd.DataFrame) -> pd.DataFrame:
    """One row per swept (F, steps) point (columns LR_COLUMNS), by compute.

    lr_runs: columns n_features, n_steps, compute_flops, lr, loss. lr_vertex, loss_vertex
    and curvature (of log loss per dex^2) are the window parabola's; a flagged point (its
    optimum not bracketed) reports its best sampled LR as lr_opt. lr_best, lr_min and lr_max
    are the best, smallest and largest sampled LR (what a refining round needs).
    """
    rows = []
    for (n_features, n_steps), group in lr_runs.groupby(POINT):
        log_lr = np.log10(group["lr"].to_numpy(dtype=float))
        loss = group["loss"].to_numpy(dtype=float)
        if len(np.unique(log_lr)) < MIN_LRS:
            continue
        compute = float(group["compute_flops"].median())
        inside, coef = window_parabola(log_lr, loss)
        x_v = loss_v = c2 = np.nan
        if coef is not None and coef[0] > 0:
            c2 = float(coef[0])
            x_v = float(-coef[1] / (2 * c2))
            loss_v = float(np.exp(coef[2] - coef[1] ** 2 / (4 * c2)))
        lo, hi = log_lr[inside].min(), log_lr[inside].max()
        best = log_lr[np.argmin(loss)]
        # the best sampled LR on the grid's edge says which side to extend, whatever the
        # window's parabola does; else a vertex outside the window is not resolved
        edge = edge_message(log_lr, loss, best if best in (log_lr.min(), log_lr.max()) else x_v,
                            compute, "lr")
        if not edge and not lo <= x_v <= hi:
            edge = f"lr optimum poorly resolved at C={compute:.3g} FLOPs: add lr between the best two"
        x_opt, loss_opt = (log_lr[np.argmin(loss)], float(loss.min())) if edge else (x_v, loss_v)
        rows.append((compute, n_features, n_steps, len(group), 10**x_opt, loss_opt, edge,
                     10**x_v, loss_v, c2, int(inside.sum()), 10**lo, 10**hi,
                     10 ** log_lr[np.argmin(loss)], 10 ** log_lr.min(), 10 ** log_lr.max()))
    return pd.DataFrame(rows, columns=LR_COLUMNS).sort_values("compute_flops").reset_index(drop=True)


def interior_points(optima: pd.DataFrame) -> list[tuple[float, float]]:
    """(n_features, n_steps) of the points whose LR optimum the grid brackets."""
    clean = optima[optima["edge"] == ""]
    return [(float(f), float(s)) for f, s in zip(clean["n_features"], clean["n_steps"], strict=True)]


def near_optimal_band(lr_runs: pd.DataFrame, rel_band: float = 0.01) -> pd.DataFrame:
    """Runs whose loss is within (1 + rel_band) of their point's best loss."""
    best = lr_runs.groupby(POINT)["loss"].transform("min")
    return lr_runs[lr_runs["loss"] <= best * (1 + rel_band)]


def fit_lr_law(lr_runs: pd.DataFrame, band: float | None = None,
               points: list[tuple[float, float]] | None = None) -> PowerLaw:
    """LR_opt(C) = k3 C^c through the window vertices of `points` (default: the interior
    ones of these runs), or, with `band`, through every run of those points within that
    relative band of its point's best loss (DeepSeek LLM 2024). A bootstrap draw passes its
    point fit's points: their vertices are used even where the draw's best LR moved to the
    grid's edge, so that every draw is the same estimator."""
    optima = fit_lr_optima(lr_runs)
    if points is None:
        points = interior_points(optima)
    keys = set(points)
    at = [(float(f), float(s)) in keys for f, s in zip(optima["n_features"], optima["n_steps"], strict=True)]
    used = optima[at]
    if len(used) < len(points):
        raise UserError("LR law: a swept point of the point fit is missing")
    if band is not None:
        runs_at = lr_runs.set_index(POINT).index.isin(list(keys))
        near = near_optimal_band(lr_runs[runs_at], band)
        return fit_power_law(near["compute_flops"], near["lr"], "LR law")
    return fit_power_law(used["compute_flops"], used["lr_vertex"], "LR law")


def window_fits(lr_runs: pd.DataFrame) -> tuple[np.ndarray, int]:
    """(log loss each run's window parabola gives it [n_runs], in lr_runs' row order, NaN
    outside windows and at points without one; the parabolas' residual degrees of freedom,
    summed). The stage-2 bootstrap redraws the window runs around the former."""
    fitted = np.full(len(lr_runs), np.nan)
    df = 0
    rows = np.arange(len(lr_runs))
    for _, group in lr_runs.assign(_row=rows).groupby(POINT):
        log_lr = np.log10(group["lr"].to_numpy(dtype=float))
        inside, coef = window_parabola(log_lr, group["loss"].to_numpy(dtype=float))
        if coef is None:
            continue
        at = group["_row"].to_numpy()[inside]
        fitted[at] = np.polyval(coef, log_lr[inside])
        df += int(inside.sum()) - MIN_LRS
    return fitted, df
