"""How far does a plan hold? Predicted against achieved at 4x, 8x and 16x the top budget.

    python bench/extrapolation.py [--storage DIR] [--multiples 4 8 16] [--draws 200] [--no-refine]

Runs the demo's stages 1 and 2 (sweeps/demo.yaml, then the stage-2 LR sweep that
`monoscale plan-lr` writes and its refining round, as `monoscale demo` does; finished
runs in --storage are not run again, and a store that holds refining runs lends them to
--no-refine too: give that a store of its own), fits them, then for each multiple X plans
the run at X times the largest stage-1 budget (`monoscale plan --compute`), trains it
(`monoscale submit --plan`) and reads predicted against achieved (`monoscale analyze
--plan`). One JSON line: per multiple the plan (F, steps, LR), the predicted loss with its
95% PI, the achieved loss, the relative error and whether it fell inside; and the target
(every plan inside its interval and within 2% of its prediction).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from sweeps.cli import main as monoscale
from sweeps.demo import DEMO_SPEC, refining_round

TARGET_REL_ERROR = 0.02


def run(*argv: str) -> None:
    """One monoscale command, its printout on stderr: stdout is the bench's JSON line."""
    print(f"$ monoscale {' '.join(argv)}", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):
        code = monoscale(list(argv))
    if code != 0:
        raise SystemExit(f"monoscale {argv[0]} exited {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=".monoscale-extrapolation")
    parser.add_argument("--out", default="extrapolation-results")
    parser.add_argument("--spec", default=str(DEMO_SPEC))
    parser.add_argument("--multiples", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--plan-lr", nargs="*", default=["--budgets=3", "--lr-span-dex=2",
                                                         "--n-lrs=5"],
                        help="the stage-2 design: plan-lr's flags (default: the demo's)")
    parser.add_argument("--no-refine", dest="refine", action="store_false",
                        help="stage 2 without its refining round (the demo runs one)")
    args = parser.parse_args()
    started = time.perf_counter()
    out, where = Path(args.out).resolve(), [f"--storage={args.storage}"]
    out.mkdir(parents=True, exist_ok=True)
    lr_spec, fits = out / "stage2.yaml", out / "stage2" / "fits.json"
    run("submit", args.spec, *where)
    run("analyze", args.spec, *where, f"--draws={args.draws}", "--no-attach",
        f"--out={out / 'stage1'}")
    run("plan-lr", args.spec, *where, f"--fits={out / 'stage1' / 'fits.json'}", *args.plan_lr,
        f"--out={lr_spec}")
    run("submit", str(lr_spec), *where)
    if args.refine:  # as the demo does (sweeps/demo.py)
        run("analyze", args.spec, f"--lr-spec={lr_spec}", *where, f"--draws={args.draws}",
            "--no-attach", f"--out={out / 'stage2-round1'}")
        refining_round(lambda argv: run(*argv), lr_spec, out / "stage2-round1" / "fits.json",
                       out / "stage2-refine.yaml", where)
    run("analyze", args.spec, f"--lr-spec={lr_spec}", *where, f"--draws={args.draws}",
        "--no-attach", f"--out={out / 'stage2'}")
    stage2 = json.loads(fits.read_text())
    top = max(row["compute_flops"] for row in stage2["isoflop"] or stage2["frontier"])
    rows: list[dict[str, Any]] = []
    for multiple in args.multiples:
        plan = out / f"plan-{multiple:g}x.json"
        run("plan", args.spec, *where, f"--fits={fits}", f"--compute={multiple * top:.6g}",
            f"--out={plan}")
        run("submit", args.spec, f"--plan={plan}", *where)
        check = out / f"checked-{multiple:g}x"
        run("analyze", args.spec, f"--lr-spec={lr_spec}", f"--plan={plan}", *where,
            "--draws=0", "--no-attach", f"--out={check}")
        planned = json.loads(plan.read_text())
        report = json.loads((check / "fits.json").read_text())["planned_run"]
        rows.append({
            "multiple": multiple, "compute_flops": planned["compute_flops"],
            "n_features": planned["n_features"], "n_steps": planned["n_steps"],
            "lr": planned["lr"], "lr_source": planned.get("lr_source"),
            "n_tokens": planned["n_steps"] * stage2["batch_size_tokens"],
            "predicted_loss": planned["predicted_loss"],
            "predicted_loss_pi95": planned["predicted_loss_pi95"],
            "achieved_loss": report["achieved_loss"],
            "relative_error": round(report["relative_error"], 4),
            "within_pi95": report["within_pi95"],
        })
    print(json.dumps({
        "bench": "extrapolation", "spec": args.spec, "plan_lr": args.plan_lr, "refine": args.refine,
        "top_budget_flops": top, "lr_opt": stage2.get("lr_opt"),
        "features_opt": stage2.get("features_opt"), "runs": rows,
        "target": {"within_pi95": True, "max_abs_relative_error": TARGET_REL_ERROR},
        "meets_target": all(r["within_pi95"] and abs(r["relative_error"]) <= TARGET_REL_ERROR
                            for r in rows),
        "wall_s": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
