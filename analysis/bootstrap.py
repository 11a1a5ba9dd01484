"""Uncertainty by bootstrap (docs/METHOD.md §2.6): every quantity derived per draw.

Each draw is a new runs table on the sweep's fixed design with new deviations
(`fixed_design_draws`; scatter.py says why) from which every derived quantity is
recomputed (exponents, F_opt, steps_opt, LR_opt, predicted loss), so the intervals carry
the correlations between them.

The gaps by which stage 1's losses are moved to the best LR (best_lr.py) are measured
again in every draw, on its LR runs. That makes the intervals conservative: the draws'
LR runs carry the window parabola's misfit as noise (the refined windows' residual sd, or
without residual df the law's run-to-run scatter, 1.8% on the demo), which moves each
draw's gaps more than the gaps are in error. Over the planted protocol of
tests/test_fit_coverage.py (200 replicates) the 95% interval at 4x covered 99.5%; held
at the point fit's gaps instead, it covered 83% of 30 (the window vertex misses the
minimum of an asymmetric LR curve by up to 0.3% even without noise, a bias fixed gaps
cannot show). On the demo at 10x: [116.9, 152.6] re-measured, [127.0, 148.2] held.

Fast path: the caller's `derive` warm-starts the parametric fit from the point fit (one
scipy L-BFGS-B run, a few ms) instead of the 4500-start grid; a draw moves the optimum only
a little. On Chinchilla's 240 runs, 200 warm-started case resamples gave alpha [0.318,
0.374], beta [0.327, 0.410], a [0.481, 0.557] against the 1000 full-grid resamples of
Epoch AI's replication: [0.317, 0.371], [0.334, 0.414], [0.481, 0.557]
(tests/test_fit_chinchilla.py checks it); on planted laws warm and full-grid refits of
the same draws agree to 1e-8 in alpha.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from analysis.best_lr import gap_at
from analysis.isoflop import fit_isoflop
from analysis.laws import Laws, derived, fit_laws, vertex_shift
from analysis.lr_law import window_fits
from analysis.scatter import RunScatter, new_run_samples, resample_log_loss, run_scatter
from sae_core.errors import UserError

T = TypeVar("T")
N_DRAWS = 200  # enough for 2.5/97.5 percentiles to +-~1 draw-spacing; Epoch used 4000


def bootstrap_draws(
    draw: Callable[[np.random.Generator], T],
    derive: Callable[[T], dict[str, float]],
    n_draws: int = N_DRAWS,
    seed: int = 0,
) -> pd.DataFrame:
    """[n_draws, n_quantities]: derive() of each draw(rng) (a resampled runs table, or
    whatever derive takes); NaN where a draw cannot be fitted."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_draws):
        try:  # a degenerate resample may overflow a fit: it yields inf/NaN, not a warning
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                rows.append(derive(draw(rng)))
        except (UserError, ValueError, np.linalg.LinAlgError):
            rows.append({})
    return pd.DataFrame(rows)


def interval(values: pd.Series | np.ndarray, level: float = 0.95) -> list[float] | None:
    """Central percentile interval of the finite draws; None when fewer than half are finite."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    if finite.size < max(2, v.size // 2):
        return None
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def prediction_interval(
    predicted: np.ndarray, scatter_sd: np.ndarray | float, level: float = 0.95
) -> list[float] | None:
    """Interval for one new run's loss: fit uncertainty times run-to-run scatter.

    predicted: [n_draws] the loss each bootstrap draw predicts; scatter_sd: [n_draws] (or
    one number) the log-loss deviation of a new run from the law, as each draw drew it
    (scatter.py). Draws without a prediction are left out.
    """
    pred = np.asarray(predicted, dtype=float)
    sd = np.broadcast_to(np.asarray(scatter_sd, dtype=float), pred.shape)
    ok = np.isfinite(pred) & np.isfinite(sd)
    if ok.sum() < max(2, pred.size // 2):
        return None
    return interval(new_run_samples(pred[ok], sd[ok]), level)


RESAMPLED = ("fixed design: stage 1 the parametric law's fitted losses plus normal deviations "
             "per design point and per seed replicate, stage 2 each LR window's parabola plus "
             "normal deviations; each draw's variances redrawn (analysis/scatter.py)")


def design_points(runs: pd.DataFrame) -> pd.Series:
    """A design point's label per run: its n_features, n_steps and lr (seeds share one)."""
    cols = [c for c in ("n_features", "n_steps", "lr") if c in runs]
    return runs[cols].astype(str).agg(" ".join, axis=1)


