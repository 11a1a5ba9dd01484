"""The adaptive sweep loop: first pass, then rounds of analyze -> additions -> submit.

Each round reads the sweep's finished runs from MLflow, fits them (analysis/report.py),
asks analysis/adaptive.py what to add, and submits the spec again with the additions as
explicit `points:` (the design's IsoFLOP pairs plus every addition so far), through the
same driver: finished points are skipped, the new ones become child runs of the same
parent. Each added run is tagged `monoscale.adaptive_round` and `monoscale.adaptive_reason`;
every round (additions, dropped ones, stop reason, interval widths) is printed and
appended to `adaptive_log.json`, which is logged as `adaptive/adaptive_log.json` on the parent run.

Re-submitting is idempotent: earlier additions are found again by their tags, and the
round count goes on from the highest round tagged.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.adaptive import AdaptiveSettings, Design, Round, next_round
from analysis.report import analyze
from sae_core.compute import flops_per_feature_step
from sae_core.errors import UserError
from sweeps import tracking
from sweeps.analysis_input import read_sweep_runs
from sweeps.driver import Where, submit
from sweeps.spec import SweepSpec, expand

LOG_NAME = "adaptive_log.json"


def design_of(spec: SweepSpec, d_in: int) -> Design:
    """The spec's IsoFLOP design with k = 12 d_in batch_size_tokens (sae_core/compute.py)."""
    if spec.isoflop is None:
        raise UserError(f"adaptive: sweep '{spec.name}' needs an isoflop: design "
                        "(budgets x n_features) to adapt")
    return Design(tuple(spec.isoflop.compute_flops), tuple(spec.isoflop.n_features),
                  flops_per_feature_step(d_in, spec.batch_size_tokens))


def earlier_additions(target: tracking.TrackingTarget) -> dict[tuple[int, int], tuple[int, str]]:
    """(F, steps) -> (round, reason) of the finished runs an earlier round added."""
    out: dict[tuple[int, int], tuple[int, str]] = {}
    for run in tracking.child_runs(target):
        if tracking.TAG_ROUND in run.tags and run.finished:
            pair = (int(run.params["n_features"]), int(run.params["n_steps"]))
            out[pair] = (int(run.tags[tracking.TAG_ROUND]),
                         run.tags.get(tracking.TAG_REASON, ""))
    return out


def with_points(spec: SweepSpec, d_in: int, added: list[tuple[int, int]]) -> SweepSpec:
    """The spec with explicit (F, steps) points: the design's pairs, then the additions."""
    pairs = list(dict.fromkeys([*spec.size_pairs(d_in), *added]))
    floor = min(spec.isoflop.compute_flops) if spec.isoflop else spec.branch_floor_flops
    return replace(spec, sizes=tuple(pairs), isoflop=None, branch_floor_flops=floor)


def tag_additions(target: tracking.TrackingTarget, spec: SweepSpec, d_in: int,
                  result: Round, round_index: int) -> int:
    """Tag the finished child runs of this round's additions; returns how many."""
    reasons = {(a.n_features, a.n_steps): a.reason for a in result.additions}
    keys = {c.run_key: reasons[(c.n_features, c.n_steps)] for c in expand(spec, d_in)
            if (c.n_features, c.n_steps) in reasons}
    n = 0
    for key, reason in keys.items():
        for run in tracking.child_runs(target, key):
            if run.finished and tracking.TAG_ROUND not in run.tags:
                tracking.set_tags(target.uri, run.run_id, {tracking.TAG_ROUND: str(round_index),
                                                           tracking.TAG_REASON: reason})
                n += 1
    return n


def _log_round(target: tracking.TrackingTarget, log_path: Path, record: dict[str, Any]) -> None:
    """Print the round, append it to adaptive_log.json and attach that to the parent run."""
    for a in record["additions"]:
        print(f"[{target.sweep}] adaptive round {record['round']}: add F={a['n_features']} "
              f"steps={a['n_steps']} ({a['kind']}: {a['reason']})", flush=True)
    for a in record["dropped"]:
        print(f"[{target.sweep}] adaptive round {record['round']}: over the compute cap, not "
              f"adding F={a['n_features']} steps={a['n_steps']} ({a['reason']})", flush=True)
    if record["stop"]:
        print(f"[{target.sweep}] adaptive: stop after round {record['round'] - 1}: "
              f"{record['stop']}", flush=True)
    history = json.loads(log_path.read_text()) if log_path.exists() else []
    history.append(record)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(json.dumps(history, indent=1))
    tracking.attach(target.uri, target.parent_run_id, log_path.parent, "adaptive")


