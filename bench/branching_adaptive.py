"""The demo's stage-1 grid three ways in one run, on the MiniLM cache.

    python bench/branching_adaptive.py              # ~20 min on 2 cores; prints ONE JSON line
    python bench/branching_adaptive.py --cache DIR  # an existing MiniLM cache (else built)

1. independent: sweeps/demo.yaml with `branching: false`, every (F, steps) point trained
   alone on the paper's schedule.
2. branched: the same grid with `branching: true`: each width's runs at the four budgets
   are one family (a trunk and forks, sae_core/branching.py).
3. branched + adaptive: the grid cut short on one side (only the widths below every
   budget's optimum in the independent fit: CUT_WIDTHS), `branching: true` and
   `adaptive: true`: the rounds must find the optimum the cut left out.

Each way is its own sweep in one temporary MLflow store, through `sweeps.driver.submit`
(`sweeps.adaptive.run_adaptive` for the third) on a local Ray. Per way: the FLOPs spent
(sum of `compute_flops_spent` over its finished runs: a branch pays its decay only), the
wall time, and analysis.report.analyze's exponents of F_opt(C) and S_opt(C) with their
95% bootstrap intervals, each budget's IsoFLOP optimum and edge flags, and the plan the
demo would make from it (F, steps and loss at 4x the top budget).

4. seeds: the two widths nearest the top budget's optimum, independent, seeds 1 and 2,
   for the seed-to-seed spread that a branched run's loss is held against.

Targets: branched FLOPs <= 0.65 of independent with its exponents inside the
independent fit's intervals; the adaptive sweep ends with every budget's minimum inside
its widths and its F_opt(C) exponent inside the independent fit's interval. Reported
beside them: each branched run's final loss against its independent twin, and whether
the difference is within the seed spread. The wall times come from one shared 2-core
machine: compare them within one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing


from analysis.adaptive import AdaptiveSettings  # noqa: E402
from analysis.report import analyze  # noqa: E402
from sweeps import tracking  # noqa: E402
from sweeps.adaptive import run_adaptive  # noqa: E402
from sweeps.analysis_input import read_sweep_runs  # noqa: E402
from sweeps.cache_setup import planned_d_in  # noqa: E402
from sweeps.driver import Where, submit  # noqa: E402
from sweeps.spec import CacheSpec, IsoflopSpec, SweepSpec, load_spec  # noqa: E402

DEMO = REPO / "sweeps" / "demo.yaml"
# The demo's widths are 256, 813, 2580, 8192; the independent fits here put every budget's
# optimum between 813 and 2580 (demo-results: 953 at 1.2e12 to 2144 at 4.8e12), so the
# two smallest alone leave every minimum on the grid's upper edge.
CUT_WIDTHS = (256, 813)
SEEDED_WIDTHS = (813, 2580)  # the two nearest the top budget's optimum (2144 there)
TARGET_FLOPS_RATIO = 0.65
EXPONENTS = ("features_opt", "steps_opt")
PLAN_AT = 4  # x the top budget, as `monoscale demo` plans its large run


def spent_flops(where: Where, sweep: str) -> float:
    """What the sweep's finished runs cost: compute_flops_spent (their compute_flops when a
    run logged none)."""
    target = tracking.find_sweep(where.tracking_uri, sweep)
    assert target is not None
    total = 0.0
    for run in tracking.child_runs(target):
        if run.status == "FINISHED":
            params = run.params
            total += float(params.get("compute_flops_spent", params["compute_flops"]))
    return total


def fit(where: Where, spec: SweepSpec, d_in: int, n_draws: int) -> dict[str, Any]:
    """The exponents with their intervals and each budget's IsoFLOP optimum."""
    runs = read_sweep_runs(spec.name, where.tracking_uri)
    budgets = list(spec.isoflop.compute_flops) if spec.isoflop else None
    target = PLAN_AT * max(budgets) if budgets else None
    fits = analyze(runs, spec.batch_size_tokens, d_in, n_draws=n_draws, budgets=budgets,
                   target_compute_flops=target)
    plan = fits["prediction"]
    return {
        "n_runs": int(len(runs)),
        # what the demo would plan from this stage 1: F, steps and loss at PLAN_AT x top
        "plan": {key: {"value": round(plan[key]["value"], 1),
                       "ci95": [round(x, 1) for x in plan[key]["ci95"]]}
                 for key in ("n_features_opt", "n_steps_opt", "loss")},
        **{name: {"exponent": round(fits[name]["exponent"], 4),
                  "ci95": [round(x, 4) for x in fits[name]["exponent_ci95"]]}
           for name in EXPONENTS},
        "isoflop_opt": [{"compute_flops": row["compute_flops"], "n_widths": row["n_widths"],
                         "n_features_opt": round(row["n_features_opt"], 1),
                         "loss_opt": round(row["loss_opt"], 3), "edge": row["edge"]}
                        for row in fits["isoflop"]],
        "edge_flags": fits["edge_flags"],
    }


