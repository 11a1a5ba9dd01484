"""IsoFLOP analysis (Chinchilla's Approach 2): per compute budget, a parabola of loss in log F.

Runs are grouped into budgets; at each budget with at least three distinct widths the
vertex of `loss ~ quadratic(log10 F)` is F_opt(C), and steps_opt(C) = C / (k F_opt). The
parabola goes through the widths near the best sampled one (`window`): at fixed C the
loss is E + A F^-alpha + B' F^beta, a parabola in log F only near its minimum, and a grid
extended on one side (as adaptive rounds extend it) pulls an all-widths vertex toward its
dense side. On planted runs a grid of 64..1024 extended by 2048 and 4096 put the top
budgets' vertices at 1116 and 1881 (true 1433, 2478; F_opt exponent 0.36, true 0.455),
the window at 1289 and 2448 (0.436) (tests/test_adaptive.py).
A vertex that the grid does not bracket is flagged with the axis to extend
(docs/METHOD.md §2.4: "flag every vertex that the sampled widths do not bracket"), and
such a budget never enters the power laws of F_opt(C) and steps_opt(C): its best sampled
width is where the grid stops, not where the law has its optimum, so on a factorial
F x steps grid the slope through edge minima is the slope of the grid's edge
(tests/test_fit_allocation.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from sae_core.compute import steps_for_budget

BUDGET_TOL_DEX = 0.05  # Epoch AI's wider tolerance around Chinchilla's nine budgets
MIN_WIDTHS = 3  # a parabola has three coefficients
# The window: the widths within WINDOW_DEX of the best (+-2 steps of a factor-2 grid), and
# never fewer than the WINDOW_WIDTHS nearest it: a half-decade grid of 4 widths (the demo's)
# keeps all 4, its parabola one residual df rather than none.
WINDOW_DEX = 0.65
WINDOW_WIDTHS = 4
# Interior budgets needed for the IsoFLOP power laws: a line through two points has no
# check on the law's form; below three the allocation comes from the parametric law.
MIN_INTERIOR_BUDGETS = 3

ISOFLOP_COLUMNS = [
    "compute_flops", "n_runs", "n_widths", "n_features_opt", "n_steps_opt", "loss_opt",
    "curvature", "edge", "n_features_vertex", "loss_vertex", "window_n_features_min",
    "window_n_features_max",
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
    n_features_opt (the parabola cannot be trusted there). n_features_vertex and
    loss_vertex are the parabola's vertex in every case (NaN when it opens downward): a
    bootstrap draw reads them at the budgets its point fit found interior (vertices_at).
    curvature is the parabola's x^2 coefficient over its window of widths.
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
        inside = window(log_f, loss)
        x_vertex, loss_vertex, curvature = fit_parabola(log_f[inside], loss[inside])
        edge = edge_message(log_f, loss, x_vertex, budget, "n_features", " (more steps)")
        x_v, loss_v = (log_f[np.argmin(loss)], float(loss.min())) if edge else (x_vertex, loss_vertex)
        f_opt = 10**x_v
        rows.append((budget, len(group), n_widths, f_opt,
                     steps_for_budget(budget, f_opt, flops_per_feature_step),
                     loss_v, curvature, edge, 10**x_vertex, loss_vertex,
                     10 ** log_f[inside].min(), 10 ** log_f[inside].max()))
    return pd.DataFrame(rows, columns=ISOFLOP_COLUMNS)


def window(log_f: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Mask of the runs whose width is in the window around the best run's (log_f: log10 F)."""
    widths = np.unique(log_f)
    distance = np.abs(widths - log_f[np.argmin(loss)])
    nearest = np.sort(distance)[min(WINDOW_WIDTHS, len(widths)) - 1]
    return np.abs(log_f - log_f[np.argmin(loss)]) <= max(WINDOW_DEX, nearest) + 1e-9


def interior_budgets(isoflop: pd.DataFrame) -> list[float]:
    """Budgets whose parabola minimum the sampled widths bracket (no edge flag)."""
    return [float(c) for c in isoflop.loc[isoflop["edge"] == "", "compute_flops"]]


def vertices_at(isoflop: pd.DataFrame, budgets: list[float], tol_dex: float = BUDGET_TOL_DEX) -> pd.DataFrame:
    """One row per budget of `budgets`, in order: the row of `isoflop` nearest it within
    tol_dex (a bootstrap draw's grouping moves a budget's geometric mean a little), with
    the parabola's vertex as n_features_opt, n_steps_opt and loss_opt, flagged or not; NaN
    there where the budget is missing, its parabola opens downward, or its vertex lies more
    than WINDOW_DEX beyond the widths it was fitted to (a nearly flat parabola in a
    bootstrap draw: on Chinchilla's 32 budgets grouped by compute, 2 of 50 draws sent the
    F_opt exponent below 0 through such vertices)."""
    columns = ["compute_flops", "n_features_opt", "n_steps_opt", "loss_opt"]
    log_c = np.log10(isoflop["compute_flops"].to_numpy(dtype=float))
    rows = []
    for budget in budgets:
        dist = np.abs(log_c - np.log10(budget))
        i = int(np.argmin(dist)) if len(dist) else -1
        if i < 0 or dist[i] > tol_dex:
            rows.append((budget, np.nan, np.nan, np.nan))
            continue
        row = isoflop.iloc[i]
        reach = 10**WINDOW_DEX
        if not row["window_n_features_min"] / reach <= row["n_features_vertex"] <= row["window_n_features_max"] * reach:
            rows.append((budget, np.nan, np.nan, np.nan))  # downward (NaN) or runaway vertex
            continue
        units = row["n_steps_opt"] * row["n_features_opt"]  # C / k
        rows.append((row["compute_flops"], row["n_features_vertex"], units / row["n_features_vertex"],
                     row["loss_vertex"]))
    return pd.DataFrame(rows, columns=columns)
