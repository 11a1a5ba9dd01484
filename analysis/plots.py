"""The scaling plots (issue 4): each function returns a matplotlib Figure; cli.py saves them.

Inputs are the runs table (docs/CONTRACTS.md) and the fits.json dict (report.py).
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen: files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from analysis.isoflop import assign_budgets  # noqa: E402

COMPUTE_LABEL = "training compute C (FLOPs)"


def _tidy_log_axes(fig: Figure) -> Figure:
    """No minor-tick labels on log x axes: over less than a decade they overlap."""
    for ax in fig.axes:
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())
    return fig


def _compute_grid(fits: dict[str, Any], runs: pd.DataFrame) -> np.ndarray:
    top = max(float(runs["compute_flops"].max()), fits["prediction"]["compute_flops"])
    return np.geomspace(float(runs["compute_flops"].min()), top, 100)


def _band(ax: Any, c: np.ndarray, fits: dict[str, Any], name: str, color: str) -> None:
    """95% band of coefficient C^exponent over the bootstrap draws, when they exist."""
    draws = fits.get("bootstrap", {}).get("draws", {})
    coef, expo = draws.get(f"{name}_coefficient"), draws.get(f"{name}_exponent")
    if not coef or not expo:
        return
    pairs = np.array([(k, e) for k, e in zip(coef, expo, strict=True) if k is not None and e is not None])
    if len(pairs) < 10:
        return
    curves = pairs[:, :1] * c[None, :] ** pairs[:, 1:]
    lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
    ax.fill_between(c, lo, hi, color=color, alpha=0.2, label="95% bootstrap band")


def loss_vs_compute(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    """Every run coloured by F, the Pareto frontier and the fitted L(C) = E + A C^c."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    sc = ax.scatter(runs["compute_flops"], runs["loss"], c=runs["n_features"], cmap="viridis",
                    norm=LogNorm(), s=22, edgecolor="k", linewidth=0.3, label="runs")
    fig.colorbar(sc, ax=ax, label="n_features F")
    front = pd.DataFrame(fits["frontier"])
    ax.plot(front["compute_flops"], front["loss"], "k.", ms=6, label="frontier (best loss so far)")
    iso = pd.DataFrame(fits["isoflop"])
    if not iso.empty:
        ax.plot(iso["compute_flops"], iso["loss_opt"], "rD", ms=5, mfc="none", label="IsoFLOP minima")
    law = fits["loss_vs_compute"]
    if law.get("coefficient") is not None:
        c = _compute_grid(fits, runs)
        e = law["irreducible"]["value"]
        ax.plot(c, e + law["coefficient"] * c ** law["exponent"], "r-",
                label=f"L = {e:.3g} + {law['coefficient']:.3g} C^{law['exponent']:.3f} ({law['source']})")
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=metric_label(fits),
           title="Loss against compute")
    ax.legend(fontsize=8)
    return fig


