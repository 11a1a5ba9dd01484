"""F_opt(C) and steps_opt(C) never come from IsoFLOP minima on the grid's edge (planted laws).

On a factorial F x steps grid the best width of most budgets is the grid's widest (or
shortest-trained) run: a power law through those points has the slope of the grid's edge.
"""

from __future__ import annotations

import numpy as np
import pytest
from planted_runs import factorial_runs, replicated_isoflop_runs

from analysis.parametric import ParametricFit
from analysis.powerlaw import fit_power_law
from analysis.report import analyze, format_summary

D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH
TRUTH = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
FRONTIER_EXPONENT = -TRUTH.alpha * TRUTH.beta / (TRUTH.alpha + TRUTH.beta)  # L_opt - E ∝ C^this
BUDGETS = [3e10, 1e11, 3e11, 1e12]


def inside(value: float, ci: list[float]) -> bool:
    return ci[0] <= value <= ci[1]


@pytest.fixture(scope="module")
def factorial() -> dict:
    """5 x 5 factorial grid; the budgets are its diagonals (k F S equal), 3-5 widths each;
    F_opt(C) grows past the grid's widest F at every budget but the middle one. Over data
    seeds 0-19 the 95% interval of a covered the truth 19 times (seed 0 missed, by 0.002);
    tests/test_fit_coverage.py measures coverage on this design."""
    runs = factorial_runs(TRUTH, [64, 128, 256, 512, 1024], [250, 500, 1000, 2000, 4000], K,
                          noise_rel=0.005, seed=1)
    return analyze(runs, batch_size_tokens=BATCH, d_in=D_IN, n_draws=100, tol_dex=0.02)


def test_factorial_grid_allocation_from_the_parametric_law(factorial: dict) -> None:
    iso = factorial["isoflop"]
    assert len(iso) == 5 and sum(bool(row["edge"]) for row in iso) == 4  # the premise
    for key, truth in (("features_opt", TRUTH.a), ("steps_opt", 1 - TRUTH.a)):
        law = factorial[key]
        assert law["source"] == "parametric" and law["budgets_flops"] == []
        assert law["source_reason"].startswith("only 1 of 5 IsoFLOP budgets")
        assert law["exponent"] == pytest.approx(truth, abs=0.03)
        assert inside(truth, law["exponent_ci95"])
    loss = factorial["loss_vs_compute"]
    assert loss["source"] == "parametric"
    assert loss["exponent"] == pytest.approx(FRONTIER_EXPONENT, abs=0.03)
    assert inside(FRONTIER_EXPONENT, loss["exponent_ci95"])
    assert loss["irreducible"]["value"] == pytest.approx(factorial["parametric"]["E"]["value"])
    assert sum("minimum at the largest n_features" in f and "add larger n_features" in f
               for f in factorial["edge_flags"]) == 4
    summary = format_summary(factorial)
    assert "F_opt, steps_opt and frontier loss from parametric: only 1 of 5" in summary


def test_the_edge_minima_would_give_the_grids_slope(factorial: dict) -> None:
    """Why they are left out: through the 5 budgets' best widths the F_opt exponent is
    the grid edge's (F doubles as the budget quadruples along it, 0.5), outside +-0.03 of
    the law's 0.455; what the previous code reported for this grid."""
    iso = factorial["isoflop"]
    slope = fit_power_law([r["compute_flops"] for r in iso], [r["n_features_opt"] for r in iso]).exponent
    assert slope == pytest.approx(0.5, abs=0.01) and abs(slope - TRUTH.a) > 0.03


def test_every_draw_uses_the_point_fits_source(factorial: dict) -> None:
    """A draw's allocation exponent is the same estimator as the point estimate's: here the
    parametric a = beta / (alpha + beta), draw by draw."""
    draws = factorial["bootstrap"]["draws"]
    np.testing.assert_allclose(draws["features_exponent"], draws["a"])
    np.testing.assert_allclose(draws["steps_exponent"], 1 - np.asarray(draws["a"]))


@pytest.mark.parametrize(("centres", "source", "n_used"), [
    ([0.0, 0.0, 0.0, -0.9], "isoflop", 3),  # top budget's widths stop short of its optimum
    ([0.0, 0.0, -0.9, -0.9], "parametric", 0),  # two interior budgets: not enough
])
def test_edge_budgets_never_enter_the_isoflop_laws(centres: list[float], source: str, n_used: int) -> None:
    runs = replicated_isoflop_runs(TRUTH, BUDGETS, K, point_noise_rel=0.005, n_widths=5,
                                   span_dex=1.2, centre_dex=centres, seed=3)
    fits = analyze(runs, batch_size_tokens=BATCH, d_in=D_IN, n_draws=60)
    law = fits["features_opt"]
    interior = [row["compute_flops"] for row in fits["isoflop"] if not row["edge"]]
    assert len(interior) == 4 - centres.count(-0.9)
    assert law["source"] == source and len(law["budgets_flops"]) == n_used
    if source == "isoflop":
        assert law["budgets_flops"] == pytest.approx(interior)
        assert "3 of 4 IsoFLOP budgets" in law["source_reason"] and "1 with its minimum" in law["source_reason"]
        assert np.isfinite(fits["bootstrap"]["draws"]["features_exponent"]).all()
    else:
        assert law["source_reason"].startswith("only 2 of 4")
    assert law["exponent"] == pytest.approx(TRUTH.a, abs=0.03)
    assert inside(TRUTH.a, law["exponent_ci95"])
    assert sum("add larger n_features" in f for f in fits["edge_flags"]) == centres.count(-0.9)
