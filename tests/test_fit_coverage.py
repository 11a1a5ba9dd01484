"""Nominal 95% intervals cover the planted truth 90-98% of the time over repeated draws.

Each replicate is a whole protocol drawn from known laws: the law holds at the best LR
of each compute, and loss rises against LR in MiniLM's shape (planted_runs.py) around
LR_opt(C), which falls with C. Stage 1 an IsoFLOP design (4 budgets x 4 widths over 1.5
dex) at one LR (so 14% above the law at its smallest budget and 3% at its largest, as
on MiniLM: 10% and 6%) whose top budget's points are replicated over 3 seeds, each
design point off the law by u ~ 0.5% (shared by its seeds) and each run by e ~ 0.17%
(seed-to-seed, as measured on MiniLM); stage 2 three LR points at the law's optimum,
0.3% noise per run and each point off the law by its own u (shared by its LRs), the
demo's five LRs and a refining round. analyze() then gives the F_opt
exponent's interval, the LR exponent's interval and, through plan_run, the prediction
interval of a new run at 4x the top budget (its loss: the law's at the planned LR times
fresh u and e). Until stage 1's losses were moved to the best LR (analysis/best_lr.py)
this world planted the law at stage 1's LR instead, with the LR curve about it.

Coverage of the F_opt exponent / a / alpha / PI at 4x over 100 replicates of 100 draws
(tests/coverage_scenarios.py), before this bootstrap (case resampling within budgets, 3
widths kept in every draw) and after (fixed design, deviations redrawn at both levels):
                                          before                    after
  no replicates, u 0.5%, 5 widths     1.00 / 0.93 / 0.93 / 0.93   0.93 / 0.92 / 0.91 / 0.96
  top budget x3, u 0.5%, e 0.17%      0.98 / 0.89 / 0.83 / 0.88   0.97 / 0.99 / 0.95 / 0.96
  all x3, u 1%, e 0.2%                0.79 / 0.76 / 0.77 / 0.81   0.93 / 0.96 / 0.94 / 0.98
  all x3, u 0, e 0.5%                 1.00 / 0.97 / 0.97 / 0.87   0.97 / 0.98 / 0.97 / 0.95
  factorial 5x5, u 0.5%               1.00*/ 0.67 / 0.72 / 0.70   0.96 / 0.96 / 0.94 / 0.94
(* the edge slope, interval 0.20 wide; after: the parametric a.) The LR exponent's
interval before (all-points parabola, runs resampled) covered all 60 replicates of this
protocol's first round at a median width of 1.25, excluding zero in 63% of them
(tests/lr_estimators.py). With window parabolas through both rounds, 200 replicates x 100
draws (stage 1 moved to the best LR): F_opt exponent 0.965, LR exponent 0.99, PI at 4x
0.995 -- the parabolas' misfit to the asymmetric curve read as noise (~0.9% where 0.3%
is planted). With the shared LR curve (analysis/lr_shape.py), each LR point off the law
by its own u and the bootstrap drawing it (analysis/bootstrap.py): LR exponent 0.965
(median width 0.039), PI at 4x 0.985, the law's own loss there in its 95% interval 0.98,
over 400 replicates (by hundreds: PI 0.98, 1.00, 0.97, 0.99); the 100 the integration test
runs: F_opt 0.98, LR 0.98, PI 0.98.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted_runs import MINILM_LR_SHAPE, asymmetric_lr_runs, lr_rise, replicated_isoflop_runs

from analysis.lr_law import fit_lr_optima
from analysis.parametric import ParametricFit
from analysis.plan import plan_run
from analysis.plan_lr import refine_lrs
from analysis.report import analyze

D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH
TRUTH = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
BUDGETS = [3e10, 1e11, 3e11, 1e12]
POINT_NOISE, SEED_NOISE, LR_NOISE = 0.005, 0.0017, 0.003
LR_STAGE1 = 1e-3
LR_EXPONENT = -0.3
LR_BUDGETS = np.geomspace(BUDGETS[0], BUDGETS[-1], 3)
LR_COEFFICIENT = 2.75e-3 / LR_BUDGETS[1] ** LR_EXPONENT
GRID = [1e-4, 3.162e-4, 1e-3, 3.162e-3, 1e-2]


def lr_opt(compute: pd.Series | np.ndarray | float) -> np.ndarray:
    return LR_COEFFICIENT * np.asarray(compute, dtype=float) ** LR_EXPONENT


def protocol(seed: int, lr_shape: tuple[float, float, float, float] = MINILM_LR_SHAPE,
             refine: bool = True) -> pd.DataFrame:
    """Stage 1 and both LR rounds (the first alone without `refine`) of one replicate, as
    one runs table; lr_shape: planted_runs.lr_rise's."""
    stage1 = replicated_isoflop_runs(TRUTH, BUDGETS, K, n_seeds=[1, 1, 1, 3], n_widths=4,
                                     point_noise_rel=POINT_NOISE, seed_noise_rel=SEED_NOISE,
                                     seed=seed).assign(lr=LR_STAGE1)
    stage1["loss"] *= 1 + lr_rise(np.log10(LR_STAGE1 / lr_opt(stage1["compute_flops"])), lr_shape)
    f_opt, _ = TRUTH.optimal_allocation(LR_BUDGETS, K)
    f = np.round(f_opt).astype(int)
    s = np.round(LR_BUDGETS / (K * f)).astype(int)
    # each LR point is a design point too: off the law by its own u, shared by its LRs
    u = POINT_NOISE * np.random.default_rng(seed + 30_000).standard_normal(len(f))
    points = pd.DataFrame({"n_features": f, "n_steps": s, "compute_flops": K * f * s,
                           "loss": TRUTH.predict(f, s) * np.exp(u)})
    def lr_round(lrs: list, offset: int) -> pd.DataFrame:
        return asymmetric_lr_runs(points, LR_COEFFICIENT, LR_EXPONENT, lrs, lr_shape, LR_NOISE,
                                  seed=seed + offset)
    first = lr_round([GRID] * 3, 50_000)
    if not refine:
        return pd.concat([stage1, first], ignore_index=True)
    extra = [refine_lrs(row, 0.5) for row in fit_lr_optima(first).to_dict("records")]
    return pd.concat([stage1, first, lr_round(extra, 90_000)], ignore_index=True)


