"""The figures say what they should, where a reader can see it (planted runs, two stages,
a planned run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from test_fit_coverage import BATCH, D_IN, TRUTH, protocol

from analysis.panels import plain_number, short_log_ticks
from analysis.plan import check_plan, plan_run
from analysis.plots import all_figures
from analysis.report import analyze, prepare_runs


@pytest.fixture(scope="module")
def figures() -> dict:
    runs = protocol(1_000)
    fits = analyze(runs, batch_size_tokens=BATCH, d_in=D_IN, n_draws=30)
    plan = plan_run(fits, compute_flops=4e12)
    achieved = pd.DataFrame([{"n_features": plan["n_features"], "n_steps": plan["n_steps"],
                              "loss": 1.01 * float(TRUTH.predict(plan["n_features"], plan["n_steps"]))}])
    fits["planned_run"] = check_plan({**plan, "lr": None}, achieved)
    return {"figs": all_figures(prepare_runs(runs, BATCH), fits), "fits": fits, "plan": plan}


def test_plain_numbers() -> None:
    assert [plain_number(v) for v in (240.0, 0.5, 3e-3, 1e-4, 6e11, 1e4, 2.6e2)] == \
        ["240", "0.5", "3e-3", "1e-4", "6e11", "10000", "260"]


def test_a_short_log_axis_is_labelled_at_both_ends() -> None:
    """Under a decade (L0 4-24, compute 6e11-2.5e12): 4+ ticks, one within a fifth of a
    decade of each end, all inside; an axis too short for them gets evenly spaced ones."""
    for lo, hi in ((4.0, 24.0), (6e11, 2.5e12), (0.04, 0.42), (450.0, 4000.0)):
        ticks = short_log_ticks(lo, hi)
        assert len(ticks) >= 4 and lo <= min(ticks) and max(ticks) <= hi, (lo, hi, ticks)
        assert np.log10(min(ticks) / lo) < 0.2 and np.log10(hi / max(ticks)) < 0.2, (lo, hi, ticks)
    assert short_log_ticks(150.0, 230.0) == []


def test_tick_labels_are_plain_numbers(figures: dict) -> None:
    for name, fig in figures["figs"].items():
        for ax in fig.axes:
            labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
            assert not any("$" in t or "times" in t or "^" in t for t in labels), (name, labels)


def test_legends_cover_no_data(figures: dict) -> None:
    """Every legend lies outside its axes (beside or below), so no marker sits under it."""
    for name, fig in figures["figs"].items():
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
            overlap = box.intersection(box, area)
            assert overlap is None or overlap.width * overlap.height < 1.0, name


def test_every_lr_star_sits_on_its_curve(figures: dict) -> None:
    """The star (LR_opt, loss at it) is the vertex of the drawn curve (the budgets' shared
    one: this protocol has a refining round)."""
    assert all(row["curve"] == "shared" for row in figures["fits"]["lr_optima"])
    ax = figures["figs"]["lr"].axes[0]
    curves = [line for line in ax.get_lines() if line.get_linestyle() == "-" and len(line.get_xdata()) > 10]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*" and len(line.get_xdata()) == 1]
    assert len(curves) == len(stars) == 3
    for curve, star in zip(curves, stars, strict=True):
        x, y = np.log10(curve.get_xdata()), np.asarray(curve.get_ydata())
        at = np.interp(np.log10(star.get_xdata()[0]), x, y)
        assert at == pytest.approx(star.get_ydata()[0], rel=1e-4)
        assert y.min() == pytest.approx(star.get_ydata()[0], rel=1e-3)


def test_loss_against_compute_marks_stages_and_the_planned_run(figures: dict) -> None:
    ax = figures["figs"]["loss_vs_compute"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("stage-1 runs") for t in labels)
    assert any(t.startswith("stage-2 runs") for t in labels)
    planned = figures["fits"]["planned_run"]
    assert any(t.startswith(f"planned run: predicted {planned['predicted_loss']:.4g} (95% PI") for t in labels)
    achieved = f"planned run: achieved {planned['achieved_loss']:.4g} ({planned['relative_error']:+.1%})"
    assert achieved in labels
    # the stage-2 markers: the LR runs but those at stage 1's LR (3), which stage 1 fits
    stage2 = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label().startswith("stage-2")]
    assert len(stage2) == 1 and len(stage2[0].get_offsets()) == figures["fits"]["n_runs_lr"] - 3


def test_summary_has_the_six_panels(figures: dict) -> None:
    fig = figures["figs"]["summary"]
    titles = [ax.get_title() for ax in fig.axes]
    for title in ("IsoFLOP curves", "Loss against compute", "Compute-optimal F", "Loss against LR",
                  "LR_opt against compute"):
        assert title in titles
    assert any(t.startswith("Predicted against achieved") for t in titles)
    assert fig.get_suptitle().startswith(f"{figures['fits']['n_runs']} runs: F_opt ∝ C^")


def test_the_planned_run_sits_on_the_allocation_it_was_planned_from(figures: dict) -> None:
    """With the IsoFLOP law as the allocation's source, the plan's F and steps come from the
    parametric law's optimum: the allocation panels draw that too, through the star."""
    assert figures["fits"]["features_opt"]["source"] == "isoflop"
    for ax, key in zip(figures["figs"]["allocation"].axes, ("n_features", "n_steps"), strict=True):
        dashed = [line for line in ax.get_lines() if line.get_label() == "parametric law's optimum (the plan's)"]
        star = [line for line in ax.get_lines() if line.get_label() == "planned run"]
        assert len(dashed) == len(star) == 1
        x, y = np.log10(dashed[0].get_xdata()), np.log10(dashed[0].get_ydata())
        at = np.interp(np.log10(star[0].get_xdata()[0]), x, y)
        assert at == pytest.approx(np.log10(figures["plan"][key]), abs=0.01)
