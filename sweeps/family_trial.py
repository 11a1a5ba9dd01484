"""A sweep with `branching: true`: one Tune trial per family (sae_core/branching.py).

The trial trains the family's trunk (its longest member), copying a fork checkpoint
to each shorter member's out_dir at that member's decay start, then trains each branch,
in turn, from its fork. Every member is its own MLflow child run, as in a plain sweep
(trial.train_member), with the branches tagged `monoscale.branch_of` = the
trunk's run_key.

Compute, charged honestly: `compute_flops` stays each member's effective compute
C(F, S) for the scaling laws; `compute_flops_spent` (param and metric) is what the
member cost the sweep: the trunk its full run, a branch its decay steps only. Summed
over a family, it is `branched_compute_flops`.

Idempotence: a member with a FINISHED run is never trained again. A fork checkpoint
stays in runs_dir/<branch run_key>/checkpoint until that branch finishes. A branch whose
fork checkpoint is gone while its trunk is finished (storage wiped) runs from step 0:
the same run by construction (same seed, data order and schedule), charged its full
compute. A retried family trial resumes each member from its local checkpoint; it does
not hand checkpoints to Tune (one trial, several runs), so on a cluster without shared
storage a retry on another node starts the unfinished member over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ray import tune

from sae_core import checkpoint
from sae_core.branching import Branch, Family, families
from sae_core.config import RunConfig
from sweeps.tracking import TAG_BRANCH_OF, child_runs, mark_killed
from sweeps.trial import TrialContext, restore_checkpoint, train_member, with_trial_resources


def family_of(trunk_key: str, configs: dict[str, dict[str, Any]]) -> Family:
    """The family whose trunk has this run_key, among the sweep's configs."""
    grouped = families(RunConfig.from_dict(data) for data in configs.values())
    for family in grouped:
        if family.trunk.run_key == trunk_key:
            return family
    raise KeyError(f"no family of this sweep has the trunk {trunk_key}")


def run_family_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial per family of a branched sweep."""
    tune.report(run_family(config, ctx))


def run_family(config: dict[str, Any], ctx: TrialContext) -> dict[str, float]:
    """The unfinished members of one family, trunk first. Returns the last member's
    result for Tune to record, or {"diverged": 1} when any member diverged."""
    family = family_of(config["run_key"], ctx.configs)
    runs_dir = Path(ctx.runs_dir)
    todo = [b for b in family.branches if not _finished(b.cfg, ctx)]
    results: list[dict[str, float] | None] = []  # None: the member diverged
    trunk = with_trial_resources(family.trunk, ctx)
    if not _finished(trunk, ctx):
        def on_fork(path: Path, step: int) -> None:
            for branch in todo:
                if branch.fork_step == step:
                    _place_fork(path, step, runs_dir / branch.cfg.run_key)

        out_dir = runs_dir / trunk.run_key
        results.append(train_member(trunk, ctx, out_dir, restore_checkpoint(None, out_dir),
                                    report_checkpoints=False,
                                    fork_steps={b.fork_step for b in todo}, on_fork=on_fork))
    results += [_run_branch(branch, family.trunk.run_key, ctx) for branch in todo]
    if not results:
        return {"skipped": 1.0}
    if any(r is None for r in results):
        return {"diverged": 1.0}
    return results[-1]  # type: ignore[return-value]


def _finished(cfg: RunConfig, ctx: TrialContext) -> bool:
    """True when the member has a FINISHED run; else marks its dead attempts KILLED."""
    earlier = child_runs(ctx.target, cfg.run_key)
    if any(r.finished for r in earlier):
        return True
    mark_killed(ctx.target, earlier, "left running by an earlier attempt that died")
    return False


def _place_fork(path: Path, step: int, out_dir: Path) -> None:
    """The trunk's checkpoint at `step` becomes the branch's checkpoint to resume from."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    shutil.copytree(path, out_dir / "checkpoint")
    (out_dir / "checkpoint_step.json").write_text(json.dumps({"step": step}))


def _run_branch(branch: Branch, trunk_key: str, ctx: TrialContext) -> dict[str, float] | None:
    cfg = with_trial_resources(branch.cfg, ctx)
    out_dir = Path(ctx.runs_dir) / cfg.run_key
    resumed_from_step = restore_checkpoint(None, out_dir)
    forked = checkpoint.exists(out_dir / "checkpoint")
    return train_member(cfg, ctx, out_dir, resumed_from_step, report_checkpoints=False,
                        compute_flops_spent=branch.decay_compute_flops if forked
                        else cfg.compute_flops,
                        extra_tags={TAG_BRANCH_OF: trunk_key})
