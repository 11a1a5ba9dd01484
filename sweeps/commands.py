"""`monoscale submit | resume | status | ui`: sweeps from the command line.

Heavy imports (ray, mlflow, torch) happen inside the handlers, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    for name, help_text in (
        ("submit", "run a sweep spec on Ray Tune, every run logged in MLflow"),
        ("resume", "run what a sweep has not finished (the same as submitting it again)"),
    ):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("spec", help="sweep spec YAML (e.g. sweeps/smoke.yaml)")
        _where(cmd)
        cmd.add_argument("--address", help="join this Ray cluster (HOST:PORT, auto or "
                         "ray://HOST:PORT) instead of starting Ray locally")
        if name == "submit":
            cmd.add_argument("--dry-run", action="store_true",
                             help="print the grid points and their compute; run nothing")
        cmd.add_argument("--plan", metavar="PLAN.json", help="train the run that `monoscale "
                         "plan --out` wrote (sweep <name>-plan, stage 3) with SPEC's cache")
        cmd.set_defaults(func=_submit)

    status = sub.add_parser("status", help="a sweep's grid points, states and final losses")
    status.add_argument("spec")
    _where(status)
    status.set_defaults(func=_status)

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over a sweep's store")
    ui.add_argument("spec", nargs="?", help="sweep spec (for its experiment's address)")
    _where(ui)
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_ui)


def _where(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--storage", metavar="DIR", help="where the MLflow store, Tune "
                     "experiments and run outputs live (default: ./.monoscale)")
    cmd.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: "
                     "sqlite:///<storage>/mlflow.db)")


def _submit(args: argparse.Namespace) -> int:
    from sweeps.driver import Where, format_table, submit
    from sweeps.preflight import preflight
    from sweeps.spec import load_spec

    spec = load_spec(args.spec)
    where = Where.resolve(args.storage, args.tracking_uri)
    parent_tags = None
    if getattr(args, "plan", None):
        from sweeps.planned_run import planned_sweep

        spec, parent_tags = planned_sweep(spec, Path(args.plan))
    if getattr(args, "dry_run", False):
        configs = preflight(spec, where.tracking_uri, where.storage_dir,
                            args.address)  # submit's checks
        print(format_table(configs))
        total = sum(c.compute_flops for c in configs)
        search = (f" x {spec.search.n_trials} lr trials (TPE over [{spec.search.low:g}, "
                  f"{spec.search.high:g}])" if spec.search else "")
        print(f"{len(configs)} grid points{search}, total compute {total:.3e} FLOPs"
              f"{' per lr trial' if spec.search else ''}")
        if not spec.search:
            print(_branching_line(configs, spec.branching))
        if spec.adaptive is not None:
            cap = spec.adaptive.compute_cap_flops
            print(f"adaptive: up to {spec.adaptive.max_rounds} rounds of added points after "
                  f"this first pass" + (f", the whole sweep capped at {cap:.3e} FLOPs" if cap
                                        else ", no compute cap"))
        return 0
    if spec.adaptive is not None and parent_tags is None:  # not for a --plan run
        from sweeps.adaptive import run_adaptive

        return run_adaptive(spec, spec.adaptive, where, args.address, parent_tags)
    return submit(spec, where, args.address, parent_tags)


def _branching_line(configs: list, branching: bool) -> str:
    """The sweep's compute run independently and branched (sae_core/branching.py)."""
    from sae_core.branching import branched_compute_flops, families, independent_compute_flops

    fams = families(configs)
    independent = sum(independent_compute_flops(f) for f in fams)
    branched = sum(branched_compute_flops(f) for f in fams)
    return (f"compute without branching {independent:.3e} FLOPs, with branching "
            f"{branched:.3e} FLOPs ({branched / independent:.2f} of it; {len(fams)} "
            f"families); this spec has branching: {'true' if branching else 'false'}")


def _status(args: argparse.Namespace) -> int:
    from sweeps.driver import Where, status
    from sweeps.spec import load_spec

    print(status(load_spec(args.spec), Where.resolve(args.storage, args.tracking_uri)))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from sweeps import tracking
    from sweeps.driver import Where
    from sweeps.spec import load_spec

    where = Where.resolve(args.storage, args.tracking_uri)
    if where.tracking_uri.startswith(("http://", "https://")):
        print(f"the sweep logs to a server already: {where.tracking_uri}")
        return 0
    address = f"http://127.0.0.1:{args.port}/#/experiments"
    if args.spec:
        target = tracking.find_sweep(where.tracking_uri, load_spec(args.spec).name)
        if target is not None:
            address += f"/{target.experiment_id}/runs"
    # MLflow 3's UI opens a new browser on its GenAI pages (traces); the runs table is
    # its "machine_learning" workflow, chosen by this query parameter.
    address += "?workflowType=machine_learning"
    # One worker and no job runner: 2 processes and 0.5 GB instead of 15 and 2.2-2.8 GB
    # (docs/METHOD.md §5.7).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               where.tracking_uri, "--host", "127.0.0.1", "--port", str(args.port),
               "--workers", "1"]
    print(f"MLflow UI: {address}  (Ctrl-C stops it)", flush=True)
    os.execve(sys.executable, command, env)  # the server replaces this process: no orphan
