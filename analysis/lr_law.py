"""The learning-rate stage: LR_opt per compute budget, and its power law in compute.

docs/METHOD.md §2.3, stage 2: at the compute-optimal (F, steps) of several budgets
sweep the LR; the optimal LR falls roughly as a power law in compute.

Loss against log LR is far from a parabola over two decades: on MiniLM it rises ~0.26
|d|^1.45 below the optimum and ~0.54 d^2.55 above it (d in dex; the demo's 15 stage-2
runs), and an all-points parabola there put the vertex a quarter-decade or more off. So
each point first gets a parabola of log loss in log10 LR through the runs within
WINDOW_DEX of its best sampled LR, which flags an optimum the grid does not bracket (on
planted curves of that shape the all-points parabola biased the LR exponent by -0.23,
true -0.3, the window by under 0.03; tests/test_fit_lr.py). Where the windows hold more
than three runs (a refining round, `plan-lr --refine`), the bracketed points then share
one asymmetric curve (lr_shape.py), and its per-point vertices are the optima: the window
parabola's vertex misses an asymmetric minimum by a bias that depends on where the grid
sits, and its residuals read that misfit as noise (0.75% against 0.3% planted; the
shared curve's 0.27%, tests/test_lr_shape.py). A first round alone (three runs a
window) keeps the parabolas, which pass through their runs exactly.

A point whose best sampled LR is the grid's smallest or largest is flagged and never
enters the LR law, as an IsoFLOP budget on its edge never enters the allocation laws.
DeepSeek LLM (2024) fits the law to every run within a band of the best loss rather than
the optimum alone: `near_optimal_band`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.isoflop import edge_message
from analysis.lr_shape import SHAPE_WINDOW_DEX, Shape, fit_shared, n_parameters
from analysis.powerlaw import PowerLaw, fit_power_law
from sae_core.errors import UserError

MIN_LRS = 3  # a parabola has three coefficients
# The window: the best sampled LR and one half-decade step (the demo's grid) either side;
# after a refining round (plan_lr.lr_refine_specs) it holds 5 runs, 2 residual df.
WINDOW_DEX = 0.55
LR_COLUMNS = ["compute_flops", "n_features", "n_steps", "n_runs", "lr_opt", "loss_opt", "edge",
              "lr_vertex", "loss_vertex", "curve", "c_low", "p_low", "c_high", "p_high", "n_window",
              "window_lr_min", "window_lr_max", "lr_best", "lr_min", "lr_max"]
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


def fit_lr_optima(lr_runs: pd.DataFrame, points: list[tuple[float, float]] | None = None) -> pd.DataFrame:
    """One row per swept (F, steps) point (columns LR_COLUMNS), by compute.

    lr_runs: columns n_features, n_steps, compute_flops, lr, loss. Each point's window
    parabola says whether its optimum is bracketed (`edge`); the points in `points`
    (default: the bracketed ones) then share one curve (lr_shape.py), whose vertex and
    level per point are lr_vertex and loss_vertex and c_low .. p_high its shape (`curve`
    "shared"). A point left out, or every point when the runs do not outnumber the shared
    curve's parameters, keeps its window parabola (`curve` "window parabola", the shape
    (c, 2, c, 2)). A flagged point reports its best sampled LR and loss as lr_opt and
    loss_opt. lr_best, lr_min and lr_max are the best, smallest and largest sampled LR
    (what a refining round needs); window_lr_min/max the range its curve was fitted over.
    """
    rows, near, curvatures = [], [], []
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
        rows.append({"compute_flops": compute, "n_features": n_features, "n_steps": n_steps,
                     "n_runs": len(group), "lr_opt": 10**best, "loss_opt": float(loss.min()),
                     "edge": edge, "lr_vertex": 10**x_v, "loss_vertex": loss_v,
                     **_curve_columns(Shape.parabola(c2), "window parabola", log_lr[inside]),
                     "lr_best": 10**best, "lr_min": 10 ** log_lr.min(), "lr_max": 10 ** log_lr.max()})
        curvatures.append(c2)
        at = np.abs(log_lr - best) <= SHAPE_WINDOW_DEX + 1e-9
        near.append((log_lr[at], np.log(loss[at])))
    keys = set(points) if points is not None else None
    shared = [i for i, r in enumerate(rows) if np.isfinite(curvatures[i]) and (
        not r["edge"] if keys is None else (float(r["n_features"]), float(r["n_steps"])) in keys)]
    if any(rows[i]["n_window"] <= MIN_LRS for i in shared):
        shared = []  # a window parabola through its 3 runs exactly: a first round alone
    fit = fit_shared([near[i][0] for i in shared], [near[i][1] for i in shared],
                     [(np.log10(rows[i]["lr_vertex"]), np.log(rows[i]["loss_vertex"])) for i in shared],
                     float(np.median([curvatures[i] for i in shared]))) if shared else None
    if fit is not None:
        for j, i in enumerate(shared):
            rows[i].update({"lr_vertex": 10 ** fit.vertices[j], "loss_vertex": float(np.exp(fit.levels[j])),
                            **_curve_columns(fit.shapes[j], "shared", near[i][0])})
    for r in rows:
        if not r["edge"]:
            r["lr_opt"], r["loss_opt"] = r["lr_vertex"], r["loss_vertex"]
    return pd.DataFrame(rows, columns=LR_COLUMNS).sort_values("compute_flops").reset_index(drop=True)


def _curve_columns(shape: Shape, curve: str, log_lr: np.ndarray) -> dict[str, Any]:
    return {"curve": curve, "c_low": shape.c_low, "p_low": shape.p_low, "c_high": shape.c_high,
            "p_high": shape.p_high, "n_window": len(log_lr), "window_lr_min": 10 ** log_lr.min(),
            "window_lr_max": 10 ** log_lr.max()}


def log_loss_at(row: Any, lr: np.ndarray | float) -> np.ndarray:
    """A point's curve (a row of fit_lr_optima, as a record or a named tuple): its log
    loss at lr."""
    def get(key: str) -> float:
        return float(row[key] if isinstance(row, dict) else getattr(row, key))

    shape = Shape(get("c_low"), get("p_low"), get("c_high"), get("p_high"))
    return np.log(get("loss_vertex")) + shape.rise(np.log10(lr) - np.log10(get("lr_vertex")))


def interior_points(optima: pd.DataFrame) -> list[tuple[float, float]]:
    """(n_features, n_steps) of the points whose LR optimum the grid brackets."""
    clean = optima[optima["edge"] == ""]
    return [(float(f), float(s)) for f, s in zip(clean["n_features"], clean["n_steps"], strict=True)]


def near_optimal_band(lr_runs: pd.DataFrame, rel_band: float = 0.01) -> pd.DataFrame:
    """Runs whose loss is within (1 + rel_band) of their point's best loss."""
    best = lr_runs.groupby(POINT)["loss"].transform("min")
    return lr_runs[lr_runs["loss"] <= best * (1 + rel_band)]


