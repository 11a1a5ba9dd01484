"""analyze(): the runs-table variants the contract allows (docs/CONTRACTS.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted_runs import isoflop_runs

from analysis.parametric import ParametricFit
from analysis.report import analyze

D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH
TRUTH = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)


def test_n_tokens_instead_of_n_steps_gives_the_same_exponents() -> None:
    runs = isoflop_runs(TRUTH, [3e10, 1e11, 3e11, 1e12], K, seed=5)
    by_steps = analyze(runs, n_draws=0)
    tokens = runs.assign(n_tokens=runs["n_steps"] * BATCH).drop(columns=["n_steps"])
    by_tokens = analyze(tokens, n_draws=0)  # no batch given: S = tokens, k absorbs the batch
    assert by_steps["flops_per_feature_step"] == pytest.approx(K, rel=1e-3)
    assert by_tokens["flops_per_feature_step"] == pytest.approx(K / BATCH, rel=1e-3)
    for name in ("alpha", "beta", "E"):
        assert by_tokens["parametric"][name]["value"] == pytest.approx(
            by_steps["parametric"][name]["value"], rel=1e-3)
    # B rescales by BATCH^beta when S is counted in tokens.
    beta = by_steps["parametric"]["beta"]["value"]
    assert by_tokens["parametric"]["B"]["value"] == pytest.approx(
        by_steps["parametric"]["B"]["value"] * BATCH**beta, rel=1e-2)


def test_factorial_grid_falls_back_to_parametric_allocation() -> None:
    """A plain F x steps grid has no IsoFLOP budgets: F_opt(C) comes from the parametric
    law (exponent a = beta / (alpha + beta)) and the flags ask for an IsoFLOP design."""
    rng = np.random.default_rng(6)
    f, s = np.meshgrid([256, 640, 1600, 4000], [150, 330, 730, 1600])
    f, s = f.ravel() * rng.uniform(0.97, 1.03, f.size), s.ravel() * rng.uniform(0.97, 1.03, s.size)
    f, s = np.round(f).astype(int), np.round(s).astype(int)
    runs = pd.DataFrame({"n_features": f, "n_steps": s, "compute_flops": K * f * s,
                         "loss": TRUTH.predict(f, s) * np.exp(0.005 * rng.standard_normal(f.size))})
    fits = analyze(runs, batch_size_tokens=BATCH, d_in=D_IN, n_draws=20, tol_dex=0.02)
    assert fits["features_opt"]["source"] == "parametric"
    assert fits["features_opt"]["exponent"] == pytest.approx(fits["parametric"]["a"]["value"])
    assert fits["features_opt"]["exponent"] == pytest.approx(TRUTH.a, abs=0.03)
    assert any("IsoFLOP needs" in flag for flag in fits["edge_flags"])
    assert fits["isoflop"] == []
