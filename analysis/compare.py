"""Architectures and sparsity settings side by side: which reaches a metric at the least
compute, how each allocates compute, and which run to plan under an L0 budget.

Each group (analysis/groups.py: one architecture at one sparsity setting) has its own
fits; this module reads them, never refits across groups, and compares only groups fitted
on the same metric. Gao et al.'s joint law in (F, k) (analysis/joint_law.py) is fitted
per architecture across its values of k.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.joint_law import fit_joint_law
from sae_core.errors import UserError

N_TARGETS = 5  # metric values at which the least compute is reported


def frontier_l0(runs: pd.DataFrame, fits: dict[str, Any]) -> float | None:
    """Median held-out L0 of the group's frontier runs (None when runs log no l0)."""
    if "l0" not in runs.columns or not fits.get("frontier"):
        return None
    front = pd.DataFrame(fits["frontier"])[["n_features", "n_steps"]]
    merged = runs.merge(front, on=["n_features", "n_steps"])
    return float(merged["l0"].median()) if len(merged) else None


def summary(label: str, config: dict[str, Any], fits: dict[str, Any], runs: pd.DataFrame
            ) -> dict[str, Any]:
    """What the comparison needs of one group's fits and runs."""
    arch = config.get("arch") or (str(runs["arch"].iloc[0]) if "arch" in runs else "relu")

    def law(key: str) -> dict[str, Any] | None:
        found = fits.get(key) or {}
        return {k: found.get(k) for k in ("coefficient", "exponent", "exponent_ci95",
                                          "source")} if found else None

    irreducible = ((fits.get("loss_vs_compute") or {}).get("irreducible") or {}).get("value")
    return {
        "group": label, "config": config, "arch": arch, "metric": fits.get("metric", "loss"),
        "n_runs": fits.get("n_runs"), "l0": frontier_l0(runs, fits),
        "loss_vs_compute": {**(law("loss_vs_compute") or {}), "irreducible": irreducible},
        "features_opt": law("features_opt"), "steps_opt": law("steps_opt"),
        "frontier": fits.get("frontier", []),
    }


def compute_to_reach(law: dict[str, Any], target: float) -> float | None:
    """C at which L(C) = E + A C^c reaches `target` (None if it never does)."""
    e, a, c = law.get("irreducible"), law.get("coefficient"), law.get("exponent")
    if None in (e, a, c) or not (target > e and a > 0 and c < 0):  # type: ignore[operator]
        return None
    return float(((target - e) / a) ** (1 / c))  # type: ignore[operator]


def predicted(law: dict[str, Any], compute: float) -> float | None:
    e, a, c = law.get("irreducible"), law.get("coefficient"), law.get("exponent")
    return None if None in (e, a, c) else float(e + a * compute**c)  # type: ignore[operator]


def compare(summaries: list[dict[str, Any]], runs_by_group: dict[str, pd.DataFrame],
            n_draws: int = 200) -> dict[str, Any]:
    """comparison.json: the groups; for N_TARGETS metric values across the frontiers, the
    compute each group's frontier law needs to reach it (`within_sweep` names the groups
    that reached it in the sweep; for the others it is the law's extrapolation) and the
    group that needs least; a joint law per architecture with >= 2 values of k."""
    metrics = {s["metric"] for s in summaries}
    if len(metrics) != 1:
        raise UserError(f"groups fitted on different metrics ({sorted(metrics)}) cannot be "
                        "compared: pass one --metric")
    ranges = {s["group"]: (min(p["loss"] for p in s["frontier"]),
                           max(p["loss"] for p in s["frontier"])) for s in summaries
              if s["frontier"]}
    targets: list[float] = []
    if ranges:  # the metric values the frontiers span, all of them together
        low = min(lo for lo, _ in ranges.values())
        high = max(hi for _, hi in ranges.values())
        targets = [float(t) for t in np.geomspace(low, high, N_TARGETS)] if low < high else []
    least = []
    for target in targets:
        need = {s["group"]: compute_to_reach(s["loss_vs_compute"], target) for s in summaries}
        known = {g: c for g, c in need.items() if c is not None}
        # a group reaches the value inside its sweep, or only on its law's extrapolation
        inside = [g for g, (lo, hi) in ranges.items() if lo <= target <= hi]
        least.append({"metric_value": target, "compute_flops": need,
                      "within_sweep": inside,
                      "least_compute_group": min(known, key=known.__getitem__) if known else None})
    return {"metric": metrics.pop(), "groups": summaries, "least_compute": least,
            "joint_laws": _joint_laws(summaries, runs_by_group, n_draws)}


def _joint_laws(summaries: list[dict[str, Any]], runs_by_group: dict[str, pd.DataFrame],
                n_draws: int) -> dict[str, Any]:
    """arch -> Gao's L(n, k) over its groups that differ in k (or why it was not fitted)."""
    out: dict[str, Any] = {}
    by_arch: dict[str, list[str]] = {}
    for s in summaries:
        if "k" in s["config"] or s["arch"] in ("topk", "batchtopk", "matryoshka_batchtopk"):
            by_arch.setdefault(s["arch"], []).append(s["group"])
    for arch, groups in by_arch.items():
        runs = pd.concat([runs_by_group[g] for g in groups], ignore_index=True)
        if "k" not in runs.columns or runs["k"].nunique() < 2:
            continue
        try:
            out[arch] = fit_joint_law(runs, n_draws)
        except UserError as err:
            out[arch] = {"not_fitted": str(err)}
    return out


def choose(comparison: dict[str, Any], predictions: dict[str, tuple[float, list[float] | None]],
           max_l0: float | None) -> tuple[dict[str, Any], str]:
    """Among the groups whose frontier runs' L0 is at most max_l0, the one with the lowest
    prediction, and why. predictions: group name -> (the metric its plan predicts, from its
    parametric law at the planned F and steps, and that prediction's 95% PI)."""
    metric = comparison["metric"]
    eligible = [s for s in comparison["groups"]
                if max_l0 is None or (s["l0"] is not None and s["l0"] <= max_l0)]
    scored = [(p[0], p[1], s) for s in eligible
              if (p := predictions.get(s["group"])) is not None and math.isfinite(p[0])]
    if not scored:
        raise UserError(f"no group has L0 <= {max_l0} and a fitted law: "
                        + ", ".join(f"{s['group']} (L0 {s['l0']})" for s in comparison["groups"]))
    best_p, best_pi, best = min(scored, key=lambda scored_group: scored_group[0])
    others = [(p, s) for p, _, s in scored if s is not best]
    why = (f"{best['group']}: its plan predicts {metric} {best_p:.4g} with L0 {best['l0']:.3g}"
           + (" (the others' plans: " + "; ".join(f"{s['group']} {p:.4g}" for p, s in others)
              + ")" if others else ""))
    close = [s["group"] for p, s in others if best_pi and best_pi[0] <= p <= best_pi[1]]
    if close:
        why += f"; {', '.join(close)} inside its 95% PI: the sweep does not separate them"
    return best, why + (f"; L0 <= {max_l0:g}" if max_l0 is not None else "")
