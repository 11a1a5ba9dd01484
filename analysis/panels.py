"""The panels of the scaling plots: each `draw_*` draws one view into a given Axes.

Inputs are the runs table (docs/CONTRACTS.md) and the fits.json dict (report.py); plots.py
arranges the panels into figures, so the one-page summary shows exactly what the single
figures show. Conventions: stage-1 runs as filled circles coloured by n_features, stage-2
(LR sweep) runs as open triangles, what a law leaves out (a budget or LR point whose
optimum is on the grid's edge) as an open marker, the planned run's prediction (95% PI) as
a black square beside its achieved loss as a green star, tick labels as plain numbers
(240, 3e-3, 2e12).
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen: files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from analysis.best_lr import at_best_lr  # noqa: E402
from analysis.isoflop import assign_budgets  # noqa: E402
from analysis.laws import split_stages  # noqa: E402
from analysis.lr_law import log_loss_at  # noqa: E402
from analysis.plan import parametric_from_fits  # noqa: E402

COMPUTE_LABEL = "training compute C (FLOPs)"
LAW, BAND, PLAN, ACHIEVED = "tab:red", "tab:red", "black", "tab:green"
LEGEND = {"fontsize": 8, "frameon": False}
MAX_LEGEND_BUDGETS = 8  # more budgets: the legend names the first and the last


def metric_label(fits: dict[str, Any]) -> str:
    """The y label of a panel of the fitted metric (`analyze --metric`), not always loss."""
    return f"final held-out {fits.get('metric', 'loss')}"


def plain_number(value: float, _: Any = None) -> str:
    """240, 0.5, 3e-3, 6e11: numbers as a reader writes them, no 2.4x10^2."""
    if value <= 0 or not np.isfinite(value):
        return ""
    if 0.1 <= value < 1e5:
        text = f"{value:.4g}"
        return f"{value:.0f}" if "e" in text else text
    exponent = int(np.floor(np.log10(value)))
    mantissa = value / 10**exponent
    return f"{mantissa:.2g}e{exponent}" if round(mantissa, 2) != 1 else f"1e{exponent}"


# Tick mantissas, coarse to fine, for log axes spanning under ~1 decade: the first set that
# puts 4 ticks inside the axis labels it (evenly spaced ticks left a log axis's low end
# bare: 8, 12, 16, 20 over runs at L0 4-6).
SHORT_LOG_MANTISSAS = ((1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8),
                       (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))


def short_log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks m x 10^k inside [lo, hi] from the coarsest of SHORT_LOG_MANTISSAS giving 4;
    [] when even the finest gives fewer than 3 (an axis too short for them)."""
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for mantissas in SHORT_LOG_MANTISSAS:
        ticks = [m * 10.0**k for k in decades for m in mantissas if lo <= m * 10.0**k <= hi]
        if len(ticks) >= 4:
            break
    return ticks if len(ticks) >= 3 else []


def plain_ticks(ax: Axes) -> None:
    """Plain-number labels on log axes: short_log_ticks over less than ~1 decade (where a
    log locator labels one tick or none; evenly spaced ones on an axis shorter still), 1-2-5
    per decade up to 3 decades, decades (or every few) beyond."""
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or not (lo > 0 and hi > lo):
            continue
        decades = np.log10(hi / lo)
        short = short_log_ticks(lo, hi) if decades < 1.2 else []
        locator = (FixedLocator(short) if short else MaxNLocator(5) if decades < 1.2 else
                   LogLocator(10, subs=(1.0, 2.0, 5.0)) if decades < 3 else
                   LogLocator(10, subs=(1.0,), numticks=8))
        axis.set_major_locator(locator)
        axis.set_major_formatter(FuncFormatter(plain_number))
        axis.set_minor_formatter(NullFormatter())