def _fits(runs: pd.DataFrame, spec: SweepSpec, d_in: int, design: Design,
          settings: AdaptiveSettings) -> dict[str, Any] | None:
    """analyze() of the runs so far; None (no interval-shrink test this round) when the
    laws cannot be fitted yet: the edge and resolution checks need only the runs."""
    try:
        return analyze(runs, spec.batch_size_tokens, d_in, n_draws=settings.n_draws,
                       budgets=list(design.budgets_flops))
    except (UserError, ValueError, TypeError, ArithmeticError) as err:
        # TypeError: measured on an undertrained sweep, analysis/laws.derived() took
        # float() of a complex allocation (a negative fitted exponent).
        print(f"[{spec.name}] adaptive: the laws could not be fitted ({err}); deciding "
              "from the IsoFLOP parabolas alone", flush=True)
        return None


def run_adaptive(spec: SweepSpec, settings: AdaptiveSettings, where: Where,
                 address: str | None = None, parent_tags: dict[str, str] | None = None) -> int:
    """First pass, then adaptive rounds until analysis/adaptive.py says stop. Returns the
    driver's exit code (0 when every point, added ones too, has a FINISHED run)."""
    from cluster.local import ray_session
    from sweeps.preflight import preflight
    from sweeps.sweep_lock import hold_storage

    if spec.search is not None:
        raise UserError("adaptive: not with search (the rounds add (F, steps) points)")
    if spec.isoflop is None:  # before any work: design_of says the same after the first pass
        design_of(spec, 1)
    preflight(spec, where.tracking_uri, where.storage_dir, address)
    # One driver for every round: no other submit of this sweep slips in between them.
    with hold_storage(where.storage_dir, spec.name):
        rc = submit(spec, where, address, parent_tags)
        if rc:
            print(f"[{spec.name}] adaptive: the first pass did not finish every point; no "
                  "rounds", flush=True)
            return rc
        # One Ray for every round: each submit would start and stop its own (~2.5 s more
        # per sweep on 2 cores than joining one, bench/orchestration_overhead.py).
        with ray_session(address):
            return _rounds(spec, settings, where, address, parent_tags)


def _rounds(spec: SweepSpec, settings: AdaptiveSettings, where: Where, address: str | None,
            parent_tags: dict[str, str] | None) -> int:
    from sweeps.cache_setup import planned_d_in

    d_in = planned_d_in(spec)  # the cache exists now
    design = design_of(spec, d_in)
    target = tracking.find_sweep(where.tracking_uri, spec.name)
    assert target is not None  # submit created it
    added = earlier_additions(target)
    round_index = max((r for r, _ in added.values()), default=0) + 1
    # Its own folder: attach() logs every file of it (as artifacts/adaptive/).
    log_path = where.storage_dir / "runs" / spec.name / "adaptive" / LOG_NAME
    previous: Round | None = None
    while True:
        runs = read_sweep_runs(spec.name, where.tracking_uri)
        fits = _fits(runs, spec, d_in, design, settings)
        result = next_round(runs, design, settings, fits, previous, round_index)
        _log_round(target, log_path, result.log_record(round_index))
        if result.stop:
            tracking.set_tags(target.uri, target.parent_run_id, {tracking.TAG_STOP: result.stop})
            return 0
        derived = with_points(spec, d_in, [*added, *((a.n_features, a.n_steps)
                                                     for a in result.additions)])
        rc = submit(derived, where, address, parent_tags)
        tag_additions(target, derived, d_in, result, round_index)
        if rc:
            return rc
        added.update({(a.n_features, a.n_steps): (round_index, a.reason) for a in result.additions})
        previous, round_index = result, round_index + 1
