"""analyze(): a runs table (docs/CONTRACTS.md) in, the content of fits.json out.

    parametric        E, A, B, alpha, beta, a: {value, ci95}; objective
    loss_vs_compute   frontier loss L(C) = irreducible + coefficient C^exponent
    features_opt      F_opt(C) = coefficient C^exponent    (IsoFLOP minima, else parametric)
    steps_opt         steps_opt(C) = coefficient C^exponent
                      each of these three: source ("isoflop" or "parametric"), source_reason,
                      budgets_flops (the IsoFLOP budgets used; [] for parametric)
    lr_opt            LR_opt(C) = coefficient C^exponent    (only with an LR stage)
    prediction        F_opt, steps_opt, LR_opt and loss (ci95, pi95) at target_compute_flops
    lr_gaps           per LR point: how far (log loss) stage 1's LR sat above its optimum;
                      stage-1 losses are moved down by it before every fit (best_lr.py)
    edge_flags, isoflop, lr_optima, n_runs, bootstrap (draws for `plan`)
    frontier          Pareto frontier: runs no cheaper run beats
    frontier_per_budget  the lowest-loss run of each compute budget
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.bootstrap import (
    N_DRAWS,
    RESAMPLED,
    design_points,
    fixed_design_draws,
    interval,
    prediction_interval,
)
from analysis.frontier import budget_frontier, pareto_frontier
from analysis.isoflop import BUDGET_TOL_DEX, assign_budgets
from analysis.laws import Laws, allocation_source, derived, fit_laws, split_stages
from analysis.lr_law import WINDOW_DEX
from analysis.lr_shape import SHAPE_WINDOW_DEX
from analysis.parametric import HUBER_DELTA, residuals, single_threaded_blas
from sae_core.compute import flops_per_feature_step as flops_per_feature_step_of
from sae_core.errors import UserError

REQUIRED = ("n_features", "compute_flops", "loss")
FRONTIER_COLUMNS = ["compute_flops", "loss", "n_features", "n_steps"]
TARGET_MULTIPLE = 10.0  # default prediction: 10x the largest budget swept


def prepare_runs(runs: pd.DataFrame, batch_size_tokens: int | None = None) -> pd.DataFrame:
    """Check the runs table (docs/CONTRACTS.md) and give it an n_steps column."""
    missing = [c for c in REQUIRED if c not in runs.columns]
    if "n_steps" not in runs.columns and "n_tokens" not in runs.columns:
        missing.append("n_steps (or n_tokens)")
    if missing:
        raise UserError(f"runs table is missing column(s): {', '.join(missing)}")
    if len(runs) == 0:
        raise UserError("runs table is empty: run the sweep first")
    out = runs.copy()
    if "n_steps" not in out.columns:  # S = tokens / batch; with no batch, k absorbs it
        batch = batch_size_tokens or (out["batch_size_tokens"] if "batch_size_tokens" in out else 1)
        out["n_steps"] = out["n_tokens"] / batch
    for col in ("n_features", "n_steps", "compute_flops", "loss"):
        values = pd.to_numeric(out[col], errors="coerce")
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            raise UserError(
                f"{int(bad.sum())} run(s) have a missing, NaN or non-positive {col} "
                f"(first at row {int(np.flatnonzero(bad)[0])}): drop or rerun them"
            )
        out[col] = values.astype(float)
    return out.reset_index(drop=True)


def flops_per_feature_step(runs: pd.DataFrame, batch_size_tokens: int | None, d_in: int | None) -> float:
    """k in C = k F S: 12 d batch for an SAE (docs/METHOD.md §2.1), else inferred from the table."""
    if batch_size_tokens and d_in:
        return flops_per_feature_step_of(d_in, batch_size_tokens)
    return float(np.median(runs["compute_flops"] / (runs["n_features"] * runs["n_steps"])))


def _value(point: float, draws: pd.Series | None) -> dict[str, Any]:
    return {"value": point, "ci95": interval(draws) if draws is not None else None}


def _law(coef: float, exponent: float, draws: pd.DataFrame, name: str, source: str) -> dict[str, Any]:
    return {"coefficient": coef, "exponent": exponent, "source": source,
            "exponent_ci95": interval(draws[name]) if name in draws else None}


def edge_flags(laws: Laws, tol_dex: float) -> list[str]:
    """Every budget or LR point whose optimum the grid does not bracket, and a missing
    IsoFLOP design, each saying what to add."""
    flags = [e for e in laws.isoflop["edge"] if e]
    if len(laws.isoflop) < 2:
        flags.append(
            f"IsoFLOP needs >= 2 budgets with >= 3 distinct n_features each (within {tol_dex} dex), "
            f"got {len(laws.isoflop)}: add widths at fixed compute budgets"
        )
    if laws.lr_optima is not None:
        flags += [e for e in laws.lr_optima["edge"] if e]
        if laws.lr_law is None:
            flags.append(f"LR law needs >= 2 compute budgets with >= 3 learning rates each and "
                         f"the optimum inside them, got {len(laws.lr_points)} of "
                         f"{len(laws.lr_optima)}: run `monoscale plan-lr` with --budgets >= 2, "
                         "or refine the flagged ones")
    return flags


def _allocation_laws(laws: Laws, point: dict[str, float], draws: pd.DataFrame) -> dict[str, Any]:
    """features_opt, steps_opt and loss_vs_compute: each from the IsoFLOP vertices of the
    interior budgets, else from the parametric law (laws.py), saying which and why."""
    _, reason = allocation_source(laws.isoflop)
    where = {"source": laws.allocation_source, "source_reason": reason,
             "budgets_flops": list(laws.allocation_budgets)}
    out = {key: {**_law(point[f"{name}_coefficient"], point[f"{name}_exponent"], draws,
                        f"{name}_exponent", ""), **where}
           for key, name in (("features_opt", "features"), ("steps_opt", "steps"),
                             ("loss_vs_compute", "loss"))}
    out["loss_vs_compute"]["irreducible"] = _value(point["loss_irreducible"], draws.get("loss_irreducible"))
    return out


def analyze(
    runs: pd.DataFrame,
    batch_size_tokens: int | None = None,
    d_in: int | None = None,
    n_draws: int = N_DRAWS,
    target_compute_flops: float | None = None,
    tol_dex: float = BUDGET_TOL_DEX,
    budgets: list[float] | None = None,
    lr_band: float | None = None,
    seed: int = 0,
    starts: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit every law with 95% bootstrap intervals; returns the fits.json content."""
    with single_threaded_blas():
        return _analyze(runs, batch_size_tokens, d_in, n_draws, target_compute_flops, tol_dex,
                        budgets, lr_band, seed, starts)