def _stages(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    stage1, lr_runs, _ = split_stages(runs)
    return stage1, lr_runs


def _as_fitted(stage1: pd.DataFrame, fits: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """(stage-1 runs with their losses as the laws were fitted to them, moved to the best
    LR where fits.json has lr_gaps (best_lr.py); a legend note saying so, or "")."""
    gaps = tuple((g["compute_flops"], g["log_loss_gap"]) for g in fits.get("lr_gaps") or [])
    if not gaps:
        return stage1, ""
    return at_best_lr(stage1, gaps), "losses moved to the best LR"


def _compute_grid(fits: dict[str, Any], runs: pd.DataFrame) -> np.ndarray:
    top = max(float(runs["compute_flops"].max()), fits["prediction"]["compute_flops"])
    if fits.get("planned_run"):
        top = max(top, _planned_compute(fits))
    return np.geomspace(float(runs["compute_flops"].min()), top, 100)


def _planned_compute(fits: dict[str, Any]) -> float:
    run = fits["planned_run"]
    return float(fits["flops_per_feature_step"] * run["n_features"] * run["n_steps"])


def _draws(fits: dict[str, Any], *names: str) -> np.ndarray:
    """[n_draws, len(names)] bootstrap draws with every value present."""
    draws = fits.get("bootstrap", {}).get("draws", {})
    if not all(draws.get(n) for n in names):
        return np.zeros((0, len(names)))
    rows = [r for r in zip(*(draws[n] for n in names), strict=True) if None not in r]
    return np.array(rows, dtype=float).reshape(-1, len(names))


def _band(ax: Axes, c: np.ndarray, curves: np.ndarray, color: str, label: str = "95% band") -> None:
    if len(curves) >= 10:
        lo, hi = np.nanpercentile(curves, [2.5, 97.5], axis=0)
        ax.fill_between(c, lo, hi, color=color, alpha=0.15, lw=0, label=label)


def _power_band(ax: Axes, c: np.ndarray, fits: dict[str, Any], name: str, color: str) -> None:
    """95% band of coefficient C^exponent over the bootstrap draws."""
    pairs = _draws(fits, f"{name}_coefficient", f"{name}_exponent")
    _band(ax, c, pairs[:, :1] * c[None, :] ** pairs[:, 1:], color)


def ci_text(ci: list[float] | None, digits: int = 2) -> str:
    """An exponent's interval to `digits` decimals; digits=0: a loss's, to 4 figures."""
    if not ci or None in ci:
        return "[n/a]"
    if digits == 0:
        return f"[{ci[0]:.4g}, {ci[1]:.4g}]"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def draw_loss_vs_compute(ax: Axes, runs: pd.DataFrame, fits: dict[str, Any], colorbar: bool = True) -> None:
    """Runs, the frontier, the fitted L(C) with its band, and the planned run: predicted
    (with its 95% PI) beside achieved."""
    stage1, lr_runs = _stages(runs)
    if len(lr_runs) and fits.get("lr_stage1"):  # those at stage 1's LR are stage-1 runs too
        lr_runs = lr_runs[~np.isclose(lr_runs["lr"], fits["lr_stage1"], rtol=1e-9)]
    sc = ax.scatter(stage1["compute_flops"], stage1["loss"], c=stage1["n_features"], cmap="viridis",
                    norm=LogNorm(), s=22, edgecolor="k", linewidth=0.3, label="stage-1 runs (colour: F)")
    if colorbar:
        ax.figure.colorbar(sc, ax=ax, label="n_features F", format=FuncFormatter(plain_number))
    if len(lr_runs):
        ax.scatter(lr_runs["compute_flops"], lr_runs["loss"], marker="^", s=24, facecolor="none",
                   edgecolor="0.45", linewidth=0.8, label="stage-2 runs (LR sweep)")
    front = pd.DataFrame(fits["frontier"])
    ax.plot(front["compute_flops"], front["loss"], "-", color="0.3", lw=0.8, label="frontier: best loss so far")
    law = fits["loss_vs_compute"]
    if law.get("coefficient") is not None and law["irreducible"].get("value") is not None:
        c = _compute_grid(fits, runs)
        e = law["irreducible"]["value"]
        floor = f"{plain_number(e)} + " if plain_number(e) else ""  # no "0 +" for a floor at 0
        ax.plot(c, e + law["coefficient"] * c ** law["exponent"], "-", color=LAW, lw=1.5,
                label=f"L(C) = {floor}{plain_number(law['coefficient'])} C^{law['exponent']:.3f} ({law['source']})")
        draws = _draws(fits, "loss_irreducible", "loss_coefficient", "loss_exponent")
        _band(ax, c, draws[:, :1] + draws[:, 1:2] * c[None, :] ** draws[:, 2:], BAND)
    iso = pd.DataFrame(fits["isoflop"])
    if not iso.empty:
        inside = iso["edge"] == ""
        moved = " (at the best LR)" if fits.get("lr_gaps") else ""
        ax.plot(iso.loc[inside, "compute_flops"], iso.loc[inside, "loss_opt"], "D", color=LAW, ms=5,
                label=f"IsoFLOP minima{moved}")
    if fits.get("planned_run"):
        _draw_planned(ax, fits)
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=metric_label(fits))


def _draw_planned(ax: Axes, fits: dict[str, Any]) -> None:
    run, c = fits["planned_run"], _planned_compute(fits)
    pred, pi = run["predicted_loss"], run.get("predicted_loss_pi95")
    yerr = ([[max(0.0, pred - pi[0])], [max(0.0, pi[1] - pred)]] if pi and None not in pi
            else None)
    ax.errorbar([c / 1.06], [pred], yerr=yerr, fmt="s", color=PLAN, ms=6, capsize=4, lw=1.5,
                label=f"planned run: predicted {pred:.4g} (95% PI {ci_text(pi, 0)})")
    ax.plot([c * 1.06], [run["achieved_loss"]], "*", color=ACHIEVED, mec="k", mew=0.5, ms=14,
            label=f"planned run: achieved {run['achieved_loss']:.4g} ({run['relative_error']:+.1%})")


def draw_isoflop(ax: Axes, runs: pd.DataFrame, fits: dict[str, Any]) -> None:
    """Loss against F at each IsoFLOP budget, its parabola over the window of widths the
    vertex comes from (isoflop.py), and its minimum (open: on the grid's edge, left out of
    the laws)."""
    iso = pd.DataFrame(fits["isoflop"])
    if iso.empty:
        ax.text(0.5, 0.5, "no budget with >= 3 widths", ha="center", transform=ax.transAxes)
        return
    stage1, note = _as_fitted(_stages(runs)[0], fits)
    label = assign_budgets(stage1["compute_flops"], fits.get("budget_tol_dex", 0.05), iso["compute_flops"])
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(iso)))
    named = {0, len(iso) - 1} if len(iso) > MAX_LEGEND_BUDGETS else set(range(len(iso)))
    for i, (color, row) in enumerate(zip(colors, iso.itertuples(), strict=True)):
        group = stage1[label == row.compute_flops]
        x = np.log10(group["n_features"].to_numpy(dtype=float))
        name = f"C = {plain_number(row.compute_flops)}" + (" (of many)" if len(named) < len(iso) else "")
        ax.plot(10**x, group["loss"], "o", color=color, ms=4, label=name if i in named else None)
        if np.isfinite(row.n_features_vertex):  # the parabola over its window of widths
            xs = np.linspace(np.log10(row.window_n_features_min) - 0.08,
                             np.log10(row.window_n_features_max) + 0.08, 50)
            curve = row.loss_vertex + row.curvature * (xs - np.log10(row.n_features_vertex)) ** 2
            ax.plot(10**xs, curve, "-", color=color, lw=1.2)
        edge = bool(row.edge)
        ax.plot(row.n_features_opt, row.loss_opt, "*", ms=13, mec=color if edge else "k",
                mfc="none" if edge else color, mew=1.2 if edge else 0.5)
    ax.plot([], [], "*", color="0.5", mec="k", mew=0.5, ms=10, label="F_opt (open: grid's edge)")
    if note:
        ax.plot([], [], " ", label=f"stage-1 {note}")
    ax.set(xscale="log", xlabel="n_features F", ylabel=metric_label(fits))