def covered(seed: int, n_draws: int) -> dict[str, bool]:
    fits = analyze(protocol(seed), batch_size_tokens=BATCH, d_in=D_IN, n_draws=n_draws, seed=seed)
    top = max(row["compute_flops"] for row in fits["frontier"])
    plan = plan_run(fits, compute_flops=4 * top)
    rng = np.random.default_rng(7_000 + seed)
    rise = lr_rise(np.log10(plan["lr"] / lr_opt(plan["compute_flops"])))
    new_run = float(TRUTH.predict(plan["n_features"], plan["n_steps"]) * (1 + rise)) * np.exp(
        POINT_NOISE * rng.standard_normal() + SEED_NOISE * rng.standard_normal())

    def inside(value: float, ci: list[float] | None) -> bool:
        return ci is not None and ci[0] <= value <= ci[1]

    assert fits["features_opt"]["source"] == "isoflop"
    return {"features_opt": inside(TRUTH.a, fits["features_opt"]["exponent_ci95"]),
            "lr_opt": inside(LR_EXPONENT, fits["lr_opt"]["exponent_ci95"]),
            "pi95 at 4x": inside(new_run, plan["predicted_loss_pi95"])}


def coverage(n_reps: int, n_draws: int) -> dict[str, float]:
    rows = [covered(1_000 + rep, n_draws) for rep in range(n_reps)]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def test_coverage_of_the_three_intervals() -> None:
    """30 replicates, 40 draws each (~15 s): each interval covers in 26-30 of 30 (a 95%
    method falls below 26 with probability 1.6%); the 90-98% band is the integration test's."""
    result = coverage(30, 40)
    assert all(0.86 <= c <= 1.0 for c in result.values()), result


@pytest.mark.integration
def test_coverage_90_to_98_percent() -> None:
    """100 replicates, 100 draws each (~2.5 min on 2 cores; 200 took ~5 min, a share of
    the CI budget): measured 0.98, 0.98 and 0.98 (module docstring)."""
    result = coverage(100, 100)
    assert all(0.90 <= c <= 0.98 for c in result.values()), result
