"""Coverage of analyze()'s 95% intervals over planted sweeps, by scenario (not a test).

    PYTHONPATH=.:tests python tests/coverage_scenarios.py 100 100 [S0 S1 ...]

prints one JSON line per scenario: the share of replicates whose interval holds the truth
for the F_opt exponent (features), a = beta/(alpha+beta), alpha, the prediction interval
of a new run at 4x the top budget (pi; its loss the law's times fresh deviations) and the
law's own loss there (ci_law), with the median widths. tests/test_fit_coverage.py quotes
its numbers before and after the fixed-design bootstrap.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from planted_runs import factorial_runs, replicated_isoflop_runs

from analysis.parametric import ParametricFit
from analysis.plan import plan_run
from analysis.report import analyze

TRUTH = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH
BUDGETS = [3e10, 1e11, 3e11, 1e12]
SCENARIOS = {
    "S0 no replicates, u=0.5%, 5 widths": dict(n_seeds=1, point_noise_rel=0.005, seed_noise_rel=0.0, n_widths=5),
    "S1 top budget x3, u=0.5% e=0.17%": dict(n_seeds=[1, 1, 1, 3], point_noise_rel=0.005, seed_noise_rel=0.0017, n_widths=4),
    "S2 all x3, u=1% e=0.2%": dict(n_seeds=3, point_noise_rel=0.01, seed_noise_rel=0.002, n_widths=4),
    "S3 all x3, u=0 e=0.5%": dict(n_seeds=3, point_noise_rel=0.0, seed_noise_rel=0.005, n_widths=4),
    "S4 factorial 5x5, u=0.5%": dict(factorial=True, point_noise_rel=0.005, seed_noise_rel=0.0),
}


def replicate(kw: dict, rep: int, n_draws: int) -> dict[str, float]:
    if kw.get("factorial"):
        runs = factorial_runs(TRUTH, [64, 128, 256, 512, 1024], [250, 500, 1000, 2000, 4000], K,
                              noise_rel=kw["point_noise_rel"], seed=1000 + rep)
        fits = analyze(runs, batch_size_tokens=BATCH, d_in=D_IN, n_draws=n_draws, seed=rep, tol_dex=0.02)
    else:
        runs = replicated_isoflop_runs(TRUTH, BUDGETS, K, span_dex=1.5, seed=1000 + rep, **kw)
        fits = analyze(runs, batch_size_tokens=BATCH, d_in=D_IN, n_draws=n_draws, seed=rep)
    top = max(r["compute_flops"] for r in fits["frontier"])
    plan = plan_run(fits, compute_flops=4 * top)
    rng = np.random.default_rng(5000 + rep)
    law_loss = float(TRUTH.predict(plan["n_features"], plan["n_steps"]))
    new_run = law_loss * np.exp(kw["point_noise_rel"] * rng.standard_normal()
                                + kw["seed_noise_rel"] * rng.standard_normal())

    def inside(value: float, ci: list | None) -> float:
        return float(ci is not None and None not in ci and ci[0] <= value <= ci[1])

    def width(ci: list | None) -> float:
        return ci[1] - ci[0] if ci and None not in ci else np.nan

    return {"features": inside(TRUTH.a, fits["features_opt"]["exponent_ci95"]),
            "features_w": width(fits["features_opt"]["exponent_ci95"]),
            "a": inside(TRUTH.a, fits["parametric"]["a"]["ci95"]),
            "alpha": inside(TRUTH.alpha, fits["parametric"]["alpha"]["ci95"]),
            "pi": inside(new_run, plan["predicted_loss_pi95"]),
            "pi_w": width(plan["predicted_loss_pi95"]) / plan["predicted_loss"],
            "ci_law": inside(law_loss, plan["predicted_loss_ci95"])}


if __name__ == "__main__":
    n_reps, n_draws, wanted = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    for name, kw in SCENARIOS.items():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        started = time.perf_counter()
        rows = [replicate(kw, rep, n_draws) for rep in range(n_reps)]
        out = {k: round(float(np.nanmedian([r[k] for r in rows]) if k.endswith("_w")
                              else np.mean([r[k] for r in rows])), 3) for k in rows[0]}
        print(json.dumps({"scenario": name, "n_reps": n_reps, "n_draws": n_draws, **out,
                          "s": round(time.perf_counter() - started)}), flush=True)
