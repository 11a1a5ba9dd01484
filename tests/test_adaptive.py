"""Adaptive IsoFLOP grid: on runs drawn from a known law, the additions extend a
grid cut short on one side until the minima are inside it and the fitted F_opt exponent
covers the truth; a good grid gets nothing; the compute cap is never exceeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted_runs import isoflop_runs

from analysis.adaptive import AdaptiveSettings, Design, Round, next_round, stopped_shrinking
from analysis.parametric import ParametricFit
from analysis.report import analyze

# The truth of tests/test_fit_synthetic.py: F_opt ~500, 870, 1430, 2480 at these budgets.
D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH  # C = 12 d F T (docs/METHOD.md §2.1)
TRUTH = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
BUDGETS = (3e10, 1e11, 3e11, 1e12)
SHORT_WIDTHS = (64, 128, 256, 512, 1024)  # every width below F_opt at the top budgets


def draw(points: list[tuple[int, int]], rng: np.random.Generator, noise_rel: float = 0.01) -> pd.DataFrame:
    """Runs at (F, steps) with loss = TRUTH x log-normal noise."""
    rows = [(f, s, K * f * s, float(TRUTH.predict(f, s)) * np.exp(noise_rel * rng.standard_normal()))
            for f, s in points]
    return pd.DataFrame(rows, columns=["n_features", "n_steps", "compute_flops", "loss"])


def first_pass(rng: np.random.Generator) -> pd.DataFrame:
    return draw([(f, round(b / (K * f))) for b in BUDGETS for f in SHORT_WIDTHS], rng)


def test_cut_short_grid_is_extended_until_the_optimum_is_inside() -> None:
    rng = np.random.default_rng(0)
    runs, design = first_pass(rng), Design(BUDGETS, SHORT_WIDTHS, K)
    settings = AdaptiveSettings(max_rounds=4, n_draws=50)
    before = analyze(runs, BATCH, D_IN, n_draws=settings.n_draws)
    assert before["edge_flags"]  # the cut-short grid leaves minima on its edge
    # ... so F_opt(C) comes from the parametric law, not from the grid's edge
    # (tests/test_fit_allocation.py); the rounds add widths until the IsoFLOP minima do
    assert before["features_opt"]["source"] == "parametric"

    previous: Round | None = None
    fits, log = before, []
    for round_index in range(1, settings.max_rounds + 2):
        previous = next_round(runs, design, settings, fits, previous, round_index)
        log.append(previous)
        if previous.stop:
            break
        runs = pd.concat([runs, draw([(a.n_features, a.n_steps) for a in previous.additions], rng)],
                         ignore_index=True)
        fits = analyze(runs, BATCH, D_IN, n_draws=settings.n_draws)

    first = log[0].additions
    assert first and all(a.kind == "edge" and a.n_features > max(SHORT_WIDTHS) for a in first)
    assert all("largest n_features" in a.reason for a in first)
    # The first round's new width is one grid spacing (a factor 2) beyond the edge.
    assert {a.n_features for a in first} == {2048}
    for a in first:  # steps from the budget: C = k F S
        assert a.compute_flops(K) == pytest.approx(a.budget_flops, rel=0.01)
    assert log[-1].stop.startswith("nothing flagged"), log[-1].stop
    assert fits["edge_flags"] == []  # every IsoFLOP minimum is now inside the grid
    lo, hi = fits["features_opt"]["exponent_ci95"]
    assert lo <= TRUTH.a <= hi
    assert fits["features_opt"]["source"] == "isoflop"


def test_grid_cut_short_below_adds_smaller_widths() -> None:
    # Every width at least 0.8 dex above F_opt: the minimum sits on the smallest width.
    runs = isoflop_runs(TRUTH, list(BUDGETS), K, n_widths=4, span_dex=0.9, centre_dex=1.25,
                        noise_rel=0.0)
    design = Design(BUDGETS, tuple(sorted(runs["n_features"].unique())), K)
    result = next_round(runs, design, AdaptiveSettings())
    assert len(result.additions) >= len(BUDGETS) and result.stop == ""
    for a in result.additions:
        at_budget = runs[np.isclose(runs["compute_flops"], a.budget_flops, rtol=0.01)]
        assert a.kind == "edge" and "smallest n_features" in a.reason
        assert a.n_features < at_budget["n_features"].min()
        assert a.n_steps == round(a.budget_flops / (K * a.n_features))


def test_good_grid_gets_no_additions() -> None:
    runs = isoflop_runs(TRUTH, list(BUDGETS), K, n_widths=6, span_dex=1.2, noise_rel=0.01, seed=1)
    design = Design(BUDGETS, tuple(sorted(runs["n_features"].unique())), K)
    result = next_round(runs, design, AdaptiveSettings())
    assert result.additions == [] and result.stop.startswith("nothing flagged")


def test_coarse_interior_grid_adds_between_the_two_best() -> None:
    # Three widths a factor 4 apart around the optimum: bracketed but coarse.
    runs = isoflop_runs(TRUTH, [1e12], K, n_widths=3, span_dex=1.2, noise_rel=0.0)
    design = Design((1e12,), tuple(runs["n_features"]), K)
    result = next_round(runs, design, AdaptiveSettings())
    (added,) = result.additions
    best_two = runs.nsmallest(2, "loss")["n_features"].to_numpy(dtype=float)
    assert added.kind == "resolution"
    assert added.n_features == pytest.approx(np.sqrt(best_two.prod()), rel=0.01)


def test_compute_cap_is_never_exceeded() -> None:
    rng = np.random.default_rng(0)
    runs, design = first_pass(rng), Design(BUDGETS, SHORT_WIDTHS, K)
    spent = float(runs["compute_flops"].sum())
    uncapped = next_round(runs, design, AdaptiveSettings())
    assert len(uncapped.additions) == 3
    cap = spent + 1.5 * 1e11  # room for the 1e11 budget's point, not the 3e11 or 1e12 ones
    capped = next_round(runs, design, AdaptiveSettings(compute_cap_flops=cap))
    assert [a.budget_flops for a in capped.additions] == [1e11]
    assert spent + sum(a.compute_flops(K) for a in capped.additions) <= cap
    assert len(capped.dropped) == 2 and capped.stop == ""
    full = next_round(runs, design, AdaptiveSettings(compute_cap_flops=spent))
    assert full.additions == [] and full.stop.startswith("compute cap")


def test_stops_when_intervals_stop_shrinking_or_rounds_run_out() -> None:
    widths = {"features_opt": 0.10, "steps_opt": 0.10}
    assert stopped_shrinking(widths, {"features_opt": 0.095, "steps_opt": 0.097}, 0.1)
    assert not stopped_shrinking(widths, {"features_opt": 0.08, "steps_opt": 0.099}, 0.1)
    assert not stopped_shrinking(widths, {}, 0.1)  # no fits this round: untested, go on
    assert not stopped_shrinking(None, widths, 0.1)
    runs = isoflop_runs(TRUTH, [1e12], K, n_widths=3, span_dex=1.2, noise_rel=0.0)
    design, settings = Design((1e12,), tuple(runs["n_features"]), K), AdaptiveSettings(max_rounds=2)
    assert next_round(runs, design, settings, round_index=3).stop.startswith("max_rounds")
    fits = {"features_opt": {"exponent_ci95": [0.40, 0.495]}, "steps_opt": {"exponent_ci95": [0.5, 0.6]}}
    last = Round([], "", interval_widths=widths)  # a resolution-only round with these widths
    result = next_round(runs, design, settings, fits, last, round_index=2)
    assert result.additions == [] and "shrank by < 10%" in result.stop
