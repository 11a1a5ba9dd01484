"""Every law of the protocol fitted from one runs table, and the numbers derived from them.

One function fits them all, so that the point estimate and each bootstrap draw
(bootstrap.py) derive exactly the same quantities (docs/METHOD.md §2.6: "in every draw,
derive every quantity again").

Where F_opt(C), steps_opt(C) and the frontier loss L(C) come from: the IsoFLOP vertices of
the budgets whose minimum lies inside the sampled widths, when there are at least
MIN_INTERIOR_BUDGETS of them; else the parametric law, whose optimum has a closed form at
every C. The point fit decides, and every bootstrap draw uses the same source and the same
budgets (their vertices as the draw's parabolas put them, also beyond the sampled widths):
a draw that switched source would mix two estimators in one interval, and one that dropped
a budget whose vertex left the grid would change the estimator and truncate the spread.
A draw whose parabola opens downward at one of those budgets, or puts its vertex more than
isoflop.WINDOW_DEX beyond its widths, leaves that budget out (isoflop.vertices_at) while
MIN_INTERIOR_BUDGETS remain.

A draw's losses scatter about the parametric law's fitted losses (bootstrap.py), whose
IsoFLOP vertices are not quite the data's; each draw's vertices are moved by the data's
vertex minus the fitted losses' (`VertexShift`), so the intervals are about the data's
vertices. The parametric and LR estimates need no such move: refitting the fitted values
returns them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.best_lr import Gaps, at_best_lr, lr_gaps
from analysis.isoflop import (
    BUDGET_TOL_DEX,
    MIN_INTERIOR_BUDGETS,
    fit_isoflop,
    interior_budgets,
    vertices_at,
)
from analysis.lr_law import fit_lr_law, fit_lr_optima, interior_points, lr_groups
from analysis.parametric import ParametricFit, fit_parametric
from analysis.powerlaw import OffsetPowerLaw, PowerLaw, fit_offset_power_law, fit_power_law
from sae_core.errors import UserError


@dataclass(frozen=True)
class Laws:
    parametric: ParametricFit
    isoflop: pd.DataFrame  # isoflop.ISOFLOP_COLUMNS, one row per budget
    # Budgets whose IsoFLOP vertices give F_opt(C), steps_opt(C) and L(C); () when those
    # laws come from the parametric fit.
    allocation_budgets: tuple[float, ...]
    features_law: PowerLaw | None  # F_opt(C) from the IsoFLOP vertices (None: parametric)
    steps_law: PowerLaw | None  # steps_opt(C) from the IsoFLOP vertices
    loss_law: OffsetPowerLaw | None  # frontier loss L(C) = E + A C^c from the vertices
    lr_optima: pd.DataFrame | None  # lr_law.LR_COLUMNS
    lr_law: PowerLaw | None  # LR_opt(C)
    lr_points: tuple[tuple[float, float], ...] = ()  # (F, steps) of the points the LR law uses
    # (compute, log-loss gap) of stage 1's LR at those points; the stage-1 losses the laws
    # were fitted to are moved down by it (best_lr.py); () when nothing was moved
    lr_gaps: Gaps = ()

    def at_best_lr(self, runs: pd.DataFrame) -> pd.DataFrame:
        """Stage-1 runs with their losses moved as these laws' fit moved them."""
        return at_best_lr(runs, self.lr_gaps)

    @property
    def allocation_source(self) -> str:
        return "isoflop" if self.allocation_budgets else "parametric"


# Per allocation budget: (log10 F_vertex, loss_vertex) of the data minus those of the
# losses a draw scatters about; added to each draw's vertices (module docstring).
VertexShift = tuple[tuple[float, float], ...]


