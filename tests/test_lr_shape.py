"""The LR curve shared by the swept points (analysis/lr_shape.py) against planted curves."""

from __future__ import annotations

import numpy as np
import pytest
from test_fit_lr import COMPUTE, LR_COEFFICIENT, LR_EXPONENT, first_round, refined

from analysis.lr_law import fit_lr_optima, window_fits, window_parabola
from analysis.lr_shape import Shape, fit_shared, n_parameters


def test_a_curve_of_its_own_form_is_recovered_exactly() -> None:
    """Three points, one shape times a scale per point, no noise: vertices, levels and shape."""
    shape = Shape(0.26, 1.45, 0.54, 2.55)
    vertices, levels, scales = np.array([-2.3, -2.45, -2.6]), np.array([5.2, 5.1, 5.0]), [1.0, 1.2, 1.5]
    log_lr = [np.linspace(v - 1.0, v + 1.0, 7) + 0.05 * i for i, v in enumerate(vertices)]
    log_loss = [lv + s * shape.rise(x - v) for x, v, lv, s in zip(log_lr, vertices, levels, scales, strict=True)]
    fit = fit_shared(log_lr, log_loss, [(v + 0.2, lv + 0.01) for v, lv in zip(vertices, levels, strict=True)], 0.3)
    assert fit is not None and fit.df == 21 - n_parameters(3)
    np.testing.assert_allclose(fit.vertices, vertices, atol=1e-6)
    np.testing.assert_allclose(fit.levels, levels, atol=1e-8)
    for got, s in zip(fit.shapes, scales, strict=True):
        assert (got.p_low, got.p_high) == pytest.approx((1.45, 2.55), abs=1e-5)
        assert (got.c_low, got.c_high) == pytest.approx((0.26 * s, 0.54 * s), rel=1e-5)


def test_no_fit_when_the_runs_do_not_outnumber_the_parameters() -> None:
    x = [np.array([-3.0, -2.5, -2.0, -1.5])] * 2
    y = [x[0] ** 2, x[0] ** 2 + 0.1]
    assert 8 <= n_parameters(2) and fit_shared(x, y, [(-2.5, 0.0), (-2.5, 0.1)], 0.5) is None


def test_the_shared_curve_leaves_the_noise_in_its_residuals() -> None:
    """MiniLM-shaped curves (steeper above the optimum; planted_runs.py) with 0.3% noise,
    both LR rounds: the shared curve's residual sd reads the noise (median over 20 data
    seeds 0.27%, 10-90% 0.20-0.40%), the window parabolas' reads their misfit as well
    (median 0.75%, 0.48-0.95%). The bootstrap draws the LR runs with that sd."""
    shared, parabola = [], []
    for seed in range(20):
        runs = refined(seed)
        optima = fit_lr_optima(runs)
        assert (optima["curve"] == "shared").all()
        fitted, df = window_fits(runs, optima)
        shared.append(np.sqrt(np.nansum((np.log(runs["loss"].to_numpy()) - fitted) ** 2) / df))
        rss = n = 0
        for _, group in runs.groupby(["n_features", "n_steps"]):
            x, loss = np.log10(group["lr"].to_numpy()), group["loss"].to_numpy()
            inside, coef = window_parabola(x, loss)
            rss += ((np.polyval(coef, x[inside]) - np.log(loss[inside])) ** 2).sum()
            n += inside.sum() - 3
        parabola.append(np.sqrt(rss / n))
    assert 0.0022 <= np.median(shared) <= 0.0033, np.median(shared)
    assert np.median(parabola) >= 2 * np.median(shared)


def test_its_vertices_err_alike_so_the_exponent_does_not() -> None:
    """Over the same 20 seeds the shared curve's vertices miss LR_opt by about the same at
    every point (the shape's error moves them together), so the LR exponent through them
    stays within 0.02 of the truth on average."""
    truth = np.log10(LR_COEFFICIENT * COMPUTE**LR_EXPONENT)
    errors = np.array([np.log10(fit_lr_optima(refined(seed))["lr_vertex"].to_numpy()) - truth
                       for seed in range(20)])
    spread = errors - errors.mean(axis=1, keepdims=True)
    slope = np.polyfit(np.log10(COMPUTE), errors.mean(axis=0), 1)[0]
    assert np.abs(spread).mean() < 0.01 and abs(slope) < 0.02, (spread, slope)


def test_a_first_round_alone_keeps_its_window_parabolas() -> None:
    """Three runs per window (the demo's five-LR grid) fit a parabola exactly and leave the
    shared curve too few runs: each point reports its parabola, the shape (c, 2, c, 2)."""
    optima = fit_lr_optima(first_round(0))
    assert (optima["curve"] == "window parabola").all()
    assert (optima["p_low"] == 2.0).all() and (optima["c_low"] == optima["c_high"]).all()