def _analyze(
    runs: pd.DataFrame, batch_size_tokens: int | None, d_in: int | None, n_draws: int,
    target_compute_flops: float | None, tol_dex: float, budgets: list[float] | None,
    lr_band: float | None, seed: int, starts: np.ndarray | None,
) -> dict[str, Any]:
    runs = prepare_runs(runs, batch_size_tokens)
    stage1, lr_runs, lr_stage1 = split_stages(runs)
    if stage1["n_features"].nunique() < 2:
        raise UserError(
            f"every stage-1 run has n_features={stage1['n_features'].iloc[0]:g}: the laws need "
            "at least 2 (and IsoFLOP >= 3 per budget) distinct n_features"
        )
    k = flops_per_feature_step(runs, batch_size_tokens, d_in)
    target = target_compute_flops or TARGET_MULTIPLE * float(stage1["compute_flops"].max())
    laws = fit_laws(stage1, lr_runs, k, tol_dex, budgets, lr_band, starts)
    at_best = laws.at_best_lr(stage1)
    point = derived(laws, k, target)

    draws, scatter, lr_scatter = fixed_design_draws(stage1, lr_runs, laws, point, k, target, tol_dex,
                                                    budgets, lr_band, n_draws, seed)
    p, iso = laws.parametric, laws.isoflop
    fits: dict[str, Any] = {
        "n_runs": len(runs), "n_runs_stage1": len(stage1), "n_runs_lr": len(lr_runs),
        "flops_per_feature_step": k, "batch_size_tokens": batch_size_tokens, "d_in": d_in,
        "lr_stage1": lr_stage1, "budget_tol_dex": tol_dex, "budgets": budgets,
        "parametric": {
            **{name: _value(point[name], draws.get(name)) for name in ("E", "A", "B", "alpha", "beta", "a")},
            "objective": p.objective, "huber_delta": HUBER_DELTA, "G": p.G,
        },
        **_allocation_laws(laws, point, draws),
        "prediction": {
            "compute_flops": target,
            "n_features_opt": _value(point["target_n_features"], draws.get("target_n_features")),
            "n_steps_opt": _value(point["target_n_steps"], draws.get("target_n_steps")),
            "loss": {**_value(point["target_loss"], draws.get("target_loss")),
                     "pi95": prediction_interval(draws.get("target_loss", pd.Series(dtype=float)),
                                                 draws.get("run_scatter_sd", pd.Series(dtype=float)))},
        },
        "edge_flags": edge_flags(laws, tol_dex),
        "isoflop": iso.to_dict("records"),
        "frontier": pareto_frontier(stage1)[FRONTIER_COLUMNS].to_dict("records"),
        "frontier_per_budget": budget_frontier(
            stage1, assign_budgets(stage1["compute_flops"], tol_dex, budgets)
        )[["budget_flops", *FRONTIER_COLUMNS]].to_dict("records"),
        "bootstrap": {
            "n_draws": n_draws, "seed": seed, "n_failed": int(draws.isna().all(axis=1).sum()),
            "resampled": RESAMPLED,
            "draws": {c: draws[c].tolist() for c in draws.columns},
            "log_residuals": residuals(p, at_best["n_features"], at_best["n_steps"], at_best["loss"]).tolist(),
            # log-loss sd of a run about the law: its design point's (u) and its seed's (e)
            "run_scatter": {"design_point_sd": scatter.point_sd, "design_point_df": scatter.point_df,
                            "seed_sd": scatter.seed_sd, "seed_df": scatter.seed_df,
                            "n_replicated_points": int((stage1.groupby(design_points(stage1)).size() > 1).sum())},
            "lr_scatter": lr_scatter,
        },
    }
    if laws.lr_law is not None and laws.lr_optima is not None:
        fits["lr_opt"] = {
            **_law(point["lr_coefficient"], point["lr_exponent"], draws, "lr_exponent",
                   "near-optimal band" if lr_band else _lr_method(laws.lr_optima)),
            "points": [{"n_features": f, "n_steps": s} for f, s in laws.lr_points],
        }
        fits["lr_optima"] = laws.lr_optima.to_dict("records")
        fits["lr_gaps"] = [{"compute_flops": c, "log_loss_gap": g} for c, g in laws.lr_gaps]
        fits["prediction"]["lr_opt"] = _value(point["target_lr"], draws.get("target_lr"))
    return to_json_safe(fits)