def draw_allocation(ax: Axes, runs: pd.DataFrame, fits: dict[str, Any], which: str = "features") -> None:
    """F_opt(C) (or steps_opt(C)): IsoFLOP minima, the law with its source and band, the
    parametric optimum at the target with its 95% CI, and the planned run."""
    key, col, ylabel = {"features": ("features_opt", "n_features_opt", "optimal n_features F_opt"),
                        "steps": ("steps_opt", "n_steps_opt", "optimal steps S_opt")}[which]
    iso = pd.DataFrame(fits["isoflop"])
    if not iso.empty:
        inside = iso["edge"] == ""
        ax.plot(iso.loc[inside, "compute_flops"], iso.loc[inside, col], "ko", label="IsoFLOP minima")
        if (~inside).any():
            ax.plot(iso.loc[~inside, "compute_flops"], iso.loc[~inside, col], "o", mfc="none", mec="0.5",
                    label="best width on the grid's edge (left out)")
    c = _compute_grid(fits, runs)
    law = fits[key]
    if law.get("coefficient") is not None and law.get("exponent") is not None:
        ax.plot(c, law["coefficient"] * c ** law["exponent"], "-", color=LAW,
                label=f"{law['coefficient']:.3g} C^{law['exponent']:.3f} {ci_text(law['exponent_ci95'])} "
                      f"({law['source']})")
        _power_band(ax, c, fits, which, BAND)
    if law.get("source") != "parametric":  # the plan's allocation, where the law above is not it
        f_opt, s_opt = parametric_from_fits(fits).optimal_allocation(c, fits["flops_per_feature_step"])
        ax.plot(c, f_opt if which == "features" else s_opt, "--", color="0.35", lw=1.2,
                label="parametric law's optimum (the plan's)")
    pred = fits["prediction"]
    point = pred[col]
    if point.get("value") is not None and point.get("ci95") and None not in point["ci95"]:
        ax.errorbar(pred["compute_flops"], point["value"], fmt="s", color="0.35", capsize=3,
                    yerr=[[max(0.0, point["value"] - point["ci95"][0])],  # a point may lie
                          [max(0.0, point["ci95"][1] - point["value"])]],  # outside its draws
                    label=f"parametric optimum at C={pred['compute_flops']:.2g} (95% CI)")
    if fits.get("planned_run"):
        ax.plot(_planned_compute(fits), fits["planned_run"]["n_" + which], "*", color=ACHIEVED,
                mec="k", mew=0.5, ms=13, label="planned run")
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=ylabel)


