"""Adaptive IsoFLOP grid: which (F, steps) points to add after a pass, and why.

Pure: a runs table and the design in, a `Round` out (additions with their reasons, the
ones a compute cap dropped, and a stop reason). The sweep loop (sweeps/adaptive.py) trains
the additions and calls `next_round` again.

Per budget C of the design (docs/METHOD.md §2.4: loss is a parabola in log F at fixed C):
- edge: the best sampled width is the grid's smallest or largest, or the parabola's vertex
  lies outside the sampled widths -> add the next width beyond that edge, one grid spacing
  (the median gap between the design's log widths) further; two spacings when the vertex
  is more than one spacing out. Steps follow from the budget: S = C / (k F).
- poorly resolved: the vertex is bracketed but the two sampled widths around it are more
  than `max_gap_dex` apart, or the parabola's curvature is poorly determined (three widths
  fit it exactly; or its standard error exceeds `max_curvature_rel_se` of it) -> add the
  geometric mean of the two best widths.
Stop when nothing is flagged, when every addition would exceed the compute cap (never
exceeded), when max_rounds is reached, or when no budget is on an edge and the fitted
exponents' 95% intervals shrank by less than `min_shrink` (relative) since the last round.
Edge additions ignore the shrink test: an interval can be narrow and biased while a
minimum sits on the grid's edge (docs/METHOD.md §5.3: an edge-bound grid missed the plan by 16%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.isoflop import BUDGET_TOL_DEX, MIN_WIDTHS, assign_budgets
from sae_core.compute import compute_flops, steps_for_budget

# Exponents whose interval widths decide "stopped shrinking": the two the plan uses.
TRACKED_EXPONENTS = ("features_opt", "steps_opt")


@dataclass(frozen=True)
class AdaptiveSettings:
    max_rounds: int = 3
    compute_cap_flops: float | None = None  # total over every run of the sweep, added ones too
    min_shrink: float = 0.1  # stop when the intervals narrow by less than 10% in a round
    # A factor ~2.2 between the widths bracketing the vertex: the demo's 0.5 dex spacing
    # (sweeps/demo.yaml) is flagged, a factor-2 grid (0.3 dex) is not.
    max_gap_dex: float = 0.35
    max_curvature_rel_se: float = 0.5  # curvature known to worse than +-50%
    n_draws: int = 100  # bootstrap draws of each round's analysis


@dataclass(frozen=True)
class Design:
    """An IsoFLOP design: budgets x widths, k = 12 d_in batch_size_tokens (docs/METHOD.md §2.1)."""

    budgets_flops: tuple[float, ...]
    n_features: tuple[int, ...]
    flops_per_feature_step: float

    @property
    def spacing_dex(self) -> float:
        """The grid's spacing in log10 F: the median gap between adjacent design widths."""
        log_f = np.log10(np.unique(np.asarray(self.n_features, dtype=float)))
        return float(np.median(np.diff(log_f))) if len(log_f) > 1 else 0.3


@dataclass(frozen=True)
class Addition:
    n_features: int
    n_steps: int
    budget_flops: float
    reason: str
    kind: str  # "edge" or "resolution"

    def compute_flops(self, flops_per_feature_step: float) -> float:
        return compute_flops(self.n_features, self.n_steps, flops_per_feature_step)


@dataclass(frozen=True)
class Round:
    additions: list[Addition]
    stop: str  # '' while the loop should go on
    dropped: list[Addition] = field(default_factory=list)  # over the compute cap
    interval_widths: dict[str, float] = field(default_factory=dict)

    def log_record(self, round_index: int) -> dict[str, Any]:
        """JSON-ready record for adaptive_log.json."""
        def rows(items: list[Addition]) -> list[dict[str, Any]]:
            return [{"n_features": a.n_features, "n_steps": a.n_steps, "budget_flops": a.budget_flops,
                     "kind": a.kind, "reason": a.reason} for a in items]
        return {"round": round_index, "additions": rows(self.additions), "dropped": rows(self.dropped),
                "stop": self.stop, "interval_widths": self.interval_widths}


def _curvature_rel_se(log_f: np.ndarray, loss: np.ndarray) -> float:
    """Standard error of the parabola's x^2 coefficient over its value; inf with 3 widths."""
    if len(np.unique(log_f)) <= MIN_WIDTHS:
        return math.inf
    coef, cov = np.polyfit(log_f, loss, 2, cov=True)
    return float(np.sqrt(max(cov[0, 0], 0.0)) / abs(coef[0])) if coef[0] > 0 else math.inf


def _steps(budget: float, n_features: int, k: float) -> int:
    """S = C / (k F) rounded; 0 when F is too wide for one step at C (not added)."""
    return round(steps_for_budget(budget, n_features, k))


