"""The feature-density histogram of one SAE (a run's feature_density.json, sae_core/run.py):
how many features fire at each log10 frequency on the held-out tokens, the plot of
"Scaling Monosemanticity"'s and SAELens's feature-density figures. Dotted lines mark
SAEBench's dense thresholds (1% and 10% of tokens); the dead, which never fired, are
counted in the title (log10 0 has no bin). Returned as a figure; the caller saves it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure


def density_figure(record: dict[str, Any], title: str = "") -> Figure:
    """record: feature_density.json's n_tokens, log10_edges, counts, n_dead."""
    edges, counts = np.asarray(record["log10_edges"]), np.asarray(record["counts"])
    fig = Figure(figsize=(6, 3.6), constrained_layout=True)  # no pyplot: no global state
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue",
           edgecolor="white", linewidth=0.3)
    for threshold in (-2, -1):
        ax.axvline(threshold, color="k", ls=":", lw=0.8)
    alive = int(counts.sum())
    ax.set(xlabel="log10 firing frequency (fraction of held-out tokens)", ylabel="features",
           xlim=(edges[0] - 0.1, 0.1))
    counted = f"{alive} features alive, {record['n_dead']} dead on {record['n_tokens']} tokens"
    ax.set_title(f"{title}\n{counted}" if title else counted, fontsize=10)
    return fig