def fixed_design_draws(
    stage1: pd.DataFrame, lr_runs: pd.DataFrame, laws: Laws, point: dict[str, float], k: float,
    target: float, tol_dex: float, budgets: list[float] | None, lr_band: float | None,
    n_draws: int, seed: int,
) -> tuple[pd.DataFrame, RunScatter, dict[str, Any]]:
    """Draws of every derived quantity (and of the run-to-run scatter sd each was drawn
    with, column run_scatter_sd), the stage-1 scatter, and the stage-2 one (a record).

    Stage 1 on its fixed design (scatter.py): every draw keeps every (F, steps) and gets the
    law's fitted loss times new deviations, at stage 1's LR; the draw's fit measures the
    gaps to the best LR again on its own LR runs (best_lr.py, module docstring). Stage 2
    likewise: the runs in each LR point's window get its parabola's fitted loss times new
    deviations (lr_law.py). Each draw is
    fitted exactly as the point fit (warm-started, the same allocation source and budgets,
    the same LR points, its IsoFLOP vertices moved as laws.py says)."""
    ids = pd.factorize(design_points(stage1))[0]
    fitted = np.log(laws.parametric.predict(stage1["n_features"], stage1["n_steps"]))
    # the law is at the best LR (best_lr.py); a draw's stage-1 runs are drawn at stage 1's
    # LR, and the draw's fit moves them by the gaps its own LR runs give (module docstring)
    gap = gap_at(laws.lr_gaps, stage1["compute_flops"])
    scatter = run_scatter(np.log(stage1["loss"].to_numpy(dtype=float)) - gap - fitted, ids)
    lr_fitted, lr = _lr_scatter(lr_runs, scatter)
    lr_log_loss = np.log(lr_runs["loss"].to_numpy(dtype=float))
    in_window = np.isfinite(lr_fitted)
    warm = laws.parametric.as_vector()
    shift = vertex_shift(laws.isoflop, fit_isoflop(stage1.assign(loss=np.exp(fitted)), k, tol_dex, budgets),
                         laws.allocation_budgets, tol_dex)

    def lr_table(log_loss: np.ndarray) -> pd.DataFrame:
        return lr_runs.assign(loss=np.exp(np.where(in_window, log_loss, lr_log_loss)))

    def draw(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame, float]:
        sds = scatter.draw_sds(rng)
        s1 = stage1.assign(loss=np.exp(resample_log_loss(fitted + gap, ids, sds, rng)))
        lr_sd = RunScatter(lr["sd"], 0.0, lr["df"]).draw_sds(rng)[0]
        return s1, lr_table(lr_fitted + lr_sd * rng.standard_normal(len(lr_runs))), float(np.hypot(*sds))

    def derive(runs: tuple[pd.DataFrame, pd.DataFrame, float]) -> dict[str, float]:
        # the point fit's allocation source and LR points, in every draw
        drawn = fit_laws(runs[0], runs[1], k, tol_dex, budgets, lr_band, warm,
                         laws.allocation_budgets, laws.lr_points, shift)
        return {**derived(drawn, k, target), "run_scatter_sd": runs[2]}

    draws = bootstrap_draws(draw, derive, n_draws, seed)
    if draws.empty:
        return pd.DataFrame(columns=[*point, "run_scatter_sd"]), scatter, lr
    return draws, scatter, lr


def _lr_scatter(lr_runs: pd.DataFrame, stage1: RunScatter) -> tuple[np.ndarray, dict[str, Any]]:
    """(window-fitted log loss per LR run, NaN outside windows; the deviation the stage-2
    bootstrap draws them with, its df and where it comes from). The window parabolas'
    residuals when they have degrees of freedom (a refined sweep: 5 runs in a window, 2
    df), else stage 1's run-to-run scatter (3 runs in a window fit their parabola exactly)."""
    if not len(lr_runs):
        return np.zeros(0), {"sd": 0.0, "df": 0, "from": "no LR runs"}
    fitted, df = window_fits(lr_runs)
    inside = np.isfinite(fitted)
    res = np.log(lr_runs["loss"].to_numpy(dtype=float))[inside] - fitted[inside]
    if df > 0:
        return fitted, {"sd": float(np.sqrt((res**2).sum() / df)), "df": df,
                        "from": "LR window residuals"}
    return fitted, {"sd": stage1.total_sd, "df": stage1.point_df + stage1.seed_df,
                    "from": "stage-1 run-to-run scatter (the LR windows fit their parabolas exactly)"}
