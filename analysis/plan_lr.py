"""The stage-2 sweep spec: an LR sweep at the compute-optimal (F, steps) of K budgets.

docs/METHOD.md §2.3, stage 2. The spec has the shape of docs/CONTRACTS.md: explicit
`points` (crossed with the other axes) and `grid: {lr: [...]}`, a log grid around the
stage-1 LR.

A second, refining round (`lr_refine_specs`): from the fits of the first, each point gets
the two LRs half a grid step either side of its best sampled LR (so its window holds 5
runs, 2 of them new: enough for the budgets' shared LR curve, lr_shape.py, with residual
degrees of freedom for the interval), or, where the best is on the grid's edge, half a step and a step beyond it.
The demo's stage 2 (3 points x 5 LRs over 2 decades) then costs 21 runs at the same
points: 1.4x. Proposed command: `monoscale plan-lr LR_SPEC --refine FITS --out SPEC2`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.lr_law import MIN_LRS
from analysis.plan import parametric_from_fits
from sae_core.compute import steps_for_budget
from sae_core.errors import UserError

LR_SPAN_DEX = 1.0  # the grid spans 10x around the stage-1 LR: 10^(-0.5) .. 10^(+0.5)
N_LRS = 5  # odd, so the stage-1 LR itself is a grid point (and joins stage 1's fit)
# Keys of the stage-1 spec carried over; its grid, points and isoflop are replaced.
CARRIED = ("cache", "resources", "max_concurrent_trials")


def lr_sweep_spec(
    fits: dict[str, Any],
    n_budgets: int,
    stage1_spec: dict[str, Any] | None = None,
    lr_span_dex: float = LR_SPAN_DEX,
    n_lrs: int = N_LRS,
    search_trials: int | None = None,
) -> dict[str, Any]:
    """A sweep-spec dict: K budgets log-spaced over the stage-1 budgets' compute range.

    With search_trials, an Optuna TPE search over log LR in the same range replaces the
    grid (the sweep spec's `search:` key; sweeps/spec.py).
    """
    if n_budgets < 2:
        raise UserError(f"an LR law needs at least 2 budgets, got --budgets {n_budgets}")
    lr0 = fits.get("lr_stage1") or (stage1_spec or {}).get("base", {}).get("lr")
    if not lr0:
        raise UserError("no stage-1 learning rate in the fits or the spec's base: cannot centre the LR grid")
    compute = [row["compute_flops"] for row in fits.get("isoflop") or fits.get("frontier", [])]
    if len(set(compute)) < 2:
        raise UserError(f"fits hold {len(set(compute))} compute budget(s): an LR law needs "
                        "points at 2 or more; fit a stage 1 with several budgets")
    law, k = parametric_from_fits(fits), float(fits["flops_per_feature_step"])
    budgets = np.geomspace(min(compute), max(compute), n_budgets)
    f_opt, _ = law.optimal_allocation(budgets, k)
    if not np.isfinite(f_opt).all():
        raise UserError(f"the fitted law has no compute-optimal width (alpha={law.alpha:.3g}, "
                        f"beta={law.beta:.3g}): add runs that train longer or wider")
    points = []
    for c, f in zip(budgets, f_opt, strict=True):
        n_features = max(1, int(round(f)))
        n_steps = max(1, round(steps_for_budget(c, n_features, k)))
        points.append({"n_features": n_features, "n_steps": n_steps})
    lrs = lr0 * np.logspace(-lr_span_dex / 2, lr_span_dex / 2, n_lrs)
    spec: dict[str, Any] = {"name": f"{(stage1_spec or {}).get('name', 'sweep')}-lr", "stage": 2}
    spec.update({key: stage1_spec[key] for key in CARRIED if stage1_spec and key in stage1_spec})
    base = dict((stage1_spec or {}).get("base", {}))
    for key in ("n_features", "n_steps", "lr"):
        base.pop(key, None)
    if base:
        spec["base"] = base
    spec["points"] = points
    if search_trials:
        spec["search"] = {"axis": "lr", "range": [float(f"{lrs[0]:.4g}"), float(f"{lrs[-1]:.4g}")],
                          "n_trials": int(search_trials)}
    else:
        # the centre stays exact: it is stage 1's lr, and its runs join stage 1's fit
        # (analysis/laws.py matches lr to 1e-9)
        spec["grid"] = {"lr": [float(lr0) if i * 2 + 1 == n_lrs else float(f"{lr:.4g}")
                               for i, lr in enumerate(lrs)]}
    return spec


def refine_lrs(row: dict[str, Any], step_dex: float) -> list[float]:
    """The LRs a refining round adds at one point (a row of fits["lr_optima"]), given the
    first round's grid step in dex: best x 10^(+-step/2); at an edge, half a step and a
    step beyond it (and half a step inside)."""
    best, half = float(row["lr_best"]), step_dex / 2
    if "largest lr" in (row.get("edge") or ""):
        offsets = [-half, half, 2 * half]
    elif "smallest lr" in (row.get("edge") or ""):
        offsets = [-2 * half, -half, half]
    else:
        offsets = [-half, half]
    return [float(f"{best * 10**o:.4g}") for o in offsets]


def lr_refine_specs(fits: dict[str, Any], lr_spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Sweep specs of the refining round of the LR sweep `lr_spec` (its YAML as a dict),
    from `fits` of stages 1 and 2 (fits["lr_optima"]).

    Each spec keeps lr_spec's name, so its runs join that sweep (`analyze --lr-spec`
    reads them with the first round's; finished points are not rerun) and holds the first
    round's LRs plus the new ones, at the points that share the same new LRs: one spec
    when every point's best sampled LR is the same grid LR (the demo's case), else one per
    group (a spec crosses every point with every LR).
    """
    optima = fits.get("lr_optima") or []
    grid = sorted(float(lr) for lr in (lr_spec.get("grid") or {}).get("lr", []))
    if not optima or len(grid) < MIN_LRS:
        raise UserError("refine needs the fits of a finished LR sweep (fits.json with lr_optima) "
                        f"and that sweep's spec with a grid of >= {MIN_LRS} lr values")
    step = float(np.median(np.diff(np.log10(grid))))
    groups: dict[tuple[float, ...], list[dict[str, int]]] = {}
    for row in optima:
        new = tuple(lr for lr in refine_lrs(row, step) if not np.isclose(grid, lr, rtol=1e-3).any())
        point = {"n_features": int(row["n_features"]), "n_steps": int(row["n_steps"])}
        groups.setdefault(new, []).append(point)
    carried = {k: v for k, v in lr_spec.items() if k not in ("points", "grid", "isoflop", "search")}
    return [{**carried, "points": points, "grid": {"lr": sorted([*grid, *new])}}
            for new, points in groups.items() if new]
