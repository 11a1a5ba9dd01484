"""The comparison's figures (analysis/compare.py): each returns a matplotlib Figure; the
CLI saves them.

    frontiers    the compute-optimal frontier of every group against compute, one figure
    pareto       metric against L0 per architecture and width: the view the field compares
                 SAEs in (the runs at each width's largest budget)
    allocation   F_opt against compute per group
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.panels import plain_ticks  # noqa: E402

ARCH_COLORS = {"relu": "tab:gray", "topk": "tab:blue", "batchtopk": "tab:orange",
               "matryoshka_batchtopk": "tab:green", "jumprelu": "tab:red"}
STYLES = ("-", "--", ":", "-.")
TOP_DEX = 0.05  # runs within this of a group's largest compute make its top budget
COMPUTE_LABEL = "training compute C (FLOPs)"


def _style(groups: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """group -> (colour by architecture, line style by its setting within it)."""
    seen: dict[str, int] = {}
    out = {}
    for g in groups:
        n = seen.get(g["arch"], 0)
        seen[g["arch"]] = n + 1
        out[g["group"]] = (ARCH_COLORS.get(g["arch"], "black"), STYLES[n % len(STYLES)])
    return out


def frontiers(comparison: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.6), constrained_layout=True)
    style = _style(comparison["groups"])
    for g in comparison["groups"]:
        color, line = style[g["group"]]
        front = pd.DataFrame(g["frontier"])
        if front.empty:
            continue
        ax.plot(front["compute_flops"], front["loss"], "o", color=color, ms=5)
        law = g["loss_vs_compute"]
        if law.get("coefficient") is not None and law.get("irreducible") is not None:
            c = np.geomspace(front["compute_flops"].min(), front["compute_flops"].max(), 50)
            ax.plot(c, law["irreducible"] + law["coefficient"] * c ** law["exponent"], line,
                    color=color, label=f"{g['group']}: C^{law['exponent']:.3f}")
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL,
           ylabel=f"frontier {comparison['metric']}", title="Compute-optimal frontier per group")
    plain_ticks(ax)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def pareto(comparison: dict[str, Any], runs_by_group: dict[str, pd.DataFrame]) -> Figure:
    """One point per run at its group's largest budget: L0 against the metric, coloured by
    architecture, one marker per width; a line joins an architecture's groups (its
    sparsity settings) at one width."""
    fig, ax = plt.subplots(figsize=(7, 4.6), constrained_layout=True)
    arch_of = {g["group"]: g["arch"] for g in comparison["groups"]}
    rows = []
    for name, runs in runs_by_group.items():
        if "l0" not in runs.columns or runs.empty:
            continue
        top = runs[np.log10(runs["compute_flops"].max() / runs["compute_flops"]) <= TOP_DEX]
        rows += [{"arch": arch_of.get(name, "?"), "n_features": int(r.n_features),
                  "l0": r.l0, "loss": r.loss} for r in top.itertuples()]
    table = pd.DataFrame(rows, columns=["arch", "n_features", "l0", "loss"])
    widths = sorted(table["n_features"].unique())
    markers = dict(zip(widths, "osD^vP*X<>" * (1 + len(widths) // 10), strict=False))
    for (arch, width), part in table.groupby(["arch", "n_features"]):
        part = part.sort_values("l0")
        ax.plot(part["l0"], part["loss"], "-", marker=markers[width], ms=6, lw=1,
                color=ARCH_COLORS.get(str(arch), "black"))
    for arch in sorted(table["arch"].unique()):
        ax.plot([], [], "-", color=ARCH_COLORS.get(arch, "black"), label=arch)
    for width in widths[:10]:
        ax.plot([], [], markers[width], color="black", ms=5, label=f"F = {width}")
    ax.set(xscale="log", yscale="log", xlabel="L0 (mean active latents per token, held out)",
           ylabel=comparison["metric"], title="Metric against L0 at each group's largest budget")
    plain_ticks(ax)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return fig


def allocation(comparison: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.6), constrained_layout=True)
    style = _style(comparison["groups"])
    for g in comparison["groups"]:
        law, front = g["features_opt"], pd.DataFrame(g["frontier"])
        if not law or law.get("coefficient") is None or front.empty:
            continue
        color, line = style[g["group"]]
        c = np.geomspace(front["compute_flops"].min(), front["compute_flops"].max() * 4, 50)
        ci = law.get("exponent_ci95")
        interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        ax.plot(c, law["coefficient"] * c ** law["exponent"], line, color=color,
                label=f"{g['group']}: F_opt ∝ C^{law['exponent']:.2f}{interval}")
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel="compute-optimal F",
           title="Compute-optimal width per group")
    plain_ticks(ax)
    ax.legend(fontsize=7)
    return fig


def all_figures(comparison: dict[str, Any], runs_by_group: dict[str, pd.DataFrame]
                ) -> dict[str, Figure]:
    return {"compare_frontiers": frontiers(comparison),
            "compare_pareto": pareto(comparison, runs_by_group),
            "compare_allocation": allocation(comparison)}