def _lr_method(optima: pd.DataFrame) -> str:
    if (optima.loc[optima["edge"] == "", "curve"] == "shared").all():
        return (f"one curve shared by the points, shifted and scaled per point (log loss rising c |d|^p "
                f"below and above the optimum; runs within {SHAPE_WINDOW_DEX} dex of each best)")
    return f"window parabola (log loss in log10 lr, within {WINDOW_DEX} dex of the best)"


def format_summary(fits: dict[str, Any]) -> str:
    """A few lines for the terminal: the laws and the prediction."""
    p, pred = fits["parametric"], fits["prediction"]
    lines = [
        f"runs: {fits['n_runs']}  parametric: E={p['E']['value']:.4g} A={p['A']['value']:.4g} "
        f"B={p['B']['value']:.4g} alpha={p['alpha']['value']:.4f} {_ci(p['alpha']['ci95'])} "
        f"beta={p['beta']['value']:.4f} {_ci(p['beta']['ci95'])}",
    ]
    for key in ("features_opt", "steps_opt", "loss_vs_compute", "lr_opt"):
        if fits.get(key) and fits[key].get("exponent") is not None \
                and fits[key].get("coefficient") is not None:
            law = fits[key]
            lines.append(f"{key}: {law['coefficient']:.4g} * C^{law['exponent']:.4f} "
                         f"(exponent 95% CI {_ci(law['exponent_ci95'])}; {law.get('source', '?')})")
    if fits.get("lr_gaps"):
        gaps = ", ".join(f"{100 * g['log_loss_gap']:.1f}% at {g['compute_flops']:.2g}"
                         for g in fits["lr_gaps"])
        lines.append(f"stage-1 losses moved to the best LR before the fits (stage 1's LR "
                     f"{fits['lr_stage1']:.3g} above each LR point's optimum, in log loss: {gaps})")
    if fits.get("features_opt", {}).get("source_reason"):
        law = fits["features_opt"]
        lines.append(f"F_opt, steps_opt and frontier loss from {law['source']}: {law['source_reason']}")
    lines.append(
        f"at C={pred['compute_flops']:.3g}: F_opt={_num(pred['n_features_opt']['value'])} "
        f"steps_opt={_num(pred['n_steps_opt']['value'])} loss={_num(pred['loss']['value'])} "
        f"(95% PI {_ci(pred['loss']['pi95'])})"
    )
    if pred["n_features_opt"]["value"] is None:
        lines.append(f"NO OPTIMUM: the fitted law has no compute-optimal width (alpha="
                     f"{p['alpha']['value']:.3g}, beta={p['beta']['value']:.3g}): add runs "
                     "that train longer or wider")
    lines += [f"EDGE: {flag}" for flag in fits["edge_flags"]]
    if fits.get("planned_run"):
        r = fits["planned_run"]
        lines.append(f"planned run F={r['n_features']} steps={r['n_steps']}: predicted "
                     f"{r['predicted_loss']:.4g} (95% PI {_ci(r['predicted_loss_pi95'])}), achieved "
                     f"{r['achieved_loss']:.4g} ({r['relative_error']:+.1%}; within PI: {r['within_pi95']})")
    return "\n".join(lines)


def _ci(interval_: list[float] | None) -> str:
    if not interval_ or None in interval_:
        return "n/a"
    return f"[{interval_[0]:.4g}, {interval_[1]:.4g}]"


def _num(value: float | None) -> str:
    """A value of fits.json, where None stands for NaN (no such number)."""
    return "n/a" if value is None else f"{value:.4g}"


def to_json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (json.dump writes NaN)."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
