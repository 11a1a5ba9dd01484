"""Power laws, frontiers, budgets and the LR law recover what was planted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted_runs import lr_runs

from analysis.frontier import budget_frontier, pareto_frontier
from analysis.isoflop import assign_budgets, fit_isoflop
from analysis.lr_law import fit_lr_law, fit_lr_optima, lr_groups
from analysis.powerlaw import fit_offset_power_law, fit_power_law
from sae_core.errors import UserError


def test_power_law_recovers_planted_exponent() -> None:
    rng = np.random.default_rng(0)
    c = np.geomspace(1e10, 1e14, 12)
    y = 3.0e-4 * c**0.62 * np.exp(0.02 * rng.standard_normal(c.size))
    law = fit_power_law(c, y)
    assert law.exponent == pytest.approx(0.62, abs=0.02)
    assert law.predict(1e12) == pytest.approx(3.0e-4 * 1e12**0.62, rel=0.05)


def test_offset_power_law_keeps_irreducible_term() -> None:
    c = np.geomspace(1e10, 1e15, 15)
    y = 1.5 + 900.0 * c**-0.25
    law = fit_offset_power_law(c, y)
    assert law.irreducible == pytest.approx(1.5, rel=0.01)
    assert law.exponent == pytest.approx(-0.25, abs=0.01)
    assert law.predict(1e16) == pytest.approx(1.5 + 900.0 * 1e16**-0.25, rel=0.002)


def test_power_law_rejects_one_budget() -> None:
    with pytest.raises(UserError, match="2 distinct"):
        fit_power_law([1e12, 1e12], [3.0, 4.0])


def test_budgets_grouped_within_tolerance() -> None:
    c = np.array([1.00e12, 1.05e12, 0.98e12, 4.0e12, 4.1e12, 2.0e13])
    label = assign_budgets(c, tol_dex=0.05)
    assert label[0] == label[1] == label[2] and label[3] == label[4]
    assert len(np.unique(label)) == 3
    explicit = assign_budgets(c, tol_dex=0.03, budgets=[1e12, 4e12])
    assert np.isnan(explicit[5]) and explicit[3] == 4e12 and explicit[0] == 1e12


def test_isoflop_vertex_of_planted_parabola() -> None:
    f = np.array([256, 512, 1024, 2048, 4096])
    loss = 1.0 + 0.3 * (np.log10(f) - np.log10(1200)) ** 2
    runs = pd.DataFrame({"n_features": f, "compute_flops": 1e12, "loss": loss})
    iso = fit_isoflop(runs, flops_per_feature_step=1e6)
    assert iso["n_features_opt"].iloc[0] == pytest.approx(1200, rel=1e-6)
    assert iso["n_steps_opt"].iloc[0] == pytest.approx(1e12 / (1e6 * 1200), rel=1e-6)
    assert iso["edge"].iloc[0] == ""
    downward = runs.assign(loss=2.0 - 0.3 * (np.log10(f) - 3) ** 2)
    assert "opens downward" in fit_isoflop(downward, 1e6)["edge"].iloc[0]


def test_frontiers() -> None:
    runs = pd.DataFrame({"compute_flops": [1, 2, 3, 4, 5, 6], "loss": [5.0, 4.0, 4.5, 2.0, 1.9, 1.95]})
    assert pareto_frontier(runs)["loss"].tolist() == [5.0, 4.0, 2.0, 1.9]
    best = budget_frontier(runs, np.array([1, 1, 1, 2, 2, 2], dtype=float))
    assert best["loss"].tolist() == [4.0, 1.9]


POINTS = pd.DataFrame({"n_features": [512, 1024, 2048, 4096], "n_steps": [400, 700, 1200, 2100],
                       "compute_flops": [1e11, 4e11, 1.6e12, 6.4e12], "loss": [2.0, 1.8, 1.6, 1.4]})


def test_lr_law_recovers_planted_exponent() -> None:
    runs = lr_runs(POINTS, lr_coefficient=5e2, lr_exponent=-0.3, noise_rel=0.001, seed=0)
    assert lr_groups(runs).all()
    optima = fit_lr_optima(runs)
    truth = 5e2 * POINTS["compute_flops"] ** -0.3
    np.testing.assert_allclose(optima["lr_opt"], truth, rtol=0.1)
    assert (optima["edge"] == "").all()
    assert fit_lr_law(runs).exponent == pytest.approx(-0.3, abs=0.03)
    # DeepSeek-style: every run within 1% of its point's best loss; symmetric around LR_opt.
    assert fit_lr_law(runs, band=0.01).exponent == pytest.approx(-0.3, abs=0.05)


def test_lr_edge_flag_when_grid_stops_short() -> None:
    runs = lr_runs(POINTS, lr_coefficient=5e2, lr_exponent=-0.3, span_dex=1.0, centre_dex=-1.0)
    optima = fit_lr_optima(runs)
    assert all("add larger lr" in e for e in optima["edge"])


def test_a_law_with_a_negative_exponent_has_no_optimum_instead_of_a_complex_one() -> None:
    from analysis.parametric import ParametricFit

    law = ParametricFit(E=1.0, A=10.0, B=10.0, alpha=-0.2, beta=0.5, objective=0.0, n_runs=3)
    f_opt, s_opt = law.optimal_allocation(1e12, 1e6)
    assert np.isnan(f_opt) and np.isnan(s_opt)