def run_way(name: str, spec: SweepSpec, where: Where, d_in: int, n_draws: int) -> dict[str, Any]:
    print(f"\n== {name}: {spec.name}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
        if spec.adaptive is not None:
            status = run_adaptive(spec, spec.adaptive, where)
        else:
            status = submit(spec, where)
    wall_s = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{name}: the sweep did not finish every point (exit {status})")
    return {"flops": spent_flops(where, spec.name), "wall_s": round(wall_s, 1),
            **fit(where, spec, d_in, n_draws)}


def losses(where: Where, sweep: str) -> dict[tuple[int, int, int], float]:
    """(F, steps, seed) -> final held-out loss of the sweep's finished runs."""
    runs = read_sweep_runs(sweep, where.tracking_uri)
    return {(int(r.n_features), int(r.n_steps), int(r.seed)): float(r.loss)
            for r in runs.itertuples()}


def loss_comparison(where: Where, ways: dict[str, SweepSpec], seeds: SweepSpec
                    ) -> dict[str, Any]:
    """Each branched run against its independent twin (seed 0), and the seed spread
    (max - min over seeds 0, 1, 2, relative to the mean) at the seeded points."""
    ind = losses(where, ways["independent"].name)
    br = losses(where, ways["branched"].name)
    diff = {(f, t): br[(f, t, seed)] / loss - 1 for (f, t, seed), loss in sorted(ind.items())}
    pairs = [{"n_features": f, "n_steps": t, "independent": round(ind[(f, t, 0)], 3),
              "branched": round(br[(f, t, 0)], 3), "rel_diff": round(rel, 5)}
             for (f, t), rel in diff.items()]
    by_point: dict[tuple[int, int], list[float]] = {}
    for (f, t, _), loss in sorted({**ind, **losses(where, seeds.name)}.items()):
        by_point.setdefault((f, t), []).append(loss)
    spread_rel = {point: (max(v) - min(v)) / (sum(v) / len(v))
                  for point, v in by_point.items() if len(v) > 1}
    spread = [{"n_features": f, "n_steps": t, "losses": [round(x, 3) for x in by_point[(f, t)]],
               "spread_rel": round(rel, 5)} for (f, t), rel in spread_rel.items()]
    within = all(abs(diff[point]) <= rel for point, rel in spread_rel.items())
    return {"branched_vs_independent": pairs, "seed_spread": spread,
            "branched_within_seed_spread": within}


def inside(value: float, ci: list[float]) -> bool:
    return ci[0] <= value <= ci[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="an existing MiniLM cache (default: the "
                        "demo's, built when missing)")
    parser.add_argument("--draws", type=int, default=200, help="bootstrap draws per fit")
    parser.add_argument("--storage", type=Path, help="keep the MLflow store here (default: "
                        "a temporary directory, removed)")
    args = parser.parse_args()
    demo = load_spec(DEMO)
    if args.cache:
        demo = replace(demo, cache=CacheSpec(args.cache.resolve(), demo.cache.build))
    assert demo.isoflop is not None
    cut = IsoflopSpec(demo.isoflop.compute_flops, CUT_WIDTHS)
    ways = {
        "independent": replace(demo, name="bench-independent", branching=False),
        "branched": replace(demo, name="bench-branched", branching=True),
        "branched_adaptive": replace(demo, name="bench-adaptive", branching=True, isoflop=cut,
                                     adaptive=AdaptiveSettings(n_draws=100)),
    }
    root = args.storage or Path(tempfile.mkdtemp(prefix="monoscale-bench-"))
    load_1min = os.getloadavg()[0]
    try:
        where = Where.resolve(str(root), None)
        d_in = planned_d_in(demo)
        results = {name: run_way(name, spec, where, d_in, args.draws)
                   for name, spec in ways.items()}
        top = max(demo.isoflop.compute_flops)
        seeded = [p for p in demo.size_pairs(d_in) if p[0] in SEEDED_WIDTHS
                  and abs(12 * d_in * demo.batch_size_tokens * p[0] * p[1] / top - 1) < 0.01]
        seeds = replace(demo, name="bench-seeds", isoflop=None, sizes=tuple(seeded),
                        axes=(("seed", (1, 2)),), branching=False)
        print("\n== seeds: bench-seeds", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):
            if submit(seeds, where) != 0:
                raise SystemExit("seeds: the sweep did not finish every point")
        comparison = loss_comparison(where, ways, seeds)
    finally:
        if args.storage is None:
            shutil.rmtree(root, ignore_errors=True)
    ind, br, ad = results["independent"], results["branched"], results["branched_adaptive"]
    ratio = br["flops"] / ind["flops"]
    branched_inside = {name: inside(br[name]["exponent"], ind[name]["ci95"]) for name in EXPONENTS}
    adaptive_inside = inside(ad["features_opt"]["exponent"], ind["features_opt"]["ci95"])
    adaptive_interior = not ad["edge_flags"] and all(not row["edge"] for row in ad["isoflop_opt"])
    print(json.dumps({
        "bench": "branching_adaptive",
        "grid": {"compute_flops": list(demo.isoflop.compute_flops),
                 "n_features": list(demo.isoflop.n_features), "cut_n_features": list(CUT_WIDTHS),
                 "batch_size_tokens": demo.batch_size_tokens, "d_in": d_in,
                 "lr": demo.base.get("lr")},
        "independent": ind, "branched": br, "branched_adaptive": ad,
        "branched_flops_ratio": round(ratio, 4),
        "adaptive_flops_ratio": round(ad["flops"] / ind["flops"], 4),
        "target_flops_ratio": TARGET_FLOPS_RATIO,
        "branched_exponents_inside_independent_ci": branched_inside,
        "adaptive_all_minima_interior": adaptive_interior,
        "adaptive_features_exponent_inside_independent_ci": adaptive_inside,
        "meets_target": (ratio <= TARGET_FLOPS_RATIO and all(branched_inside.values())
                         and adaptive_interior and adaptive_inside),
        **comparison,
        "load_1min_at_start": round(load_1min, 2),
    }), flush=True)


if __name__ == "__main__":
    main()