def split_stages(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, float | None]:
    """(stage-1 runs, LR-stage runs, stage-1 lr).

    LR-stage runs sit at an (F, steps) point swept over >= 3 learning rates; such a run
    at the stage-1 lr (the median lr of the others) also counts as a stage-1 run.
    """
    in_lr = lr_groups(runs)
    if not in_lr.any():
        lr = float(runs["lr"].median()) if "lr" in runs.columns and runs["lr"].notna().any() else None
        return runs, runs.iloc[:0], lr
    if (~in_lr).any():
        lr_stage1 = float(runs.loc[~in_lr, "lr"].median())
    else:  # an LR sweep alone: its most common lr stands for stage 1
        lr_stage1 = float(runs["lr"].mode().iloc[0])
    stage1 = runs[~in_lr | np.isclose(runs["lr"], lr_stage1, rtol=1e-9)]
    return stage1, runs[in_lr], lr_stage1


def allocation_source(isoflop: pd.DataFrame) -> tuple[tuple[float, ...], str]:
    """(budgets the IsoFLOP laws use, () for the parametric law; why), from the point fit."""
    inside, total = interior_budgets(isoflop), len(isoflop)
    if len(inside) >= MIN_INTERIOR_BUDGETS:
        left_out = f"; {total - len(inside)} with its minimum on the grid's edge left out" \
            if total > len(inside) else ""
        return tuple(inside), (f"{len(inside)} of {total} IsoFLOP budgets have their minimum inside "
                               f"the sampled widths (>= {MIN_INTERIOR_BUDGETS} needed){left_out}")
    if total == 0:
        why = "no IsoFLOP budget (>= 3 widths at one compute)"
    else:
        why = (f"only {len(inside)} of {total} IsoFLOP budgets have their minimum inside the "
               f"sampled widths (>= {MIN_INTERIOR_BUDGETS} needed; edge minima are where the "
               "grid stops, not the law's optimum)")
    return (), f"{why}: the parametric law's optimum"


