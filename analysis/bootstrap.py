"""Uncertainty by bootstrap (docs/METHOD.md §2.6): every quantity derived per draw.

Each draw is a new runs table on the sweep's fixed design with new deviations
(`fixed_design_draws`; scatter.py says why) from which every derived quantity is
recomputed (exponents, F_opt, steps_opt, LR_opt, predicted loss), so the intervals carry
the correlations between them.

The gaps by which stage 1's losses are moved to the best LR (best_lr.py) are measured
again in every draw, on its LR runs, drawn about each point's LR curve (lr_law.py) with
that curve's residual sd and, per point, one deviation u* shared by its runs (an LR point
is a design point, off the law as stage 1's are); the LR point's run at stage 1's LR is
one run in both tables, so one draw. Over the planted protocol of
tests/test_fit_coverage.py (400 replicates, 100 draws) the 95% intervals covered the LR
exponent 0.965 and a new run at 4x the top budget 0.985 (the law's own loss there 0.98):
the prediction's on the safe side. Its draws spread more than its errors do: on 8
replicates with stage 1's deviations switched off the draws' log-loss sd at 4x was 1.10%
where 60 planted worlds without stage-1 noise erred by 0.70%; with the LR runs' switched
off 0.78% against 0.74% (these and the two figures below measured before u*, in a world
whose LR points had no u). Each draw redraws the LR residual variance from its
5 degrees of freedom (as scatter.py does stage 1's), which widens the LR part by about
the t(5) factor, 1.3; without it the LR exponent covered 0.90. Held at the point fit's
gaps instead of measured again, the prediction covered 0.95 and the law's loss 0.91: a
bootstrap blind to the gaps' own error, right by a cancellation.

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
             "per design point and per seed replicate, stage 2 each LR point's curve plus a "
             "deviation per point and one per run; each draw's variances redrawn "
             "(analysis/scatter.py)")


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
    likewise: the runs on each LR point's curve get its fitted loss times new deviations
    (lr_law.py), the point's shared u* and each run's own. Each draw is
    fitted exactly as the point fit (warm-started, the same allocation source and budgets,
    the same LR points, its IsoFLOP vertices moved as laws.py says)."""
    ids = pd.factorize(design_points(stage1))[0]
    fitted = np.log(laws.parametric.predict(stage1["n_features"], stage1["n_steps"]))
    # the law is at the best LR (best_lr.py); a draw's stage-1 runs are drawn at stage 1's
    # LR, and the draw's fit moves them by the gaps its own LR runs give (module docstring)
    gap = gap_at(laws.lr_gaps, stage1["compute_flops"])
    scatter = run_scatter(np.log(stage1["loss"].to_numpy(dtype=float)) - gap - fitted, ids)
    lr_fitted, lr = _lr_scatter(lr_runs, laws.lr_optima, scatter)
    lr_log_loss = np.log(lr_runs["loss"].to_numpy(dtype=float))
    in_window = np.isfinite(lr_fitted)
    warm = laws.parametric.as_vector()
    shift = vertex_shift(laws.isoflop, fit_isoflop(stage1.assign(loss=np.exp(fitted)), k, tol_dex, budgets),
                         laws.allocation_budgets, tol_dex)

    # an LR point's run at stage 1's LR is a stage-1 run too (laws.split_stages): one run,
    # so one draw, the LR table's, in both tables (its noise cancels in its gap, as in the data)
    in_both = stage1.index.isin(lr_runs.index) if stage1.index.is_unique and lr_runs.index.is_unique \
        else np.zeros(len(stage1), dtype=bool)
    lr_row = lr_runs.index.get_indexer(stage1.index[in_both])
    lr_point = pd.factorize(design_points(lr_runs.drop(columns="lr")))[0] if len(lr_runs) else np.zeros(0, int)
    n_lr_points = int(lr_point.max()) + 1 if len(lr_runs) else 0
    redrawn = in_window[lr_row]

    def draw(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame, float]:
        sds = scatter.draw_sds(rng)
        s1_log_loss = resample_log_loss(fitted + gap, ids, sds, rng)
        lr_sd = RunScatter(lr["sd"], 0.0, lr["df"]).draw_sds(rng)[0]
        # an LR point is a design point: its runs share one deviation u*, as stage 1's do
        u = sds[0] * rng.standard_normal(n_lr_points)[lr_point]
        lr_log = u + np.where(in_window, lr_fitted + lr_sd * rng.standard_normal(len(lr_runs)), lr_log_loss)
        s1_log_loss[np.flatnonzero(in_both)[redrawn]] = lr_log[lr_row[redrawn]]
        return (stage1.assign(loss=np.exp(s1_log_loss)), lr_runs.assign(loss=np.exp(lr_log)),
                float(np.hypot(*sds)))

    def derive(runs: tuple[pd.DataFrame, pd.DataFrame, float]) -> dict[str, float]:
        # the point fit's allocation source and LR points, in every draw
        drawn = fit_laws(runs[0], runs[1], k, tol_dex, budgets, lr_band, warm,
                         laws.allocation_budgets, laws.lr_points, shift)
        return {**derived(drawn, k, target), "run_scatter_sd": runs[2]}

    draws = bootstrap_draws(draw, derive, n_draws, seed)
    if draws.empty:
        return pd.DataFrame(columns=[*point, "run_scatter_sd"]), scatter, lr
    return draws, scatter, lr


def _lr_scatter(lr_runs: pd.DataFrame, optima: pd.DataFrame | None,
                stage1: RunScatter) -> tuple[np.ndarray, dict[str, Any]]:
    """(log loss per LR run from its point's curve, NaN outside the range it was fitted
    over; the deviation the stage-2 bootstrap draws them with, its df and where it comes
    from). The curves' residuals when they have degrees of freedom (a refined sweep: the
    shared curve through 5-6 runs a point), else stage 1's run-to-run scatter (3 runs in a
    window fit their parabola exactly)."""
    if not len(lr_runs) or optima is None:
        return np.zeros(0), {"sd": 0.0, "df": 0, "from": "no LR runs"}
    fitted, df = window_fits(lr_runs, optima)
    inside = np.isfinite(fitted)
    res = np.log(lr_runs["loss"].to_numpy(dtype=float))[inside] - fitted[inside]
    if df > 0:
        return fitted, {"sd": float(np.sqrt((res**2).sum() / df)), "df": df,
                        "from": "LR curve residuals"}
    return fitted, {"sd": stage1.total_sd, "df": stage1.point_df + stage1.seed_df,
                    "from": "stage-1 run-to-run scatter (the LR windows fit their parabolas exactly)"}
