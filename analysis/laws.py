"""Every law of the protocol fitted from one runs table, and the numbers derived from them.

One function fits them all, so that the point estimate and each bootstrap draw
(bootstrap.py) derive exactly the same quantities (METHOD.md s2: "derive every quantity
per bootstrap draw").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.frontier import pareto_frontier
from analysis.isoflop import BUDGET_TOL_DEX, fit_isoflop, trusted
from analysis.lr_law import fit_lr_law, fit_lr_optima, lr_groups
from analysis.parametric import ParametricFit, fit_parametric
from analysis.powerlaw import OffsetPowerLaw, PowerLaw, fit_offset_power_law, fit_power_law
from sae_core.errors import UserError


@dataclass(frozen=True)
class Laws:
    parametric: ParametricFit
    isoflop: pd.DataFrame  # isoflop.ISOFLOP_COLUMNS, one row per budget
    features_law: PowerLaw | None  # F_opt(C) from the IsoFLOP minima
    steps_law: PowerLaw | None  # steps_opt(C) from the IsoFLOP minima
    loss_law: OffsetPowerLaw | None  # frontier loss L(C) = E + A C^c
    lr_optima: pd.DataFrame | None  # lr_law.LR_COLUMNS
    lr_law: PowerLaw | None  # LR_opt(C)


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


def loss_frontier(stage1: pd.DataFrame, isoflop: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(compute, loss) points the frontier-loss law is fitted to: the parabola minima of
    >= 3 unflagged IsoFLOP budgets (one point per budget, between the sampled widths),
    else the Pareto frontier of all runs (in an IsoFLOP design it holds several runs per
    budget, whose step-rounding spreads their compute a little)."""
    clean = isoflop[isoflop["edge"] == ""]
    if len(clean) >= 3:
        return clean["compute_flops"], clean["loss_opt"]
    front = pareto_frontier(stage1)
    return front["compute_flops"], front["loss"]


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
) -> Laws:
    """Fit the parametric law (from `starts`, default the full grid), the IsoFLOP minima
    and their power laws, the frontier loss law and, with LR runs, the LR law."""
    parametric = fit_parametric(stage1["n_features"], stage1["n_steps"], stage1["loss"], starts)
    isoflop = fit_isoflop(stage1, flops_per_feature_step, tol_dex, budgets)
    features_law = steps_law = None
    if len(isoflop) >= 2:
        used = trusted(isoflop)
        features_law = _optional(fit_power_law, used["compute_flops"], used["n_features_opt"])
        steps_law = _optional(fit_power_law, used["compute_flops"], used["n_steps_opt"])
    loss_law = _optional(fit_offset_power_law, *loss_frontier(stage1, isoflop))
    lr_optima = lr_law = None
    if len(lr_runs):
        lr_optima = fit_lr_optima(lr_runs)
        lr_law = _optional(fit_lr_law, lr_runs, lr_band)
    return Laws(parametric, isoflop, features_law, steps_law, loss_law, lr_optima, lr_law)


def derived(laws: Laws, flops_per_feature_step: float, target_compute_flops: float) -> dict[str, float]:
    """Flat dict of every reported number (NaN where a law is missing)."""
    p, nan = laws.parametric, float("nan")
    f_opt, s_opt = p.optimal_allocation(target_compute_flops, flops_per_feature_step)
    out = {
        "E": p.E, "A": p.A, "B": p.B, "alpha": p.alpha, "beta": p.beta, "a": p.a,
        "target_n_features": float(f_opt), "target_n_steps": float(s_opt),
        "target_loss": float(p.predict(f_opt, s_opt)),
    }
    for name, law in (("features", laws.features_law), ("steps", laws.steps_law), ("lr", laws.lr_law)):
        out[f"{name}_coefficient"] = law.coefficient if law else nan
        out[f"{name}_exponent"] = law.exponent if law else nan
    out["target_lr"] = float(laws.lr_law.predict(target_compute_flops)) if laws.lr_law else nan
    loss = laws.loss_law
    out["loss_irreducible"] = loss.irreducible if loss else nan
    out["loss_coefficient"] = loss.coefficient if loss else nan
    out["loss_exponent"] = loss.exponent if loss else nan
    return out
