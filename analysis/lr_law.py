"""The learning-rate stage: LR_opt per compute budget, and its power law in compute.

METHOD.md s2, stage 2: at the compute-optimal (F, steps) of several budgets sweep the LR;
the optimal LR falls roughly as a power law in compute. Per budget the optimum is the
vertex of a parabola of loss in log10 LR. DeepSeek LLM (2024) fits the law to every run
within a band of the best loss rather than the argmin alone: `near_optimal_band`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.isoflop import edge_message, fit_parabola
from analysis.powerlaw import PowerLaw, fit_power_law

MIN_LRS = 3  # a parabola has three coefficients
LR_COLUMNS = ["compute_flops", "n_features", "n_steps", "n_runs", "lr_opt", "loss_opt", "edge"]


def lr_groups(runs: pd.DataFrame) -> pd.Series:
    """True for runs at an (n_features, n_steps) point swept over >= 3 distinct LRs."""
    if "lr" not in runs.columns:
        return pd.Series(False, index=runs.index)
    n_lr = runs.groupby(["n_features", "n_steps"])["lr"].transform("nunique")
    return n_lr >= MIN_LRS


def fit_lr_optima(lr_runs: pd.DataFrame) -> pd.DataFrame:
    """One row per swept (F, steps) point (columns LR_COLUMNS), by compute.

    lr_runs: columns n_features, n_steps, compute_flops, lr, loss. A flagged point (LR
    optimum not bracketed) reports its best sampled LR.
    """
    rows = []
    for (n_features, n_steps), group in lr_runs.groupby(["n_features", "n_steps"]):
        log_lr = np.log10(group["lr"].to_numpy(dtype=float))
        loss = group["loss"].to_numpy(dtype=float)
        if len(np.unique(log_lr)) < MIN_LRS:
            continue
        compute = float(group["compute_flops"].median())
        x_v, loss_v, _ = fit_parabola(log_lr, loss)
        edge = edge_message(log_lr, loss, x_v, compute, "lr")
        if edge:
            x_v, loss_v = log_lr[np.argmin(loss)], float(loss.min())
        rows.append((compute, n_features, n_steps, len(group), 10**x_v, loss_v, edge))
    return pd.DataFrame(rows, columns=LR_COLUMNS).sort_values("compute_flops").reset_index(drop=True)


def near_optimal_band(lr_runs: pd.DataFrame, rel_band: float = 0.01) -> pd.DataFrame:
    """Runs whose loss is within (1 + rel_band) of their point's best loss."""
    best = lr_runs.groupby(["n_features", "n_steps"])["loss"].transform("min")
    return lr_runs[lr_runs["loss"] <= best * (1 + rel_band)]


def fit_lr_law(lr_runs: pd.DataFrame, band: float | None = None) -> PowerLaw:
    """LR_opt(C) = k3 C^c: on the per-point parabola optima, or, with `band`, on every
    run within that relative band of its point's best loss (DeepSeek LLM 2024)."""
    if band is not None:
        near = near_optimal_band(lr_runs, band)
        return fit_power_law(near["compute_flops"], near["lr"], "LR law")
    optima = fit_lr_optima(lr_runs)
    return fit_power_law(optima["compute_flops"], optima["lr_opt"], "LR law")
