"""Stage 1's losses as they would be at the best LR of their compute (docs/METHOD.md §2.3).

Stage 1 trains every run at one LR, and stage 2 finds the best LR falling with compute.
So the fixed LR leaves a small budget further from its best LR than a large one: on the
demo the stage-1 LR 1e-3 left the loss 10.1%, 7.4% and 5.7% (in log loss) above each
LR point's optimum at 6.0e11, 1.7e12 and 4.8e12 FLOPs, whose best LRs were 3.8e-3,
2.8e-3 and 2.3e-3. Fitted at the fixed LR, the law learns that handicap shrinking
as part of how the loss falls with compute, and extrapolated it keeps falling too fast:
at 4x, 8x and 16x the top budget its plans landed -1.1%, +0.9% and +2.9% from their
predictions. Moved to the best LR before the fit, the same runs planned runs that landed
+1.3%, +1.4% and +1.5% (`python bench/extrapolation.py`; docs/METHOD.md §5.3). The
intervals widen: the law at the best LR has a higher floor (E 114 against 89), which 16
runs pin down less, and every bootstrap draw measures the gaps again
(analysis/bootstrap.py): at 16x [105.8, 155.7] against [122.7, 142.0] then; with a
refining round in stage 2, +1.0%, +0.7% and +0.4%, at 16x [127.6, 150.6].

The gap at each LR point of the LR law is the log loss of its run at stage 1's LR minus
the log loss at its curve's vertex (lr_law.py; the curve's value at stage 1's LR when no
run sits there), never below 0. A stage-1 run at compute C is moved down by the gap
interpolated in log C between the points (`gap_at`; held at the end values beyond
them): the LR points span the stage-1 budgets (`monoscale plan-lr`), so this
interpolates. Without LR points nothing moves, and the laws describe loss at stage 1's
LR.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from analysis.lr_law import POINT, log_loss_at

# (compute_flops, gap in log loss) per LR point, by compute
Gaps = tuple[tuple[float, float], ...]


def lr_gaps(lr_runs: pd.DataFrame, lr_optima: pd.DataFrame,
            points: Iterable[tuple[float, float]], lr_stage1: float | None) -> Gaps:
    """The gap of stage 1's LR at each of `points` (their (n_features, n_steps)) that has
    a window vertex (module docstring)."""
    if lr_stage1 is None or not np.isfinite(lr_stage1) or lr_stage1 <= 0:
        return ()
    keys = set(points)
    # numpy, not pandas masks: every bootstrap draw calls this (0.5 ms a call against 1.2)
    f, s = (lr_runs[c].to_numpy(dtype=float) for c in POINT)
    at_stage1 = np.isclose(lr_runs["lr"].to_numpy(dtype=float), lr_stage1, rtol=1e-6)
    log_loss = np.log(lr_runs["loss"].to_numpy(dtype=float))
    out = []
    for row in lr_optima.itertuples(index=False):
        if (float(row.n_features), float(row.n_steps)) not in keys or not np.isfinite(row.loss_vertex):
            continue
        here = at_stage1 & (f == row.n_features) & (s == row.n_steps)
        if here.any():
            gap = float(log_loss[here].mean() - np.log(row.loss_vertex))
        else:
            gap = float(log_loss_at(row, lr_stage1) - np.log(row.loss_vertex))
        out.append((float(row.compute_flops), max(gap, 0.0)))
    return tuple(sorted(out))


def gap_at(gaps: Gaps, compute_flops: ArrayLike) -> np.ndarray:
    """The gap at each compute: its square root interpolated linearly in log C, the end
    values beyond; 0 without gaps. Near its optimum log loss rises as the square of the
    distance in log LR, and a power-law LR_opt(C) moves that distance linearly in log C."""
    compute = np.asarray(compute_flops, dtype=float)
    if not gaps:
        return np.zeros_like(compute)
    at, gap = (np.array(v) for v in zip(*gaps, strict=True))
    return np.interp(np.log10(compute), np.log10(at), np.sqrt(gap)) ** 2


def at_best_lr(runs: pd.DataFrame, gaps: Gaps) -> pd.DataFrame:
    """runs with each loss moved down by the gap at its compute."""
    if not gaps:
        return runs
    return runs.assign(loss=runs["loss"] * np.exp(-gap_at(gaps, runs["compute_flops"])))