def isoflop_curves(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    """Loss against F at each IsoFLOP budget, its parabola and its minimum."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    iso = pd.DataFrame(fits["isoflop"])
    if iso.empty:
        ax.text(0.5, 0.5, "no budget with >= 3 widths", ha="center", transform=ax.transAxes)
        return fig
    if "lr" in runs.columns and fits.get("lr_stage1"):  # stage-1 runs only
        runs = runs[np.isclose(runs["lr"], fits["lr_stage1"], rtol=1e-9)]
    label = assign_budgets(runs["compute_flops"], fits.get("budget_tol_dex", 0.05), iso["compute_flops"])
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(iso)))
    for color, row in zip(colors, iso.itertuples(), strict=True):
        group = runs[label == row.compute_flops]
        x = np.log10(group["n_features"].to_numpy(dtype=float))
        ax.plot(10**x, group["loss"], "o", color=color, ms=4, label=f"C = {row.compute_flops:.2g}")
        xs = np.linspace(x.min() - 0.1, x.max() + 0.1, 50)
        ax.plot(10**xs, np.polyval(np.polyfit(x, group["loss"], 2), xs), "-", color=color, lw=1)
        ax.plot(row.n_features_opt, row.loss_opt, "*", color=color, ms=12, mec="k",
                mew=0.5 if not row.edge else 2.0)
    ax.set(xscale="log", xlabel="n_features F", ylabel=metric_label(fits),
           title="IsoFLOP curves (star: F_opt; thick edge: flagged)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def allocation(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    """F_opt(C) and steps_opt(C): IsoFLOP minima, power-law fits, 95% bands, the prediction."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    iso = pd.DataFrame(fits["isoflop"])
    c = _compute_grid(fits, runs)
    pred = fits["prediction"]
    for ax, name, col, key, ylabel in (
        (axes[0], "features", "n_features_opt", "features_opt", "optimal n_features F_opt"),
        (axes[1], "steps", "n_steps_opt", "steps_opt", "optimal steps S_opt"),
    ):
        if not iso.empty:
            ax.plot(iso["compute_flops"], iso[col], "ko", label="IsoFLOP minima")
        law = fits[key]
        if law.get("coefficient") is not None and law.get("exponent") is not None:
            ax.plot(c, law["coefficient"] * c ** law["exponent"], "b-",
                    label=f"{law['source']}: {law['coefficient']:.3g} C^{law['exponent']:.3f}")
        _band(ax, c, fits, name, "b")
        point = pred[col]
        if point.get("value") is not None and point.get("ci95") and None not in point["ci95"]:
            ax.errorbar(pred["compute_flops"], point["value"], fmt="rs",
                        yerr=[[max(0.0, point["value"] - point["ci95"][0])],
                              [max(0.0, point["ci95"][1] - point["value"])]],
                        label="parametric optimum at target (95% CI)")
        ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=ylabel)
        ax.legend(fontsize=8)
    fig.suptitle("Compute-optimal allocation")
    return fig


def lr_curves(runs: pd.DataFrame, fits: dict[str, Any]) -> Figure:
    """Loss against LR at each swept point, and LR_opt against compute with its law."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    optima = pd.DataFrame(fits.get("lr_optima", []))
    colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(optima), 1)))
    for color, row in zip(colors, optima.itertuples(), strict=False):
        group = runs[(runs["n_features"] == row.n_features) & (runs["n_steps"] == row.n_steps)].sort_values("lr")
        axes[0].plot(group["lr"], group["loss"], "o-", color=color, ms=4, label=f"C = {row.compute_flops:.2g}")
        axes[0].plot(row.lr_opt, row.loss_opt, "*", color=color, ms=12, mec="k")
    axes[0].set(xscale="log", xlabel="learning rate", ylabel=metric_label(fits), title="Loss against LR")
    if not optima.empty:
        axes[1].plot(optima["compute_flops"], optima["lr_opt"], "ko", label="LR_opt per budget")
    if fits.get("lr_opt"):
        c = _compute_grid(fits, runs)
        law = fits["lr_opt"]
        axes[1].plot(c, law["coefficient"] * c ** law["exponent"], "b-",
                     label=f"{law['coefficient']:.3g} C^{law['exponent']:.3f}")
        _band(axes[1], c, fits, "lr", "b")
    axes[1].set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel="optimal learning rate",
                title="LR_opt against compute")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def metric_label(fits: dict[str, Any]) -> str:
    """The y axis: the metric the laws were fitted to (`analyze --metric`)."""
    return f"final held-out {fits.get('metric', 'loss')}"


def all_figures(runs: pd.DataFrame, fits: dict[str, Any]) -> dict[str, Figure]:
    """name -> figure; the LR figure only when there is an LR stage."""
    figs = {
        "loss_vs_compute": loss_vs_compute(runs, fits),
        "isoflop": isoflop_curves(runs, fits),
        "allocation": allocation(runs, fits),
    }
    if fits.get("lr_optima"):
        figs["lr"] = lr_curves(runs, fits)
    return {name: _tidy_log_axes(fig) for name, fig in figs.items()}