def lr_curve_shared(fits: dict[str, Any]) -> bool:
    """Whether the LR optima are the vertices of the curve the budgets share (lr_law.py)."""
    return any(row.get("curve") == "shared" for row in fits.get("lr_optima") or [])


def draw_lr_curves(ax: Axes, runs: pd.DataFrame, fits: dict[str, Any]) -> None:
    """Loss against LR at each swept point, with the curve the optimum is the vertex of
    (lr_law.py: its window parabola, or the curve the points share) drawn through it: the
    star sits on its curve."""
    optima = pd.DataFrame(fits.get("lr_optima", []))
    _, lr_runs = _stages(runs)
    colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(optima), 1)))
    for color, row in zip(colors, optima.itertuples(), strict=False):
        at = (runs["n_features"] == row.n_features) & (runs["n_steps"] == row.n_steps)
        group = runs[at & runs["lr"].notna()].sort_values("lr")
        ax.plot(group["lr"], group["loss"], "o", color=color, ms=4,
                label=f"C = {plain_number(row.compute_flops)} (F={row.n_features:.0f})")
        edge = bool(row.edge)
        if not edge and np.isfinite(row.lr_vertex):
            lrs = np.logspace(np.log10(row.window_lr_min) - 0.05, np.log10(row.window_lr_max) + 0.05, 80)
            ax.plot(lrs, np.exp(log_loss_at(row, lrs)), "-", color=color, lw=1.5)
        ax.plot(row.lr_opt, row.loss_opt, "*", ms=13, mec=color if edge else "k",
                mfc="none" if edge else color, mew=1.2 if edge else 0.5)
    ax.plot([], [], "-", color="0.5", label="curve shared by the budgets" if lr_curve_shared(fits)
            else "parabola over the window (log loss)")
    ax.plot([], [], "*", color="0.5", mec="k", mew=0.5, ms=10, label="LR_opt (open: grid's edge)")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel=metric_label(fits))


