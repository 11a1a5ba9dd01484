"""`monoscale analyze`: the analysis (analysis/) on a sweep's runs
(sweeps/analysis_input.py), and what `plan` and `plan-lr` (sweeps/plan_commands.py) share
with it: reading the runs, fitting them, reading JSON, saying how far a prediction reaches.

Runs whose configs differ in more than the law's axes are fitted as separate laws
(analysis/groups.py): `analyze` then writes one directory per group. Heavy modules
(pandas, scipy, matplotlib, mlflow) are imported inside the handlers so that `monoscale
--help` stays fast. Every output is written atomically (analysis/outputs.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae_core.errors import UserError

# How far past the largest budget swept a prediction is trusted without a warning. The
# plans checked against their achieved loss here were at 4x (README, Measured: +1.8%,
# inside the interval, with an IsoFLOP design; docs/METHOD.md §5.3: -16%, outside it,
# with a factorial one). Past a decade beyond the data nothing here backs the law.
EXTRAPOLATION_WARN = 10.0


def add_commands(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("analyze", help="fit the scaling laws of a sweep's runs: fits.json + plots")
    add_source(cmd)
    cmd.add_argument("--lr-spec", metavar="SPEC2", help="also read this stage-2 (LR) sweep's runs")
    cmd.add_argument("--lr-runs-csv", metavar="FILE", help="stage-2 (LR) runs as CSV")
    cmd.add_argument("--out", required=True, metavar="DIR", help="writes DIR/fits.json and plots")
    cmd.add_argument("--draws", type=int, default=200, help="bootstrap draws (default 200)")
    cmd.add_argument("--target-compute", type=float, metavar="C",
                     help="compute of the predicted run (default 10x the largest budget)")
    cmd.add_argument("--budgets", type=float, nargs="+", metavar="C",
                     help="IsoFLOP budgets in FLOPs (default: the spec's isoflop budgets, else "
                     "runs grouped by compute)")
    cmd.add_argument("--budget-tol-dex", type=float, default=0.05,
                     help="runs within this many dex of compute form one IsoFLOP budget")
    cmd.add_argument("--lr-band", type=float, metavar="REL",
                     help="fit the LR law to every run within REL of its point's best loss")
    cmd.add_argument("--batch-size-tokens", type=int, help="for a CSV without that column")
    cmd.add_argument("--d-in", type=int, help="for a CSV without that column")
    cmd.add_argument("--no-attach", action="store_true", help="do not log the results to MLflow")
    cmd.add_argument("--plan", metavar="PLAN.json", help="report predicted against achieved loss "
                     "for this planned run (its run is left out of the fits)")
    cmd.add_argument("--metric", help="fit the laws to this logged metric (default: the "
                     "paper's loss for ReLU SAEs, normalized_mse when other architectures run)")
    cmd.set_defaults(func=_analyze)


def add_source(cmd: argparse.ArgumentParser, fits: bool = False) -> None:
    cmd.add_argument("spec", nargs="?", metavar="SPEC", help="sweep spec: its runs are read from MLflow")
    cmd.add_argument("--runs-csv", metavar="FILE", help="runs table as CSV instead of MLflow")
    if fits:
        cmd.add_argument("--fits", metavar="FITS.json", help="fits written by `monoscale analyze`")
    cmd.add_argument("--storage", metavar="DIR", help="sweep storage dir (default .monoscale)")
    cmd.add_argument("--tracking-uri", metavar="URI", help="MLflow URI (default sqlite:///<storage>/mlflow.db)")


def load_runs(args: argparse.Namespace) -> tuple[Any, Any, str | None]:
    """(runs DataFrame, SweepInfo | None, tracking URI | None) from SPEC or --runs-csv."""
    import pandas as pd

    from sweeps import analysis_input as inputs

    if bool(args.spec) == bool(args.runs_csv):
        raise UserError("give a sweep SPEC or --runs-csv FILE (one of them)")
    if args.runs_csv:
        runs, sweep, uri = inputs.read_csv(args.runs_csv), None, None
    else:
        sweep = inputs.load_sweep(args.spec)
        uri = inputs.tracking_uri(args.storage, args.tracking_uri)
        runs = inputs.read_sweep_runs(sweep.name, uri)
    extra = []
    if getattr(args, "lr_runs_csv", None):
        extra.append(inputs.read_csv(args.lr_runs_csv))
    if getattr(args, "lr_spec", None):
        lr_uri = uri or inputs.tracking_uri(args.storage, args.tracking_uri)
        extra.append(inputs.read_sweep_runs(inputs.load_sweep(args.lr_spec).name, lr_uri))
    if extra:
        runs = pd.concat([runs, *extra], ignore_index=True)
    return inputs.distinct_runs(runs), sweep, uri


def fit(args: argparse.Namespace, runs: Any, sweep: Any, n_draws: int = 200) -> dict[str, Any]:
    from analysis.report import analyze
    from sweeps.analysis_input import shared_value

    batch = getattr(args, "batch_size_tokens", None) or shared_value(runs, "batch_size_tokens") or (
        sweep.batch_size_tokens if sweep else None)
    d_in = getattr(args, "d_in", None) or shared_value(runs, "d_in")
    return analyze(
        runs, batch_size_tokens=batch, d_in=d_in, n_draws=n_draws,
        target_compute_flops=getattr(args, "target_compute", None),
        tol_dex=getattr(args, "budget_tol_dex", 0.05),
        budgets=getattr(args, "budgets", None) or (sweep.budgets if sweep else None),
        lr_band=getattr(args, "lr_band", None),
    )


def _analyze(args: argparse.Namespace) -> int:
    from analysis import compare, compare_plots, plots
    from analysis.groups import choose_metric, group_runs, label, with_metric
    from analysis.outputs import write_analysis_dir
    from analysis.report import format_summary, prepare_runs
    from sweeps.analysis_input import shared_value

    if args.draws < 0:
        raise UserError(f"--draws must be >= 0, got {args.draws}")
    runs, sweep, uri = load_runs(args)
    metric, why = choose_metric(runs, args.metric)
    _check_falling(metric)
    runs = with_metric(runs, metric)
    planned = planned_row = None
    if args.plan:
        planned, runs, planned_row = _check_plan(Path(args.plan), runs, sweep, uri, metric)
    groups = group_runs(runs)
    d_in = shared_value(runs, "d_in")
    names = [label(config, d_in) for config, _ in groups]
    print(f"metric: {metric} ({why})")
    if len(groups) > 1:
        chosen = dict.fromkeys(part.split("=")[0] for name in names for part in name.split(","))
        print(f"runs differ in {', '.join(chosen)}: {len(groups)} laws, fitted apart "
              "(one directory each, compared in comparison.json)")
    parts: dict[str, Any] = {}
    lines, summaries, runs_by_group = [], [], {}
    for (config, members), name in zip(groups, names, strict=True):
        fits = fit(args, members, sweep, args.draws)
        fits.update(group=config, metric=metric, metric_reason=why)
        say_extrapolation("the prediction", fits["prediction"]["compute_flops"], fits)
        if planned is not None and planned_row is not None and all(
                planned_row.get(k) == v for k, v in config.items()):
            fits["planned_run"] = planned
        prepared = prepare_runs(members, fits["batch_size_tokens"])
        parts[name] = ({"fits.json": fits}, plots.all_figures(prepared, fits))
        lines += ([f"== {name} ({len(members)} runs)"] if name else []) + [format_summary(fits)]
        summaries.append(compare.summary(name, config, fits, prepared))
        runs_by_group[name] = prepared
    if len(groups) > 1:
        comparison = compare.compare(summaries, runs_by_group, args.draws)
        parts[""] = ({"comparison.json": _json_safe(comparison)},
                     compare_plots.all_figures(comparison, runs_by_group))
        lines.append(format_comparison(comparison))
    out = write_analysis_dir(args.out, parts)
    print("\n".join(lines))
    n_plots = sum(len(figures) for _, figures in parts.values())
    where = f"{out}/fits.json" if len(groups) == 1 else f"{len(groups)} directories in {out}"
    print(f"wrote {where} and {n_plots} plots (PNG + SVG)")
    if sweep is not None and uri is not None and not args.no_attach:
        _attach(uri, sweep.name, out, {name: docs["fits.json"] for name, (docs, _) in
                                       parts.items() if "fits.json" in docs},
                planned, Path(args.plan) if args.plan else None)
    return 0


def _attach(uri: str, sweep: str, out: Path, fits_by_group: dict[str, Any],
            planned: dict[str, Any] | None, plan_path: Path | None) -> None:
    """The analysis as artifacts of the sweep's parent run, its laws (and the planned
    run's outcome) in the words of the sweep's MLflow pages."""
    from sweeps import tracking
    from sweeps.descriptions import laws_text, plan_text

    target = tracking.find_sweep(uri, sweep)
    if target is None:
        return
    tracking.attach(uri, target.parent_run_id, out, "analysis")
    tracking.describe(target, "laws", laws_text(fits_by_group))
    if planned is not None and plan_path is not None:
        text = plan_text(read_json(plan_path, "plan"), planned)
        tracking.describe(target, "plan", text)
        plan_target = tracking.find_sweep(uri, f"{sweep}-plan")
        if plan_target is not None:
            tracking.describe(plan_target, "plan", text)
    print(f"attached to MLflow run {target.parent_run_id} (artifacts/analysis)")


def _check_falling(metric: str) -> None:
    """The laws are a metric falling as a power law in compute: refuse one that rises
    with quality (sae_core/metrics.py), naming its falling twin where one is logged."""
    from sae_core.metrics import RISING_METRICS

    if metric in RISING_METRICS:
        twin = RISING_METRICS[metric]
        instead = (f": fit --metric {twin} (= 1 - {metric}) instead" if twin else
                   ": fit a metric that falls as the SAE improves")
        raise UserError(f"{metric} rises with quality, and the laws fit a metric that "
                        f"falls with compute{instead}")


def _json_safe(obj: Any) -> Any:
    from analysis.report import to_json_safe

    return to_json_safe(obj)


def format_comparison(comparison: dict[str, Any]) -> str:
    """The comparison in a few lines: per group its L0, exponents, and the least compute."""
    lines = [f"== comparison on {comparison['metric']}"]
    for g in comparison["groups"]:
        f_opt, law = g["features_opt"] or {}, g["loss_vs_compute"]
        ci = f_opt.get("exponent_ci95")
        lines.append(f"{g['group']}: L0 {_g(g['l0'])}, frontier {comparison['metric']} ∝ "
                     f"C^{_g(law.get('exponent'))}, F_opt ∝ C^{_g(f_opt.get('exponent'))}"
                     + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""))
    for row in comparison["least_compute"]:
        lines.append(f"to reach {comparison['metric']} {row['metric_value']:.4g}: "
                     f"least compute {row['least_compute_group']} ("
                     + ", ".join(f"{g} {_g(c)}{'' if g in row['within_sweep'] else '*'}"
                                 for g, c in row["compute_flops"].items())
                     + "; * extrapolated beyond its sweep)")
    for arch, law in comparison["joint_laws"].items():
        lines.append(f"joint law {arch}: " + (law.get("not_fitted") or ", ".join(
            f"{n}={law[n]['value']:.3g}" for n in ("alpha", "beta_k", "beta_n", "gamma",
                                                   "zeta", "eta"))))
    return "\n".join(lines)


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _check_plan(path: Path, runs: Any, sweep: Any, uri: str | None, metric: str = "loss"
                ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(predicted-vs-achieved report, runs without the planned run, the planned run's
    row). The planned run is looked for among the runs, then in the sweep `<name>-plan`
    that `submit --plan` fills."""
    import pandas as pd

    from analysis.plan import check_plan, is_planned_run

    plan = read_json(path, "plan")
    planned_metric = plan.get("metric", "loss")
    if planned_metric != metric:
        raise UserError(f"{path} predicts {planned_metric}, this analysis fits {metric}: "
                        f"pass --metric {planned_metric} to check the planned run")
    candidates = runs
    if sweep is not None and uri is not None:
        from sweeps.analysis_input import read_sweep_runs

        try:
            from analysis.groups import with_metric

            planned_sweep = with_metric(read_sweep_runs(f"{sweep.name}-plan", uri), metric)
            candidates = pd.concat([runs, planned_sweep], ignore_index=True)
        except UserError:
            pass  # not trained yet: reported below
    report = check_plan(plan, candidates) if {"n_features", "n_steps"} <= set(runs.columns) else None
    if report is None:
        raise UserError(f"no run with n_features={plan.get('n_features')} and n_steps="
                        f"{plan.get('n_steps')} among the runs: train the plan first "
                        "(monoscale submit SPEC --plan PLAN.json)")
    row = candidates[is_planned_run(plan, candidates)].iloc[-1].to_dict()
    report["metric"] = metric  # predicted_loss and achieved_loss are of this metric
    return report, runs[~is_planned_run(plan, runs)], row


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no {what} file at {path}")
    from sae_core.input_files import load_json

    data = load_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def largest_budget(fits: dict[str, Any]) -> float | None:
    budgets = [row["compute_flops"] for row in fits.get("frontier", [])]
    return max(budgets) if budgets else None


def say_extrapolation(what: str, compute_flops: float, fits: dict[str, Any],
                       always: bool = False) -> None:
    """How far `compute_flops` lies beyond the runs, on stderr; a warning past
    EXTRAPOLATION_WARN."""
    import sys

    top = largest_budget(fits)
    if top is None:
        return
    factor = compute_flops / top
    # Runs within budget_tol_dex of each other are one budget: so is the largest one.
    beyond = factor > EXTRAPOLATION_WARN * 10 ** float(fits.get("budget_tol_dex") or 0.0)
    if not (beyond or always):
        return
    line = (f"{what}: {compute_flops:.3g} FLOPs is {factor:.3g}x the largest budget swept "
            f"({top:.3g} FLOPs)")
    if beyond:
        line = (f"warning: {line}; past {EXTRAPOLATION_WARN:g}x no prediction here was "
                "checked against a trained run (4x was), so its interval is optimistic")
    print(line, file=sys.stderr)
