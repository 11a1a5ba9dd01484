"""`monoscale plan` and `monoscale plan-lr`: the large run from fitted laws, and the
stage-2 LR sweep at compute-optimal points (analysis/plan.py, analysis/plan_lr.py).

Either reads --fits written by `monoscale analyze`, or fits the runs itself as analyze does
(sweeps/analysis_commands.py). Heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from sae_core.errors import UserError
from sweeps.analysis_commands import (
    add_source,
    fit,
    largest_budget,
    load_runs,
    read_json,
    say_extrapolation,
)

_INT64_MAX = 2**63 - 1  # the trainer counts tokens in int64 tensors


def add_commands(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("plan", help="the large run's F, steps, LR and predicted loss")
    add_source(cmd, fits=True)
    group = cmd.add_argument_group("budget (one or both)")
    group.add_argument("--compute", type=float, metavar="C", help="compute budget in FLOPs")
    group.add_argument("--features", type=int, metavar="F", help="a fixed n_features")
    cmd.add_argument("--power-of-two", action="store_true", help="round n_features to a power of 2")
    cmd.add_argument("--max-l0", type=float, metavar="L", help="with --fits of an analysis of "
                     "several groups: the best group whose frontier runs have L0 <= L")
    cmd.add_argument("--out", required=True, metavar="PLAN.json")
    cmd.set_defaults(func=_plan)

    cmd = sub.add_parser("plan-lr", help="write the stage-2 LR sweep spec at compute-optimal points")
    add_source(cmd, fits=True)
    # dest n_budgets: without --fits, fit() reads args.budgets as analyze's IsoFLOP budgets
    cmd.add_argument("--budgets", type=int, default=3, metavar="K", dest="n_budgets",
                     help="number of budgets (default 3)")
    cmd.add_argument("--lr-span-dex", type=float, default=1.0, help="width of the LR grid in dex")
    cmd.add_argument("--n-lrs", type=int, default=5, help="LR grid points per budget")
    cmd.add_argument("--search-trials", type=int, metavar="N",
                     help="an Optuna TPE search over log LR (N trials) instead of the grid")
    cmd.add_argument("--refine", action="store_true", help="SPEC is a finished stage-2 LR "
                     "sweep and --fits its analysis: add a finer round of LRs around each "
                     "point's best (same sweep name: only the new runs train)")
    cmd.add_argument("--out", required=True, metavar="SPEC2.yaml")
    cmd.set_defaults(func=_plan_lr)


def _fits_or_analyze(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """(fits, SweepInfo | None): --fits (with SPEC for its cache and base), else analyze."""
    from analysis.groups import group_runs, label
    from sweeps import analysis_input as inputs

    if not args.fits:
        runs, sweep, _ = load_runs(args)
        groups = group_runs(runs)
        if len(groups) > 1:
            names = ", ".join(label(config) for config, _ in groups)
            raise UserError(f"the runs make {len(groups)} laws ({names}): run `monoscale "
                            "analyze --out DIR`, then pass --fits DIR (the best group at "
                            "--compute, within --max-l0) or --fits DIR/<group>/fits.json")
        return fit(args, runs, sweep), sweep
    if args.runs_csv:
        raise UserError("give --fits or --runs-csv, not both")
    path = Path(args.fits)
    fits = read_json(path / "fits.json" if path.is_dir() else path, "fits")
    return fits, inputs.load_sweep(args.spec) if args.spec else None


def _plan(args: argparse.Namespace) -> int:
    from analysis.outputs import write_text_atomic
    from analysis.plan import plan_run

    if args.compute is None and args.features is None:
        raise UserError("plan needs --compute C or --features F")
    comparison = _comparison_at(Path(args.fits)) if args.fits else None
    choice = None
    if comparison is not None:  # an analysis of several groups: pick one, then plan it
        from analysis.compare import choose

        if args.compute is None:
            raise UserError("choosing among the groups of an analysis needs --compute C")
        summary = read_json(comparison, "comparison")
        predictions = {}
        for g in summary["groups"]:
            try:
                group_fits = read_json(comparison.parent / g["group"] / "fits.json", "fits")
                group_plan = plan_run(group_fits, args.compute, args.features, args.power_of_two)
                predictions[g["group"]] = (group_plan["predicted_loss"],
                                           group_plan["predicted_loss_pi95"])
            except UserError as why:  # a group whose law cannot plan is not a choice
                print(f"{g['group']}: no plan ({why})")
        group, choice = choose(summary, predictions, args.max_l0)
        args.fits = str(comparison.parent / group["group"] / "fits.json")
        print(f"chose {choice}")
    elif args.max_l0 is not None:
        raise UserError("--max-l0 chooses among the groups of an analysis: give --fits the "
                        "analysis directory (with its comparison.json)")
    fits, sweep = _fits_or_analyze(args)
    plan = plan_run(fits, args.compute, args.features, args.power_of_two)
    _refuse_unrunnable(plan, fits)
    say_extrapolation("plan", plan["compute_flops"], fits, always=True)
    plan["metric"] = fits.get("metric", "loss")
    plan["run_config"].update(fits.get("group") or {})  # the group's arch, k, λ, ...
    if choice is not None:
        plan["choice"] = choice
    if sweep is not None:
        plan["sweep"] = sweep.name
        cache = dict(sweep.raw.get("cache") or {})
        if cache.get("path"):  # relative to the spec file: make it absolute
            cache["path"] = str((sweep.path.parent / cache["path"]).resolve())
        plan["cache"] = cache
        plan["run_config"] = {**sweep.raw.get("base", {}), **plan["run_config"]}
    text = json.dumps(plan, indent=2)
    write_text_atomic(args.out, text + "\n")
    print(text)
    return 0


def _comparison_at(path: Path) -> Path | None:
    """The comparison.json an analysis directory (or the file itself) holds, if any."""
    found = path / "comparison.json" if path.is_dir() else path
    return found if found.name == "comparison.json" and found.is_file() else None


def _refuse_unrunnable(plan: dict[str, Any], fits: dict[str, Any]) -> None:
    """A planned run whose token count overflows the trainer's int64 counters cannot
    train anywhere: refuse it before a PLAN.json exists."""
    batch = int(fits.get("batch_size_tokens") or 0)
    if batch and plan["n_steps"] * batch > _INT64_MAX:
        top = largest_budget(fits)
        beyond = f", {plan['compute_flops'] / top:.3g}x the largest budget swept" if top else ""
        raise UserError(f"the planned run (F={plan['n_features']}, {plan['n_steps']} steps of "
                        f"{batch} tokens, {plan['compute_flops']:.3g} FLOPs{beyond}) overflows "
                        "the trainer's 64-bit token count: no such run can train")


def _plan_lr(args: argparse.Namespace) -> int:
    import yaml

    from analysis.outputs import write_text_atomic
    from analysis.plan_lr import lr_refine_specs, lr_sweep_spec

    fits, sweep = _fits_or_analyze(args)
    raw = dict(sweep.raw) if sweep else None
    if raw and isinstance(raw.get("cache"), dict) and raw["cache"].get("path"):
        # The cache path is relative to the spec file; keep it right from the new file's folder.
        cache = dict(raw["cache"])
        absolute = (sweep.path.parent / cache["path"]).resolve()
        cache["path"] = os.path.relpath(absolute, Path(args.out).resolve().parent)
        raw["cache"] = cache
    if args.refine:
        if not (args.fits and raw):
            raise UserError("--refine needs the stage-2 SPEC and --fits of its analysis")
        specs = lr_refine_specs(fits, raw)
        if not specs:
            raise UserError("every point's LR optimum is already bracketed by its grid's "
                            "neighbours: nothing to refine")
    else:
        specs = [lr_sweep_spec(fits, args.n_budgets, raw, args.lr_span_dex, args.n_lrs,
                               args.search_trials)]
    out = Path(args.out)
    for i, spec in enumerate(specs):  # one spec per set of points that share their new LRs
        path = out if i == 0 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
        text = yaml.safe_dump(spec, sort_keys=False)
        write_text_atomic(path, text)
        print(f"# {path}\n{text}", end="")
    return 0
