"""The stage-2 sweep spec: an LR sweep at the compute-optimal (F, steps) of K budgets.

METHOD.md s2, stage 2. The spec has the shape of docs/CONTRACTS.md: explicit `points`
(crossed with the other axes) and `grid: {lr: [...]}`, a log grid around the stage-1 LR.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