def budget_additions(
    log_f: np.ndarray, loss: np.ndarray, budget: float, design: Design, settings: AdaptiveSettings
) -> list[Addition]:
    """What to add at one budget. log_f, loss: [n_runs] log10 F and final loss of its runs."""
    k, spacing, where = design.flops_per_feature_step, design.spacing_dex, f"C={budget:.3g}"
    widths = np.unique(log_f)
    best_loss = [loss[log_f == x].mean() for x in widths]
    order = np.argsort(best_loss)
    best = widths[order[0]]

    def add(x: float, kind: str, reason: str) -> Addition:
        n = int(round(10**x))
        return Addition(n, _steps(budget, n, k), budget, f"{reason} at {where}", kind)

    c2 = np.nan
    x_v = np.nan
    if len(widths) >= MIN_WIDTHS:
        c2, c1, _ = np.polyfit(log_f, loss, 2)
        x_v = -c1 / (2 * c2) if c2 > 0 else np.nan
    hi, lo = widths.max(), widths.min()
    if best == hi or (np.isfinite(x_v) and x_v > hi):
        n_out = 2 if np.isfinite(x_v) and x_v - hi > spacing else 1
        why = f"minimum at the largest n_features ({10**hi:.0f})"
        return [add(hi + i * spacing, "edge", why) for i in range(1, n_out + 1)]
    if best == lo or (np.isfinite(x_v) and x_v < lo):
        n_out = 2 if np.isfinite(x_v) and lo - x_v > spacing else 1
        why = f"minimum at the smallest n_features ({10**lo:.0f})"
        return [add(lo - i * spacing, "edge", why) for i in range(1, n_out + 1)]
    if len(widths) < MIN_WIDTHS:  # the best is interior, so this cannot happen; kept for safety
        return []
    second = widths[order[1]]
    between = (best + second) / 2
    if not np.isfinite(x_v):
        return [add(between, "resolution", "loss vs log n_features opens downward")]
    below, above = widths[widths <= x_v].max(), widths[widths >= x_v].min()
    if above - below > settings.max_gap_dex:
        return [add(between, "resolution", f"vertex F={10**x_v:.0f} between widths "
                    f"{10**below:.0f} and {10**above:.0f}, {above - below:.2f} dex apart "
                    f"(> {settings.max_gap_dex})")]
    rel_se = _curvature_rel_se(log_f, loss)
    if rel_se > settings.max_curvature_rel_se:
        return [add(between, "resolution", f"curvature poorly determined (relative standard "
                    f"error {rel_se:.2g} > {settings.max_curvature_rel_se}, {len(widths)} widths)")]
    return []


def interval_widths(fits: dict[str, Any]) -> dict[str, float]:
    """Width of each tracked exponent's 95% interval in an analyze() result (NaN if none)."""
    out = {}
    for name in TRACKED_EXPONENTS:
        ci = (fits.get(name) or {}).get("exponent_ci95")
        out[name] = float(ci[1] - ci[0]) if ci else math.nan
    return out


def stopped_shrinking(previous: dict[str, float] | None, now: dict[str, float], min_shrink: float) -> bool:
    """True when no tracked interval narrowed by min_shrink (relative) since `previous`.
    False when either round has no intervals (its laws could not be fitted): untested."""
    if not previous or not now:
        return False
    for name, width in now.items():
        before = previous.get(name, math.nan)
        if not (np.isfinite(before) and np.isfinite(width)):
            return False  # an interval appearing or vanishing is a change
        if before > 0 and (before - width) / before >= min_shrink:
            return False
    return True


def next_round(
    runs: pd.DataFrame,
    design: Design,
    settings: AdaptiveSettings,
    fits: dict[str, Any] | None = None,
    previous: Round | None = None,
    round_index: int = 1,
    tol_dex: float = BUDGET_TOL_DEX,
) -> Round:
    """The additions of one adaptive round (round_index counts from 1), or why to stop.

    runs: columns n_features, compute_flops, loss (stage-1 runs of the sweep so far).
    fits: analyze() of those runs, for the interval-shrink test; previous: the last round's
    result. The test compares against the previous round only when that round added no
    edge points (an edge addition changes which budgets the fit trusts, not just its noise).
    """
    widths = interval_widths(fits) if fits is not None else {}
    if round_index > settings.max_rounds:
        return Round([], f"max_rounds={settings.max_rounds} reached", interval_widths=widths)
    label = assign_budgets(runs["compute_flops"], tol_dex, design.budgets_flops)
    proposed: list[Addition] = []
    for budget in design.budgets_flops:
        group = runs[label == budget]
        if len(group):
            log_f = np.log10(group["n_features"].to_numpy(dtype=float))
            proposed += budget_additions(log_f, group["loss"].to_numpy(dtype=float), budget,
                                         design, settings)
    sampled = {(round(b), int(f)) for b, f in zip(label, runs["n_features"], strict=True) if np.isfinite(b)}
    proposed = [a for a in proposed if (round(a.budget_flops), a.n_features) not in sampled
                and a.n_steps >= 1 and a.n_features >= 1]
    comparable = previous is not None and not any(a.kind == "edge" for a in previous.additions)
    if comparable and not any(a.kind == "edge" for a in proposed) and stopped_shrinking(
            previous.interval_widths if previous else None, widths, settings.min_shrink):
        return Round([], f"exponent intervals shrank by < {settings.min_shrink:.0%} since the "
                     "last round", interval_widths=widths)
    if not proposed:
        return Round([], "nothing flagged: every budget's minimum is inside and resolved",
                     interval_widths=widths)
    return _within_cap(proposed, float(runs["compute_flops"].sum()), design, settings, widths)


def _within_cap(proposed: list[Addition], spent_flops: float, design: Design,
                settings: AdaptiveSettings, widths: dict[str, float]) -> Round:
    """Edges first, then cheaper budgets first, while the total stays within the cap."""
    if settings.compute_cap_flops is None:
        return Round(proposed, "", interval_widths=widths)
    kept, dropped, total = [], [], spent_flops
    k = design.flops_per_feature_step
    for a in sorted(proposed, key=lambda a: (a.kind != "edge", a.budget_flops)):
        if total + a.compute_flops(k) <= settings.compute_cap_flops:
            kept.append(a)
            total += a.compute_flops(k)
        else:
            dropped.append(a)
    stop = "" if kept else (f"compute cap {settings.compute_cap_flops:.3g} FLOPs reached "
                            f"({spent_flops:.3g} spent)")
    return Round(kept, stop, dropped, widths)