def _optional(fit, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return fit(*args, **kwargs)
    except UserError:
        return None


def fit_laws(
    stage1: pd.DataFrame,
    lr_runs: pd.DataFrame,
    flops_per_feature_step: float,
    tol_dex: float = BUDGET_TOL_DEX,
    budgets: list[float] | None = None,
    lr_band: float | None = None,
    starts: np.ndarray | None = None,
    allocation_budgets: tuple[float, ...] | None = None,
    lr_points: tuple[tuple[float, float], ...] | None = None,
    vertex_shift: VertexShift | None = None,
) -> Laws:
    """With LR runs, the LR law through the LR optima at `lr_points` (default: the
    interior ones of these runs), and stage 1's losses moved to the best LR of their
    compute (best_lr.py); then, on those, the parametric law (from `starts`, default the
    full grid), the IsoFLOP minima and, at `allocation_budgets` (default: as
    allocation_source decides from these runs), the power laws of their vertices."""
    lr_optima = lr_law = None
    gaps: Gaps = ()
    if len(lr_runs):
        lr_optima = fit_lr_optima(lr_runs, None if lr_points is None else list(lr_points))
        if lr_points is None:
            lr_points = tuple(interior_points(lr_optima))
        lr_law = _optional(fit_lr_law, lr_runs, lr_band, list(lr_points), lr_optima)
        gaps = lr_gaps(lr_runs, lr_optima, lr_points, stage1_lr(stage1))
    at_best = at_best_lr(stage1, gaps)
    parametric = fit_parametric(at_best["n_features"], at_best["n_steps"], at_best["loss"], starts)
    isoflop = fit_isoflop(at_best, flops_per_feature_step, tol_dex, budgets)
    if allocation_budgets is None:
        allocation_budgets, _ = allocation_source(isoflop)
    features_law = steps_law = loss_law = None
    if allocation_budgets:
        used = vertices_at(isoflop, list(allocation_budgets), tol_dex)
        if vertex_shift is not None:
            used = shifted(used, vertex_shift)
        # a draw whose parabola opens downward at a budget has no vertex there: that
        # budget sits this draw out, while enough remain
        used = used.dropna()
        if len(used) >= MIN_INTERIOR_BUDGETS:
            features_law = _optional(fit_power_law, used["compute_flops"], used["n_features_opt"])
            steps_law = _optional(fit_power_law, used["compute_flops"], used["n_steps_opt"])
            loss_law = _optional(fit_offset_power_law, used["compute_flops"], used["loss_opt"])
    return Laws(parametric, isoflop, tuple(allocation_budgets), features_law, steps_law, loss_law,
                lr_optima, lr_law, tuple(lr_points or ()), gaps)


def stage1_lr(stage1: pd.DataFrame) -> float | None:
    """The one LR of the stage-1 runs (their median), or None without an lr column."""
    if "lr" not in stage1.columns or not stage1["lr"].notna().any():
        return None
    return float(stage1["lr"].median())


def shifted(vertices: pd.DataFrame, shift: VertexShift) -> pd.DataFrame:
    """vertices_at() rows with (log10 F, loss) moved by `shift`, one pair per row."""
    d_log_f = np.array([d for d, _ in shift])
    out = vertices.copy()
    out["n_features_opt"] = vertices["n_features_opt"] * 10**d_log_f
    out["n_steps_opt"] = vertices["n_steps_opt"] / 10**d_log_f  # F S = C / k stays
    out["loss_opt"] = vertices["loss_opt"] + np.array([d for _, d in shift])
    return out


def vertex_shift(data: pd.DataFrame, world: pd.DataFrame, budgets: tuple[float, ...],
                 tol_dex: float = BUDGET_TOL_DEX) -> VertexShift:
    """The shift for `budgets` between two fit_isoflop tables (the data's, the fitted
    losses'); 0 where either has no vertex."""
    at, ref = vertices_at(data, list(budgets), tol_dex), vertices_at(world, list(budgets), tol_dex)
    d_log_f = np.log10(at["n_features_opt"].to_numpy()) - np.log10(ref["n_features_opt"].to_numpy())
    d_loss = at["loss_opt"].to_numpy() - ref["loss_opt"].to_numpy()
    return tuple((float(a), float(b)) if np.isfinite(a) and np.isfinite(b) else (0.0, 0.0)
                 for a, b in zip(d_log_f, d_loss, strict=True))


def parametric_frontier(p: ParametricFit, flops_per_feature_step: float) -> OffsetPowerLaw:
    """The parametric law along its optimum: L_opt(C) = E + Q (C/k)^-g with g =
    alpha beta / (alpha + beta) and Q = A G^-alpha + B G^beta (both terms fall as U^-g,
    U = C/k, at F = G U^a, S = U^(1-a) / G)."""
    g = p.alpha * p.beta / (p.alpha + p.beta)
    q = p.A * p.G**-p.alpha + p.B * p.G**p.beta
    return OffsetPowerLaw(p.E, q * flops_per_feature_step**g, -g)


def derived(laws: Laws, flops_per_feature_step: float, target_compute_flops: float) -> dict[str, float]:
    """Flat dict of every reported number (NaN where a law is missing)."""
    p, nan, k = laws.parametric, float("nan"), flops_per_feature_step
    f_opt, s_opt = p.optimal_allocation(target_compute_flops, k)
    out = {
        "E": p.E, "A": p.A, "B": p.B, "alpha": p.alpha, "beta": p.beta, "a": p.a,
        "target_n_features": float(f_opt), "target_n_steps": float(s_opt),
        "target_loss": float(p.predict(f_opt, s_opt)),
    }
    laws_in_c: dict[str, PowerLaw | None] = {"features": laws.features_law, "steps": laws.steps_law}
    loss: OffsetPowerLaw | None = laws.loss_law
    if laws.allocation_source == "parametric":  # F_opt = G (C/k)^a, steps_opt = (C/k)^(1-a) / G
        laws_in_c = {"features": PowerLaw(p.G * k**-p.a, p.a),
                     "steps": PowerLaw(k ** (p.a - 1) / p.G, 1 - p.a)}
        loss = parametric_frontier(p, k)
    laws_in_c["lr"] = laws.lr_law
    for name, law in laws_in_c.items():
        out[f"{name}_coefficient"] = law.coefficient if law else nan
        out[f"{name}_exponent"] = law.exponent if law else nan
    out["target_lr"] = float(laws.lr_law.predict(target_compute_flops)) if laws.lr_law else nan
    out["loss_irreducible"] = loss.irreducible if loss else nan
    out["loss_coefficient"] = loss.coefficient if loss else nan
    out["loss_exponent"] = loss.exponent if loss else nan
    return out
