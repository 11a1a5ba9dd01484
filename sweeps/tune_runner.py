"""Ray Tune and Optuna on the driver: grid points become Tune trials (sweeps/trial.py
runs inside them), an Optuna TPE search samples lr, and the progress view follows them.

Idempotence does not rest on Tune's state: MLflow is the record. A grid point with a
FINISHED child run is never run again (the driver leaves it out; a restored trial that
finds it returns at once). Tune's experiment is restored (`Tuner.restore`) only after a
driver died mid-fit, and only when its manifest (`tune/<sweep>.monoscale.json`) names
this tracking store and sweep run: another's is set aside. Otherwise each submit starts
a fresh experiment over what is left, and the driver runs anew any point a restored
experiment skipped that the store has not finished (sweeps/driver.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import JsonLoggerCallback

from sae_core.config import RunConfig
from sweeps.progress import SweepProgress
from sweeps.spec import SweepSpec
from sweeps.trial import TrialContext, run_trial

# Trials checkpoint every ~60 s, but test sweeps far more often; Tune's warning about
# frequent experiment snapshots is noise for us.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# The sweep prints its own progress; Tune's console tables and hints only add noise.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# MLflow is the record of every run. Of Tune's per-trial logs only result.json is kept
# (fit()'s ResultGrid reads it; _run_config adds its logger): the TensorBoard one imported
# tensorboardX and boto3 in the driver at every fit(), 3.4 s of a 4 s profile of fit()'s
# start under load (py-spy, here).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

logging.getLogger("ray.tune").setLevel(logging.WARNING)


def _let_trials_use_prestarted_workers() -> None:
    """Tune gives its trial actors runtime_env {"env_vars": {"PL_DISABLE_FORK": "1"}}, for
    PyTorch Lightning, which monoscale does not use. Any runtime env unlike the job's makes
    Ray kill the workers it prestarted (which have already imported torch and mlflow,
    cluster/local.py) and start cold ones for the first trials (docs/METHOD.md §5.6): a trivial
    trial started 5.6-5.9 s after fit() with it and 2.3 s after without."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # another Ray layout: trials start cold, correct but slower
        return
    getattr(class_cache, "DEFAULT_ENV_VARS", {}).pop("PL_DISABLE_FORK", None)


_let_trials_use_prestarted_workers()

_PROGRESS: SweepProgress | None = None  # the driver's view; see _ProgressCallback


