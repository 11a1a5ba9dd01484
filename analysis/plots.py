"""The scaling plots, each a matplotlib Figure (sweeps/analysis_commands.py saves them).

Figures arrange the panels of panels.py; their legends sit outside the data (beside or
below the axes) and their tick labels are plain numbers.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen: files only

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.panels import (  # noqa: E402
    LEGEND,
    ci_text,
    draw_allocation,
    draw_isoflop,
    draw_loss_vs_compute,
    draw_lr_curves,
    draw_lr_law,
    draw_prediction,
    lr_curve_shared,
    plain_ticks,
)


def _outside_legend(ax: Axes, below: bool = False, ncol: int = 2) -> None:
    if not ax.get_legend_handles_labels()[0]:
        return
    if below:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, **LEGEND)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **LEGEND)


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    return plt.subplots(1, ncols, figsize=(width, height), layout="constrained")


def loss_vs_compute(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    fig, ax = _figure(8.5, 5.5)
    draw_loss_vs_compute(ax, runs, fits)
    ax.set_title("Loss against compute")
    _outside_legend(ax, below=True)
    return fig


def isoflop_curves(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    fig, ax = _figure(8.0, 4.8)
    draw_isoflop(ax, runs, fits)
    ax.set_title("IsoFLOP curves: a parabola near the best width, its vertex F_opt")
    _outside_legend(ax)
    return fig


def allocation(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    fig, axes = _figure(12, 5.2, 2)
    for ax, which in zip(axes, ("features", "steps"), strict=True):
        draw_allocation(ax, runs, fits, which)
        _outside_legend(ax, below=True)
    fig.suptitle(f"Compute-optimal allocation (from {fits['features_opt']['source']})")
    return fig


def lr_curves(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    fig, axes = _figure(12, 5.2, 2)
    draw_lr_curves(axes[0], runs, fits)
    axes[0].set_title("Loss against LR: one curve shared by the budgets, its vertices LR_opt"
                      if lr_curve_shared(fits)
                      else "Loss against LR: a parabola near the best LR, its vertex LR_opt")
    draw_lr_law(axes[1], runs, fits)
    axes[1].set_title("LR_opt against compute")
    for ax in axes:
        _outside_legend(ax, below=True)
    return fig


def summary(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    """One page: IsoFLOP curves, loss against compute, F_opt(C), loss against LR, LR_opt(C),
    and the planned run's predicted against achieved loss."""
    fig = plt.figure(figsize=(16, 12), layout="constrained")
    grid = fig.subplots(2, 3)
    draw_isoflop(grid[0, 0], runs, fits)
    draw_loss_vs_compute(grid[0, 1], runs, fits, colorbar=False)
    draw_allocation(grid[0, 2], runs, fits, "features")
    if fits.get("lr_optima"):
        draw_lr_curves(grid[1, 0], runs, fits)
        draw_lr_law(grid[1, 1], runs, fits)
    else:
        for ax in grid[1, :2]:
            ax.axis("off")
            ax.text(0.5, 0.5, "no LR stage (monoscale plan-lr)", ha="center", transform=ax.transAxes)
    draw_prediction(grid[1, 2], fits)
    titles = ["IsoFLOP curves", "Loss against compute", "Compute-optimal F",
              "Loss against LR", "LR_opt against compute", None]
    if not fits.get("lr_optima"):
        titles[3:5] = [None, None]
    for ax, title in zip(grid.ravel(), titles, strict=True):
        if title:
            ax.set_title(title)
        _outside_legend(ax, below=True, ncol=1)
    fig.suptitle(_headline(fits), fontsize=11)
    return fig


def _headline(fits: dict[str, Any]) -> str:
    """The laws in one or two lines, exponents with their 95% intervals."""
    parts = []
    for key, name in (("features_opt", "F_opt"), ("steps_opt", "steps_opt"), ("lr_opt", "LR_opt"),
                      ("loss_vs_compute", "L - E")):
        law = fits.get(key)
        if law and law.get("exponent") is not None:
            parts.append(f"{name} ∝ C^{law['exponent']:.2f} {ci_text(law.get('exponent_ci95'))}")
    return f"{fits['n_runs']} runs: " + ",   ".join(parts)


def all_figures(runs: pd.DataFrame, fits: dict[str, Any]) -> dict[str, Figure]:
    """name -> figure; the LR figure only when there is an LR stage."""
    figs = {
        "loss_vs_compute": loss_vs_compute(runs, fits),
        "isoflop": isoflop_curves(runs, fits),
        "allocation": allocation(runs, fits),
    }
    if fits.get("lr_optima"):
        figs["lr"] = lr_curves(runs, fits)
    figs["summary"] = summary(runs, fits)
    for fig in figs.values():
        fig.canvas.draw()  # the limits are final only now: then the plain tick labels
        for ax in fig.axes:
            plain_ticks(ax)
    return figs