def fit_lr_law(lr_runs: pd.DataFrame, band: float | None = None,
               points: list[tuple[float, float]] | None = None,
               optima: pd.DataFrame | None = None) -> PowerLaw:
    """LR_opt(C) = k3 C^c through the vertices of `points` (default: the interior ones of
    these runs; optima: fit_lr_optima's of these runs, when the caller has them), or, with
    `band`, through every run of those points within that relative band of its point's
    best loss (DeepSeek LLM 2024). A bootstrap draw passes its point fit's points: their
    vertices are used even where the draw's best LR moved to the grid's edge, so that every
    draw is the same estimator."""
    if optima is None:
        optima = fit_lr_optima(lr_runs, points)
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


def window_fits(lr_runs: pd.DataFrame, optima: pd.DataFrame) -> tuple[np.ndarray, int]:
    """(log loss each run's point curve gives it [n_runs], in lr_runs' row order, NaN
    outside the range it was fitted over and at points without one; the curves' residual
    degrees of freedom, summed). optima: fit_lr_optima's of these runs. The stage-2
    bootstrap redraws the fitted runs around the former."""
    fitted = np.full(len(lr_runs), np.nan)
    lr = lr_runs["lr"].to_numpy(dtype=float)
    f, s = (lr_runs[c].to_numpy(dtype=float) for c in POINT)
    df = n_shared = 0
    for row in optima[np.isfinite(optima["lr_vertex"])].itertuples(index=False):
        at = (f == row.n_features) & (s == row.n_steps) & (lr >= row.window_lr_min * (1 - 1e-9)) \
            & (lr <= row.window_lr_max * (1 + 1e-9))
        fitted[at] = log_loss_at(row, lr[at])
        if row.curve == "shared":
            df += int(at.sum())
            n_shared += 1
        else:
            df += int(at.sum()) - MIN_LRS
    return fitted, df - (n_parameters(n_shared) if n_shared else 0)