class _ProgressCallback(tune.Callback):
    """Feeds Tune's trial events to the driver's SweepProgress. Stateless on purpose:
    Tuner.restore unpickles the callbacks of the first fit, and must find this fit's view."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if _PROGRESS is not None:
            _PROGRESS.start(_key(trial))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if _PROGRESS is None:
            return
        result = trial.last_result or {}
        if result.get("diverged"):
            _PROGRESS.fail(_key(trial), "diverged")
        elif result.get("skipped"):
            _PROGRESS.skip(_key(trial))
        else:
            _PROGRESS.finish(_key(trial), result.get("loss"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if _PROGRESS is not None:
            _PROGRESS.fail(_key(trial), "error after retries (see the MLflow run's "
                           "monoscale.failure tag)")


def _key(trial: Any) -> str:
    config = trial.config
    if "run_key" in config:
        return str(config["run_key"])
    return f"{config.get('point_key', '?')} lr={config.get('lr', 0.0):.3g}"


@dataclass(frozen=True)
class TuneOptions:
    storage_dir: Path  # Tune experiments live in storage_dir/tune/<sweep name>


@dataclass(frozen=True)
class GridResult:
    started: frozenset[str]  # run keys of the trials Tune started in this fit
    restored: bool  # the fit continued an interrupted experiment
    ended: bool  # every trial ended (False after Ctrl-C: the experiment stays restorable)


def _owner(ctx: TrialContext) -> dict[str, str]:
    """What a Tune experiment folder belongs to: one store, one sweep run in it."""
    return {"tracking_uri": ctx.target.uri, "experiment_id": ctx.target.experiment_id,
            "parent_run_id": ctx.target.parent_run_id}


def _read_manifest(manifest: Path) -> dict[str, Any]:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _set_aside(path: Path, manifest: Path, why: str) -> None:
    """Move another store's or sweep run's experiment out of the way, not into use."""
    aside = path.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    manifest.unlink(missing_ok=True)
    print(f"[{path.name}] set aside the Tune experiment at {path} ({why}): now {aside}",
          file=sys.stderr, flush=True)


def run_grid(spec: SweepSpec, todo: list[RunConfig], ctx: TrialContext,
             options: TuneOptions, trial: Callable[..., None] = run_trial,
             flops_by_key: dict[str, float] | None = None, fresh: bool = False
             ) -> GridResult:
    """Run the `todo` grid points as Tune trials, restoring an interrupted experiment of
    this sweep run in this store (never one that belongs to another: it is set aside).
    `trial` runs one of them (with branching: run_family_trial, one family per trunk in
    `todo`); `flops_by_key` weighs them for the ETA (default: their compute_flops);
    `fresh`: never restore."""
    global _PROGRESS
    _PROGRESS = SweepProgress(spec.name, flops_by_key or {c.run_key: c.compute_flops
                                                          for c in todo})
    trainable = tune.with_resources(tune.with_parameters(trial, ctx=ctx),
                                    {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    root = options.storage_dir / "tune"
    path, manifest = root / spec.name, root / f"{spec.name}.monoscale.json"
    keys = [c.run_key for c in todo]
    previous = _read_manifest(manifest)
    earlier_keys = list(previous.get("keys", []))
    ours = all(previous.get(k) == v for k, v in _owner(ctx).items())
    if path.exists() and not fresh and not previous.get("done", True) and not ours:
        owner = previous.get("tracking_uri", "an older monoscale, which did not record it")
        _set_aside(path, manifest, f"it belongs to {owner}, run "
                   f"{previous.get('parent_run_id', '?')}, not to {ctx.target.uri} run "
                   f"{ctx.target.parent_run_id}")
    restore = (not fresh and ours and not previous.get("done", True)
               and set(keys) <= set(earlier_keys) <= set(ctx.configs)
               and tune.Tuner.can_restore(str(path)))
    if restore:
        print(f"[{spec.name}] resuming the interrupted Tune experiment at {path}",
              file=_PROGRESS.out, flush=True)
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
        keys = earlier_keys  # the restored experiment's trials: all of them, finished ones too
    else:
        shutil.rmtree(path, ignore_errors=True)  # a finished or stale experiment of ours
        root.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({**_owner(ctx), "keys": keys, "done": False}))
        tuner = tune.Tuner(
            trainable,
            param_space={"run_key": tune.grid_search(keys)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.max_concurrent_trials,
                # 20 short trials: 21-32 s without, 8 s with (docs/METHOD.md §5.6)
                reuse_actors=True,
            ),
            run_config=_run_config(spec, root),
        )
    results = tuner.fit()
    # After Ctrl-C, fit() returns early with some trials never ended (docs/METHOD.md §5.6): keep
    # the experiment restorable then.
    ended = all(results[i].error is not None
                or {"loss", "diverged"} & set(results[i].metrics or {})
                for i in range(len(results))) and len(results) == len(keys)
    manifest.write_text(json.dumps({**_owner(ctx), "keys": keys, "done": ended}))
    return GridResult(frozenset(_PROGRESS.started), restore, ended)


def run_search(spec: SweepSpec, point: RunConfig, n_trials: int,
               finished: list[tuple[float, float]], ctx: TrialContext,
               options: TuneOptions) -> None:
    """Optuna TPE over log lr at one (F, steps) point; `finished` (lr, loss) pairs from
    earlier submits seed the sampler, so a re-submit only adds the missing trials."""
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    global _PROGRESS
    assert spec.search is not None
    _PROGRESS = SweepProgress(f"{spec.name} {point.run_key}",
                              {f"{point.run_key}#{i}": point.compute_flops
                               for i in range(n_trials)})
    searcher = OptunaSearch(
        metric="loss", mode="min", sampler=TPESampler(seed=point.seed),
        points_to_evaluate=[{"lr": lr} for lr, _ in finished] or None,
        evaluated_rewards=[loss for _, loss in finished] or None,
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                    {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    root = options.storage_dir / "tune"
    name = f"{spec.name}-search-{point.run_key}"
    shutil.rmtree(root / name, ignore_errors=True)  # before Tuner(), which writes into it
    tuner = tune.Tuner(
        trainable,
        param_space={"point_key": point.run_key,
                     "lr": tune.loguniform(spec.search.low, spec.search.high)},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n_trials,
                                    max_concurrent_trials=spec.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=_run_config(spec, root, name=name),
    )
    tuner.fit()


def _run_config(spec: SweepSpec, root: Path, name: str | None = None) -> tune.RunConfig:
    return tune.RunConfig(
        name=name or spec.name,
        storage_path=str(root),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[_ProgressCallback(), JsonLoggerCallback()],
        verbose=0,  # the sweep prints its own progress lines
    )
