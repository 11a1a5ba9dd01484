"""The compute-optimal frontier: the lowest loss reachable at each compute.

docs/METHOD.md §2.3, stage 1: at each budget the lowest loss reached is the frontier.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def budget_frontier(runs: pd.DataFrame, budget: np.ndarray) -> pd.DataFrame:
    """The lowest-loss run of each budget (budget: [n_runs] FLOPs, NaN = none), by compute."""
    labelled = runs.assign(budget_flops=budget).dropna(subset=["budget_flops"])
    best = labelled.loc[labelled.groupby("budget_flops")["loss"].idxmin()]
    return best.sort_values("budget_flops").reset_index(drop=True)


def pareto_frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs no cheaper-or-equal run beats: loss falls strictly along it, by compute."""
    ordered = runs.sort_values(["compute_flops", "loss"])
    best_so_far = ordered["loss"].cummin().shift(fill_value=np.inf)
    return ordered[ordered["loss"] < best_so_far].reset_index(drop=True)