def draw_lr_law(ax: Axes, runs: pd.DataFrame, fits: dict[str, Any]) -> None:
    """LR_opt against compute: the optima (open: left out), the law with its band."""
    optima = pd.DataFrame(fits.get("lr_optima", []))
    if not optima.empty:
        inside = optima["edge"] == ""
        ax.plot(optima.loc[inside, "compute_flops"], optima.loc[inside, "lr_opt"], "ko", label="LR_opt per budget")
        if (~inside).any():
            ax.plot(optima.loc[~inside, "compute_flops"], optima.loc[~inside, "lr_opt"], "o", mfc="none",
                    mec="0.5", label="best LR on the grid's edge (left out)")
    if fits.get("lr_opt"):
        c = _compute_grid(fits, runs)
        law = fits["lr_opt"]
        ax.plot(c, law["coefficient"] * c ** law["exponent"], "-", color=LAW,
                label=f"{law['coefficient']:.3g} C^{law['exponent']:.3f} {ci_text(law['exponent_ci95'])}")
        _power_band(ax, c, fits, "lr", BAND)
    if fits.get("lr_stage1"):
        ax.axhline(fits["lr_stage1"], color="0.5", ls=":", lw=1, label=f"stage-1 LR {plain_number(fits['lr_stage1'])}")
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel="optimal learning rate")


def draw_prediction(ax: Axes, fits: dict[str, Any]) -> None:
    """Predicted (95% PI and CI) against achieved loss of the planned run, or the target's
    prediction when none was trained."""
    run = fits.get("planned_run")
    if run:
        pred, pi, achieved = run["predicted_loss"], run.get("predicted_loss_pi95"), run["achieved_loss"]
        title = f"F={run['n_features']}, {run['n_steps']} steps, C={plain_number(_planned_compute(fits))}"
    else:
        loss = fits["prediction"]["loss"]
        pred, pi, achieved = loss.get("value"), loss.get("pi95"), None
        title = f"prediction at C={plain_number(fits['prediction']['compute_flops'])} (not trained)"
    if pred is None:
        ax.text(0.5, 0.5, "no prediction", ha="center", transform=ax.transAxes)
        return
    if pi and None not in pi:
        ax.errorbar([0], [pred], yerr=[[max(0.0, pred - pi[0])], [max(0.0, pi[1] - pred)]],
                    fmt="s", color=PLAN, capsize=6,
                    lw=1.5, ms=7, label=f"predicted {pred:.4g}, 95% PI {ci_text(pi, 0)}")
    if run and achieved is not None:
        inside = "inside" if run.get("within_pi95") else "outside"
        ax.plot([0.6], [achieved], "*", color=ACHIEVED, mec="k", mew=0.5, ms=16,
                label=f"achieved {achieved:.4g} ({run['relative_error']:+.1%}, {inside} the PI)")
    ax.set(xlim=(-0.8, 1.4), xticks=[], ylabel=metric_label(fits))
    ax.margins(y=0.12)
    ax.set_title(f"Predicted against achieved\n{title}", fontsize=10)
