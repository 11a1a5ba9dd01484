"""`monoscale demo`: the whole method on the embedded default, as the commands a user types.

    1. submit sweeps/demo.yaml          builds the MiniLM cache, stage 1: F x steps (IsoFLOP)
    2. analyze                          frontier, IsoFLOP parabolas, parametric law
    3. plan-lr --budgets 3              stage 2 spec: an LR grid at compute-optimal (F, steps)
    4. submit <stage-2 spec>
    5. analyze --lr-spec                adds the LR law (window parabolas)
       plan-lr <stage-2 spec> --refine  two more LRs a budget around its best (1.4x stage 2)
       submit <refining spec>; analyze --lr-spec   the budgets' shared LR curve
    6. plan --compute 4 x top budget    the large run: F, steps, LR, predicted loss + 95% PI
    7. submit --plan                    trains it
    8. analyze --plan                   predicted against achieved

Every step is idempotent (finished grid points are never rerun), so an interrupted demo
picks up where it stopped when run again.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sae_core.errors import UserError

DEMO_SPEC = Path(__file__).with_name("demo.yaml")
# docs/METHOD.md §5.3: the plan at 4x the top stage-1 budget landed within its interval.
EXTRAPOLATION = 4.0


def add_command(sub: argparse._SubParsersAction, run: Callable[[Sequence[str]], int]) -> None:
    """Register `demo`; `run` runs one monoscale command line (sweeps/cli.py's main)."""
    demo = sub.add_parser(
        "demo",
        help="the whole method on the embedded MiniLM default: stage 1, fits, stage 2 (LR), "
        "plan, the planned run, predicted against achieved",
    )
    demo.add_argument("--storage", metavar="DIR", help="MLflow store, Tune experiments and "
                      "run outputs (default: ./.monoscale)")
    demo.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI")
    demo.add_argument("--address", help="join this Ray cluster instead of starting one")
    demo.add_argument("--out", default="demo-results", metavar="DIR",
                      help="fits, plots, the stage-2 spec and the plan (default: demo-results)")
    demo.add_argument("--spec", default=str(DEMO_SPEC), help="stage-1 spec (default: the demo's)")
    demo.add_argument("--extrapolate", type=float, default=EXTRAPOLATION, metavar="X",
                      help="plan the large run at X times the top stage-1 budget (default 4)")
    demo.add_argument("--draws", type=int, default=200, help="bootstrap draws per analysis")
    demo.set_defaults(func=functools.partial(run_demo, run=run))


def refining_round(run_one: Callable[[list[str]], None], lr_spec: str | Path, fits: Path,
                   out: Path, where: list[str], ray: Sequence[str] = ()) -> int:
    """Plan the refining round of the LR sweep lr_spec from its fits (`plan-lr --refine`,
    specs written to out, out-2, ...) and submit each spec; the number of specs, 0 (and
    nothing run) when every point's optimum is already bracketed by its grid's neighbours."""
    import yaml

    from analysis.plan_lr import lr_refine_specs

    n_specs = len(lr_refine_specs(json.loads(fits.read_text()), yaml.safe_load(Path(lr_spec).read_text())))
    if n_specs:
        run_one(["plan-lr", str(lr_spec), *where, "--refine", f"--fits={fits}", f"--out={out}"])
    for i in range(n_specs):  # the names plan-lr gives them
        path = out if i == 0 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
        run_one(["submit", str(path), *where, *ray])
    return n_specs


def run_demo(args: argparse.Namespace, run: Callable[[Sequence[str]], int]) -> int:
    from cluster.local import ray_session

    if not args.extrapolate > 0:
        raise UserError(f"--extrapolate must be positive, got {args.extrapolate}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    where = [f"--storage={args.storage}"] if args.storage else []
    where += [f"--tracking-uri={args.tracking_uri}"] if args.tracking_uri else []
    ray = [f"--address={args.address}"] if args.address else []
    spec, lr_spec, plan = args.spec, str(out / "demo-lr.yaml"), str(out / "plan.json")
    draws = [f"--draws={args.draws}"]
    started = time.monotonic()

    def step(title: str, argv: list[str]) -> None:
        print(f"\n== monoscale demo: {title}\n   monoscale {' '.join(argv)}", flush=True)
        code = run(argv)
        if code != 0:
            raise SystemExit(code)

    step("stage 1, features x steps at a fixed LR", ["submit", spec, *where, *ray])
    # The cache exists now: the later submits share one Ray instead of each starting and
    # stopping its own (~2.5 s each on 2 cores, bench/orchestration_overhead.py).
    with ray_session(args.address):
        step("fit stage 1", ["analyze", spec, *where, *draws, f"--out={out / 'stage1'}"])
        # Two decades around the stage-1 LR: with one decade (1e-3 x 10^±0.5) the first demo
        # found the best LR on the grid's top edge at every budget.
        step("plan stage 2", ["plan-lr", spec, *where, f"--fits={out / 'stage1' / 'fits.json'}",
                              "--budgets=3", "--lr-span-dex=2", "--n-lrs=5", f"--out={lr_spec}"])
        step("stage 2, LR at compute-optimal (F, steps)", ["submit", lr_spec, *where, *ray])
        step("fit stages 1 and 2", ["analyze", spec, f"--lr-spec={lr_spec}", *where, *draws,
                                    f"--out={out / 'stage2-round1'}"])
        # A finer round narrows the LR law and lets the budgets share one LR curve: on the
        # demo's stages the LR exponent's interval went from 0.31 wide to 0.049, and plans
        # at 4x-16x landed +1.0%/+0.7%/+0.4% against +1.6%/+1.7%/+1.9% (README).
        refining_round(lambda argv: step("stage 2, the refining round", argv), lr_spec,
                       out / "stage2-round1" / "fits.json", out / "demo-lr-refine.yaml", where, ray)
        step("fit stages 1 and 2 with the refining round",
             ["analyze", spec, f"--lr-spec={lr_spec}", *where, *draws, f"--out={out / 'stage2'}"])
        fits = json.loads((out / "stage2" / "fits.json").read_text())
        top_budget = max(row["compute_flops"] for row in fits["isoflop"] or fits["frontier"])
        compute = args.extrapolate * top_budget
        step(f"plan the large run at {args.extrapolate:g}x the top budget",
             ["plan", spec, *where, f"--fits={out / 'stage2' / 'fits.json'}",
              f"--compute={compute:.6g}", f"--out={plan}"])
        step("train the planned run", ["submit", spec, f"--plan={plan}", *where, *ray])
        step("predicted against achieved", ["analyze", spec, f"--lr-spec={lr_spec}",
                                            f"--plan={plan}", *where, *draws,
                                            f"--out={out / 'final'}"])
    minutes = (time.monotonic() - started) / 60
    print(f"\nmonoscale demo: done in {minutes:.1f} min; fits, plots and plan in {out}")
    return 0
