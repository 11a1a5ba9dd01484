"""Inside a Tune trial: one grid point (run_trial) in its own MLflow child run, and what a
branched family's trial (sweeps/family_trial.py) shares with it.

The trial receives one grid point's RunConfig (by run_key) and a small `TrialContext`,
opens its own MLflow child run (tracking.py), trains with `run_from_cache`, and reports
its checkpoints to Tune so that a retried trial resumes from the last one. A trial that
finds its grid point already FINISHED in MLflow (a restored Tune trial) returns at once.
The driver side (the Tuner, the search, progress) is sweeps/tune_runner.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from sae_core.config import RunConfig
from sae_core.run import DENSITY_FILE
from sae_core.sae_files import WEIGHTS_FILE
from sweeps.child_run import ChildRun
from sweeps.tracking import TAG_NODE, TAG_POINT, TrackingTarget, child_runs, mark_killed

if TYPE_CHECKING:  # sweeps/eval_trial.py imports transformers: only trials that splice load it
    from sweeps.eval_trial import SpliceSetup

# Test hook: a trial on its first attempt raises right after its first checkpoint, so
# the tests can see Tune retry it from that checkpoint. Read on the driver.
FAIL_ONCE_ENV = "MONOSCALE_TEST_FAIL_ONCE_AFTER_CHECKPOINT"


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares; small, goes through Ray's object store."""

    target: TrackingTarget
    configs: dict[str, dict[str, Any]]  # run_key -> RunConfig.to_dict()
    runs_dir: str
    log_weights: bool = False
    fail_once_after_checkpoint: bool = False
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    splice: SpliceSetup | None = None  # `eval: {splice: true}`: score each SAE when trained


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial: one attempt at one grid point, logged to its own MLflow run."""
    if "run_key" in config:
        cfg = RunConfig.from_dict(ctx.configs[config["run_key"]])
        tags = {}
    else:  # a search trial: the point's config at the sampled lr
        cfg = RunConfig.from_dict(ctx.configs[config["point_key"]]).replace(lr=config["lr"])
        tags = {TAG_POINT: config["point_key"]}
    cfg = with_trial_resources(cfg, ctx)
    earlier = child_runs(ctx.target, cfg.run_key)
    finished = [r for r in earlier if r.finished]
    if finished:  # a restored Tune trial whose run a previous driver saw finish
        tune.report({"loss": finished[0].metrics.get("loss", float("nan")),
                     "skipped": 1.0})
        return
    # Only this trial runs this grid point now: a RUNNING run of it is a dead attempt.
    mark_killed(ctx.target, earlier, "left running by an earlier attempt that died")
    out_dir = Path(ctx.runs_dir) / cfg.run_key
    resumed_from_step = restore_checkpoint(tune.get_checkpoint(), out_dir)
    metrics = train_member(cfg, ctx, out_dir, resumed_from_step, extra_tags=tags)
    tune.report(metrics if metrics is not None else {"diverged": 1.0})


def with_trial_resources(cfg: RunConfig, ctx: TrialContext) -> RunConfig:
    """One torch thread per CPU Ray gave the trial; a GPU share caps its memory."""
    if cfg.num_threads == 0:
        cfg = cfg.replace(num_threads=max(1, int(ctx.cpus_per_trial)))
    if 0 < ctx.gpus_per_trial < 1:
        import torch

        if torch.cuda.is_available():  # Ray packs trials on a GPU but caps no memory
            torch.cuda.set_per_process_memory_fraction(ctx.gpus_per_trial)
    return cfg


def train_member(cfg: RunConfig, ctx: TrialContext, out_dir: Path, resumed_from_step: int,
                 *, report_checkpoints: bool = True, compute_flops_spent: float | None = None,
                 extra_tags: dict[str, str] | None = None, fork_steps: Collection[int] = (),
                 on_fork: Callable[[Path, int], None] | None = None) -> dict[str, float] | None:
    """Train one run in its own MLflow child run; its final metrics, or None when it
    diverged. `compute_flops_spent` (default: the run's compute_flops) is what this run
    cost beyond others: a branch of a branched schedule pays only its decay steps."""
    from sae_core.run import run_from_cache
    from sae_core.trainer import DivergedError

    spent = cfg.compute_flops if compute_flops_spent is None else compute_flops_spent
    tags = {TAG_NODE: ray.get_runtime_context().get_node_id(), **(extra_tags or {})}
    run = ChildRun(ctx.target, cfg, resumed_from_step, tags, {"compute_flops_spent": spent})

    def on_checkpoint(path: Path, step: int) -> None:
        (out_dir / "checkpoint_step.json").write_text(json.dumps({"step": step}))
        run.metrics.flush()
        if report_checkpoints:
            stage = out_dir / "tune_checkpoint"
            shutil.rmtree(stage, ignore_errors=True)
            shutil.copytree(path, stage / "checkpoint")
            (stage / "step.json").write_text(json.dumps({"step": step}))
            tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(str(stage)))
            shutil.rmtree(stage, ignore_errors=True)  # Tune has persisted its copy
        if ctx.fail_once_after_checkpoint and resumed_from_step == 0:
            raise RuntimeError(f"{FAIL_ONCE_ENV}: failing once after step {step}")

    try:
        metrics = run_from_cache(cfg, out_dir, run.metrics, on_checkpoint,
                                 fork_steps=fork_steps, on_fork=on_fork)
    except DivergedError as err:  # deterministic: a retry would diverge again
        run.fail(f"diverged: {err}")
        return None
    except BaseException as err:
        run.fail(f"{type(err).__name__}: {err}")
        raise
    run.metrics.log({"compute_flops_spent": spent}, step=cfg.n_steps)
    weights = [out_dir / WEIGHTS_FILE] if ctx.log_weights else []
    artifacts = [out_dir / "cfg.json", out_dir / "metrics.json", out_dir / DENSITY_FILE, *weights]
    if ctx.splice is not None:
        from sweeps.eval_trial import evaluate_in_trial

        artifacts += evaluate_in_trial(ctx.splice, cfg, out_dir, metrics, run.metrics,
                                       ctx.target.uri, run.run_id)
    run.finish(artifacts)
    return metrics


def restore_checkpoint(checkpoint: tune.Checkpoint | None, out_dir: Path) -> int:
    """Put Tune's checkpoint (a retried trial) into out_dir/checkpoint, where
    run_from_cache resumes from; without one, a local checkpoint left by a killed driver
    serves. Returns the step resumed from (0: from scratch)."""
    step_file = out_dir / "checkpoint_step.json"
    if checkpoint is not None:
        with checkpoint.as_directory() as staged:
            shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
            shutil.copytree(Path(staged) / "checkpoint", out_dir / "checkpoint")
            shutil.copy(Path(staged) / "step.json", step_file)
    if (out_dir / "checkpoint").is_dir() and step_file.exists():
        return int(json.loads(step_file.read_text())["step"])
    return 0
