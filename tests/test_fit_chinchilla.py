"""The parametric and IsoFLOP fits reproduce Epoch AI's Chinchilla replication.

Data, targets and tolerances: tests/fixtures/chinchilla/ (its README gives the provenance;
240 rows after dropping the 5 highest losses; D = C / (6 N)). The method:
docs/METHOD.md §2.4 and §2.5.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.bootstrap import bootstrap_draws, interval
from analysis.isoflop import fit_isoflop
from analysis.parametric import ParametricFit, fit_parametric, huber_objective
from analysis.powerlaw import fit_power_law

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chinchilla"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURES / "expected_fits.json").read_text())


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    raw = pd.read_csv(FIXTURES / "svg_extracted_data.csv")
    kept = raw.sort_values("loss").iloc[:-5]  # Epoch drop the 5 highest-loss rows
    out = pd.DataFrame({"n_features": kept["Model Size"], "compute_flops": kept["Training FLOP"],
                        "loss": kept["loss"]})
    out["n_steps"] = out["compute_flops"] / (6 * out["n_features"])
    return out.reset_index(drop=True)


@pytest.fixture(scope="module")
def fit(runs: pd.DataFrame) -> ParametricFit:
    return fit_parametric(runs["n_features"], runs["n_steps"], runs["loss"])  # full 4500-start grid


def test_fixture_is_epochs_file() -> None:
    """The CSV is Epoch AI's file unedited (sha256 in tests/fixtures/chinchilla/README.md)."""
    digest = hashlib.sha256((FIXTURES / "svg_extracted_data.csv").read_bytes()).hexdigest()
    assert digest == "193478df4e90f040016431996c45682659306840ecdadf83cfb9cd5ca0aa1b30"


def test_240_rows(runs: pd.DataFrame) -> None:
    assert len(runs) == 240 and runs["loss"].max() < 3.44


def test_parametric_matches_huber_minimum(fit: ParametricFit, expected: dict) -> None:
    target = expected["targets"]["huber_min_240_rows"]
    tol = target["tolerance"]
    assert abs(fit.alpha - target["alpha"]) <= tol["alpha_abs"]
    assert abs(fit.beta - target["beta"]) <= tol["beta_abs"]
    assert abs(fit.E - target["E"]) <= tol["E_abs"]
    assert abs(fit.A / target["A"] - 1) <= tol["A_rel"]
    assert abs(fit.B / target["B"] - 1) <= tol["B_rel"]
    assert abs(fit.a - target["a_N_exponent"]) <= tol["a_abs"]
    assert fit.objective == pytest.approx(target["objective_value"], rel=1e-4)


def test_beats_hoffmann_published(fit: ParametricFit, runs: pd.DataFrame, expected: dict) -> None:
    h = expected["not_targets_hoffmann_published"]
    thetas = np.array([
        [np.log(h["rounded"]["A"]), np.log(h["rounded"]["B"]), np.log(h["rounded"]["E"]),
         h["rounded"]["alpha"], h["rounded"]["beta"]],
        [h["tex_unrounded"]["logA"], h["tex_unrounded"]["logB"], h["tex_unrounded"]["logE"],
         h["tex_unrounded"]["alpha"], h["tex_unrounded"]["beta"]],
    ])
    logs = [np.log(runs[c].to_numpy()) for c in ("n_features", "n_steps", "loss")]
    theirs, _ = huber_objective(thetas, *logs)
    assert theirs == pytest.approx([h["rounded"]["objective_value_240_rows"],
                                    h["tex_unrounded"]["objective_value_240_rows"]], rel=0.01)
    assert fit.objective < theirs.min()


def test_no_early_stop_from_hoffmann_start(runs: pd.DataFrame, fit: ParametricFit) -> None:
    """scipy's default tolerances stop ~10 iterations from Hoffmann's values (fixture README);
    the scaled objective with ftol=0 goes on to the optimum from that one start."""
    start = np.array([[6.0073404, 6.0179186, 0.5267228, 0.33917084, 0.2849083]])
    single = fit_parametric(runs["n_features"], runs["n_steps"], runs["loss"], starts=start)
    assert single.objective == pytest.approx(fit.objective, rel=1e-6)


def test_analytic_gradient(runs: pd.DataFrame) -> None:
    logs = [np.log(runs[c].to_numpy()) for c in ("n_features", "n_steps", "loss")]
    theta = np.array([6.0, 7.5, 0.6, 0.35, 0.37])
    _, grad = huber_objective(theta[None], *logs)
    eps = 1e-7
    numeric = [(huber_objective((theta + eps * e)[None], *logs)[0][0]
                - huber_objective((theta - eps * e)[None], *logs)[0][0]) / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(grad[0], numeric, rtol=1e-4, atol=1e-9)


def test_allocation_at_chinchilla_budget(fit: ParametricFit, expected: dict) -> None:
    epoch = expected["allocation_at_C_5.88e23"]["epoch"]
    n_opt, d_opt = fit.optimal_allocation(5.88e23, 6.0)
    assert n_opt == pytest.approx(epoch["N_opt"], rel=0.10)
    assert d_opt == pytest.approx(epoch["D_opt"], rel=0.10)


def test_isoflop_approach2_exponent(runs: pd.DataFrame, expected: dict) -> None:
    spec = expected["targets"]["approach2_isoflop_parabolas"]
    lo, hi = spec["accept_range"]
    for tol_dex in (0.03, 0.05):
        iso = fit_isoflop(runs, 6.0, tol_dex=tol_dex, budgets=spec["budgets"])
        law = fit_power_law(iso["compute_flops"], iso["n_features_opt"])
        assert lo <= law.exponent <= hi, (tol_dex, law.exponent)


def test_warm_start_bootstrap_matches_epoch_intervals(runs: pd.DataFrame, fit: ParametricFit,
                                                      expected: dict) -> None:
    """The fast path (each resample fitted from the point fit, not the 4500-start grid)
    gives Epoch AI's 95% intervals (4000 full resamples of the 240 rows) within a few
    draws' noise: 200 resamples here."""
    start = fit.as_vector()

    def derive(draw: pd.DataFrame) -> dict[str, float]:
        f = fit_parametric(draw["n_features"], draw["n_steps"], draw["loss"], starts=start)
        return {"alpha": f.alpha, "beta": f.beta, "E": f.E}

    def resample(rng: np.random.Generator) -> pd.DataFrame:  # Epoch's: the 240 runs, as cases
        return runs.iloc[rng.integers(0, len(runs), len(runs))]

    draws = bootstrap_draws(resample, derive, n_draws=200, seed=0)
    theirs = expected["targets"]["our_bootstrap_1000_case_resamples_240_rows"]["ci95"]
    for name, tol in (("alpha", 0.008), ("beta", 0.015), ("E", 0.015)):
        lo, hi = interval(draws[name])
        assert lo == pytest.approx(theirs[name][0], abs=tol), name
        assert hi == pytest.approx(theirs[name][1], abs=tol), name
