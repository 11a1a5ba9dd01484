"""The large run's plan from fits.json: F, steps and LR from the laws, with predicted loss.

docs/METHOD.md §2.3, stage 3: extrapolate the laws to the large run's budget and train it with
the predicted F, steps and LR. F and steps come from the parametric law's compute-optimal
allocation (F_opt = G (C/k)^a); the predicted loss carries a 95% prediction interval
(bootstrap draws of the law times the run-to-run scatter of a new run, scatter.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.bootstrap import interval, prediction_interval
from analysis.parametric import ParametricFit
from sae_core.compute import compute_flops as flops_of
from sae_core.compute import steps_for_budget
from sae_core.errors import UserError

PARAMETRIC_KEYS = ("E", "A", "B", "alpha", "beta")


def parametric_from_fits(fits: dict[str, Any]) -> ParametricFit:
    """The point fit stored in fits.json."""
    try:
        p = fits["parametric"]
        values = {k: float(p[k]["value"]) for k in PARAMETRIC_KEYS}
    except (KeyError, TypeError) as err:
        raise UserError(f"fits file has no parametric {err}: rerun `monoscale analyze`") from err
    return ParametricFit(
        E=values["E"], A=values["A"], B=values["B"], alpha=values["alpha"], beta=values["beta"],
        objective=float(p.get("objective", np.nan)), n_runs=int(fits.get("n_runs", 0)),
    )


def _drawn_losses(fits: dict[str, Any], n_features: int, n_steps: int) -> np.ndarray:
    """The loss each bootstrap draw's law predicts at (F, S): [n_draws], NaN where a draw
    has no law."""
    draws = fits.get("bootstrap", {}).get("draws", {})
    if not all(k in draws for k in PARAMETRIC_KEYS):
        return np.zeros(0)
    rows = zip(*(draws[k] for k in PARAMETRIC_KEYS), strict=True)
    out = []
    for e, a, b, alpha, beta in rows:
        if None in (e, a, b, alpha, beta):
            out.append(np.nan)
            continue
        law = ParametricFit(E=e, A=a, B=b, alpha=alpha, beta=beta, objective=np.nan, n_runs=0)
        out.append(float(law.predict(n_features, n_steps)))
    return np.array(out, dtype=float)


def _prediction_interval(fits: dict[str, Any], drawn: np.ndarray) -> list[float] | None:
    """95% PI of a new run from the draws: each with the scatter sd it was drawn with
    (run_scatter_sd); a fits.json from before that column combines every draw with every
    residual of the point fit."""
    boot = fits.get("bootstrap", {})
    sd = boot.get("draws", {}).get("run_scatter_sd")
    if sd is not None and len(sd) == len(drawn):
        return prediction_interval(drawn, np.array([np.nan if v is None else v for v in sd], dtype=float))
    residuals = np.asarray(boot.get("log_residuals", []), dtype=float)
    finite = drawn[np.isfinite(drawn)]
    if not (len(finite) and len(residuals)):
        return None
    return interval((finite[:, None] * np.exp(-residuals)[None, :]).ravel())


def round_features(n_features: float, power_of_two: bool) -> int:
    """Nearest power of 2 (in log), or the nearest multiple of 64 (matmul-friendly)."""
    if power_of_two:
        return int(2 ** round(np.log2(n_features)))
    return max(64, int(round(n_features / 64)) * 64)


def plan_run(
    fits: dict[str, Any],
    compute_flops: float | None = None,
    n_features: int | None = None,
    power_of_two: bool = False,
) -> dict[str, Any]:
    """n_features, n_steps, lr, compute_flops, predicted_loss (+ pi95, ci95) for one run.

    compute_flops alone: F at the compute-optimal allocation, rounded, and the steps that
    spend C. n_features alone: the steps at which that F is compute-optimal. Both: the
    steps that spend C at that F.
    """
    if compute_flops is None and n_features is None:
        raise UserError("plan needs --compute C or --features F")
    if (compute_flops is not None and not compute_flops > 0) or (n_features is not None and n_features < 1):
        raise UserError("plan needs a positive compute and feature count")
    k = float(fits["flops_per_feature_step"])
    law = parametric_from_fits(fits)
    if n_features is None:
        assert compute_flops is not None
        f_opt, _ = law.optimal_allocation(compute_flops, k)
        if not np.isfinite(f_opt):
            raise UserError(
                f"the fitted law has no compute-optimal width (alpha={law.alpha:.3g}, "
                f"beta={law.beta:.3g}): add runs that train longer or wider, or give --features"
            )
        n_features = round_features(float(f_opt), power_of_two)
    steps = (float(law.steps_for_features(n_features)) if compute_flops is None
             else steps_for_budget(compute_flops, n_features, k))
    if not np.isfinite(steps):
        raise UserError(
            f"the fitted law has no compute-optimal steps for F={n_features} (alpha={law.alpha:.3g}, "
            f"beta={law.beta:.3g}): add runs that train longer or wider, or give --compute"
        )
    n_steps = max(1, int(round(steps)))
    compute = flops_of(n_features, n_steps, k)
    lr, lr_source = fits.get("lr_stage1"), "stage-1 lr"
    if fits.get("lr_opt"):
        lr = float(fits["lr_opt"]["coefficient"] * compute ** fits["lr_opt"]["exponent"])
        lr_source = "LR law"
    drawn = _drawn_losses(fits, int(n_features), n_steps)
    top_budget = max((row["compute_flops"] for row in fits.get("frontier", [])), default=np.nan)
    plan: dict[str, Any] = {
        "n_features": int(n_features),
        "n_steps": n_steps,
        "lr": lr,
        "compute_flops": compute,
        "predicted_loss": float(law.predict(n_features, n_steps)),
        "predicted_loss_pi95": _prediction_interval(fits, drawn),
        "predicted_loss_ci95": interval(drawn) if len(drawn) else None,
        "lr_source": lr_source,
        "extrapolation_factor": compute / top_budget if np.isfinite(top_budget) else None,
    }
    plan["run_config"] = {
        "n_features": plan["n_features"], "n_steps": n_steps,
        **({"lr": lr} if lr is not None else {}),
        **{key: fits[key] for key in ("batch_size_tokens", "d_in") if fits.get(key)},
    }
    return plan


def is_planned_run(plan: dict[str, Any], runs: pd.DataFrame) -> pd.Series:
    """Which runs are the planned one: its n_features and n_steps, and its lr when both
    say (a replanned LR is another run)."""
    same = (runs["n_features"] == plan["n_features"]) & (runs["n_steps"] == plan["n_steps"])
    if plan.get("lr") is not None and "lr" in runs.columns:
        same &= np.isclose(runs["lr"].astype(float), float(plan["lr"]), rtol=1e-6)
    return same


def check_plan(plan: dict[str, Any], runs: pd.DataFrame) -> dict[str, Any] | None:
    """Predicted against achieved for the planned run, if the runs table holds it
    (same n_features and n_steps); None otherwise. docs/METHOD.md §2.3, stage 3."""
    match = runs[is_planned_run(plan, runs)]
    if match.empty:
        return None
    achieved = float(match["loss"].iloc[-1])
    pi = plan.get("predicted_loss_pi95")
    return {
        "n_features": plan["n_features"], "n_steps": plan["n_steps"],
        "predicted_loss": plan["predicted_loss"], "predicted_loss_pi95": pi,
        "achieved_loss": achieved,
        "relative_error": achieved / plan["predicted_loss"] - 1,
        "within_pi95": bool(pi[0] <= achieved <= pi[1]) if pi else None,
    }
