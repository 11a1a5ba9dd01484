"""IsoFLOP analysis (Chinchilla's Approach 2): per compute budget, a parabola of loss in log F.

Runs are grouped into budgets; at each budget with at least three distinct widths the
vertex of `loss ~ quadratic(log10 F)` is F_opt(C), and steps_opt(C) = C / (k F_opt).
A vertex that the grid does not bracket is flagged with the axis to extend
(METHOD.md s2: "flag minima on the grid's edge"; ECOSYSTEM.md: a factorial grid left every
optimum on its edge and the plan missed by 16%).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from sae_core.compute import steps_for_budget

BUDGET_TOL_DEX = 0.05  # Epoch AI's wider tolerance around Chinchilla's nine budgets
MIN_WIDTHS = 3  # a parabola has three coefficients

ISOFLOP_COLUMNS = [
    "compute_flops", "n_runs", "n_widths", "n_features_opt", "n_steps_opt", "loss_opt",
    "curvature", "edge",
]


def assign_budgets(
    compute_flops: ArrayLike, tol_dex: float = BUDGET_TOL_DEX, budgets: ArrayLike | None = None
) -> np.ndarray:
    """Budget (FLOPs) of each run, NaN for runs in none: [n_runs].

    With explicit `budgets`, a run belongs to the nearest one within tol_dex. Without,
    runs are grouped greedily in order of compute: a group holds the runs within tol_dex
    of its cheapest member, and its budget is their geometric mean.
    """
    log_c = np.log10(np.asarray(compute_flops, dtype=float))
    out = np.full(log_c.shape, np.nan)
    if budgets is not None:
        budgets = np.asarray(budgets, dtype=float)
        log_b = np.log10(budgets)
        dist = np.abs(log_c[:, None] - log_b[None, :])
        nearest = dist.argmin(axis=1)
        inside = dist[np.arange(len(log_c)), nearest] <= tol_dex
        out[inside] = budgets[nearest[inside]]
        return out
    order = np.argsort(log_c)
    group: list[int] = []
    for i in [*order, -1]:
        if group and (i < 0 or log_c[i] - log_c[group[0]] > tol_dex):
            out[group] = 10 ** log_c[group].mean()
            group = []
        if i >= 0:
            group.append(i)
    return out


def fit_parabola(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares y = c2 x^2 + c1 x + c0 -> (vertex x, vertex y, c2); NaN vertex if c2 <= 0."""
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        return float("nan"), float("nan"), float(c2)
    x_v = -c1 / (2 * c2)
    return float(x_v), float(c0 - c1**2 / (4 * c2)), float(c2)


def edge_message(
    x: np.ndarray, y: np.ndarray, x_vertex: float, compute_flops: float, axis: str,
    smaller_hint: str = "",
) -> str:
    """'' when the sampled grid brackets the minimum, else what to add (x = log10 of axis)."""
    where = f"C={compute_flops:.3g} FLOPs"
    best = x[np.argmin(y)]
    if np.isnan(x_vertex):
        return f"loss vs log {axis} opens downward at {where}: add {axis} on both sides"
    if x_vertex > x.max() or best == x.max():
        return f"minimum at the largest {axis} at {where}: add larger {axis} at {where}"
    if x_vertex < x.min() or best == x.min():
        return f"minimum at the smallest {axis} at {where}: add smaller {axis}{smaller_hint} at {where}"
    return ""


def fit_isoflop(
    runs: pd.DataFrame,
    flops_per_feature_step: float,
    tol_dex: float = BUDGET_TOL_DEX,
    budgets: ArrayLike | None = None,
) -> pd.DataFrame:
    """One row per budget with >= 3 distinct n_features (columns ISOFLOP_COLUMNS).

    runs: columns n_features, compute_flops, loss. `edge` is '' or the message saying
    which axis to extend; a flagged budget reports its best sampled width as
    n_features_opt (the parabola cannot be trusted there).
    """
    label = assign_budgets(runs["compute_flops"], tol_dex, budgets)
    rows = []
    for budget in np.unique(label[np.isfinite(label)]):
        group = runs[label == budget]
        log_f = np.log10(group["n_features"].to_numpy(dtype=float))
        loss = group["loss"].to_numpy(dtype=float)
        n_widths = len(np.unique(log_f))
        if n_widths < MIN_WIDTHS:
            continue
        x_v, loss_v, curvature = fit_parabola(log_f, loss)
        edge = edge_message(log_f, loss, x_v, budget, "n_features", " (more steps)")
        if edge:
            x_v, loss_v = log_f[np.argmin(loss)], float(loss.min())
        f_opt = 10**x_v
        rows.append((budget, len(group), n_widths, f_opt,
                     steps_for_budget(budget, f_opt, flops_per_feature_step),
                     loss_v, curvature, edge))
    return pd.DataFrame(rows, columns=ISOFLOP_COLUMNS)


def trusted(isoflop: pd.DataFrame, min_budgets: int = 2) -> pd.DataFrame:
    """The unflagged budgets when there are at least min_budgets of them, else all."""
    clean = isoflop[isoflop["edge"] == ""]
    return clean if len(clean) >= min_budgets else isoflop
