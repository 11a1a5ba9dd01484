"""MLflow, and only here: the sweep's store, its parent run, one child run per grid point.

Layout in MLflow: one experiment per sweep name; one parent run tagged
`monoscale.role=sweep`; one child run per attempt at a grid point, tagged
`mlflow.parentRunId`, `monoscale.sweep`, `monoscale.run_key`, `monoscale.stage`. A grid
point is done when it has a FINISHED child; FAILED/KILLED children stay as history.
Logging is batched (log_batch): single log_metric calls cost ~4 ms each on SQLite
(ECOSYSTEM.md), and trials log from inside themselves, never through the driver.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag

from sae_core.config import RunConfig
from sae_core.errors import UserError

TAG_SWEEP, TAG_KEY, TAG_STAGE = "monoscale.sweep", "monoscale.run_key", "monoscale.stage"
TAG_ROLE, TAG_FAILURE = "monoscale.role", "monoscale.failure"
TAG_RESUMED = "monoscale.resumed_from_step"
TAG_BRANCH_OF = "monoscale.branch_of"  # a branched member: the run_key of its trunk
TAG_NODE = "monoscale.ray_node_id"  # the Ray node that trained the run
TAG_POINT = "monoscale.point_key"  # a search trial: the run_key of its (F, steps) point
TAG_PARENT = "mlflow.parentRunId"
_STATE_RANK = {"FINISHED": 0, "RUNNING": 1, "SCHEDULED": 1, "FAILED": 2, "KILLED": 3}


def default_tracking_uri(storage_dir: Path) -> str:
    """The embedded store: one SQLite file (MLflow 3.17 refuses a bare ./mlruns)."""
    return f"sqlite:///{(storage_dir / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast, before any Ray or MLflow work, on a server that does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                pass
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise UserError(f"MLflow tracking server {uri} is unreachable: {reason}") from None
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class TrackingTarget:
    """Where a sweep logs; small and picklable, so trials receive it."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str
    stage: int


def prepare_store(uri: str) -> None:
    """Create a new local store's schema on the driver before any trial: two trials
    migrating a fresh SQLite schema at once raced (ECOSYSTEM.md). A new SQLite store is a
    copy of an empty, migrated one kept per MLflow version in the user's cache (MLflow's
    migrations took 2.4 s of CPU here, while Ray starts on the same cores); its Default
    experiment, which monoscale never uses, points where the template was made. Creates
    no experiment and no run."""
    # The schema-migration chatter of a new SQLite store is not news to the user.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if uri.startswith(("http://", "https://")):
        return
    plain_sqlite = uri.startswith("sqlite:///") and "?" not in uri
    path = Path(uri.removeprefix("sqlite:///")) if plain_sqlite else None
    if path is not None and not path.exists():
        try:
            _copy_atomically(_empty_store_template(), path)
        except Exception:  # the copy only saves time: without it MLflow migrates below
            pass
    MlflowClient(uri).search_experiments(max_results=1)  # migrates an older store


def _empty_store_template() -> Path:
    """An empty SQLite store at this MLflow's schema, made once per user and version."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monoscale"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fresh = cache / f".{template.name}.{os.getpid()}"
        try:
            MlflowClient(f"sqlite:///{fresh}").search_experiments(max_results=1)
            os.replace(fresh, template)  # a concurrent maker's copy is as good
        finally:
            fresh.unlink(missing_ok=True)
    return template


def _copy_atomically(source: Path, dest: Path) -> None:
    """Copy to `dest` unless it exists by then: a hard link never replaces a store that
    a concurrent submit made and has begun to fill."""
    partial = dest.with_name(f".{dest.name}.{os.getpid()}")
    shutil.copyfile(source, partial)
    try:
        os.link(partial, dest)
    except FileExistsError:
        pass
    finally:
        partial.unlink()


def open_sweep(uri: str, sweep: str, stage: int, artifact_root: Path | None,
               spec_path: Path, extra_tags: dict[str, str] | None = None) -> TrackingTarget:
    """The experiment and the sweep's parent run (found again by its tag on a re-submit),
    in a store prepare_store made."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        # An explicit artifact location: else artifacts land in the creator's cwd.
        location = (artifact_root / sweep).resolve().as_uri() if artifact_root else None
        experiment_id = client.create_experiment(sweep, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    parents = client.search_runs(
        [experiment_id], f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP}` = '{sweep}'",
        order_by=["attributes.start_time ASC"], max_results=1)
    if parents:
        parent_id = parents[0].info.run_id
        client.update_run(parent_id, status="RUNNING")  # a re-submit reopens it
    else:
        tags = {TAG_ROLE: "sweep", TAG_SWEEP: sweep, TAG_STAGE: str(stage),
                "monoscale.spec": str(spec_path)}
        parent_id = client.create_run(experiment_id, tags=tags, run_name=sweep).info.run_id
    if extra_tags:
        client.log_batch(parent_id, tags=[RunTag(k, v) for k, v in extra_tags.items()])
    return TrackingTarget(uri, experiment_id, parent_id, sweep, stage)


def close_sweep(target: TrackingTarget, n_points: int, n_finished: int,
                compute_flops: float) -> None:
    """End the parent run: FINISHED when every grid point has a FINISHED child."""
    client, now = MlflowClient(target.uri), int(time.time() * 1000)
    client.log_batch(target.parent_run_id, metrics=[
        Metric("n_points", n_points, now, 0), Metric("n_finished", n_finished, now, 0),
        Metric("compute_flops_total", compute_flops, now, 0)])
    client.set_terminated(target.parent_run_id,
                          "FINISHED" if n_finished == n_points else "FAILED")


def find_sweep(uri: str, sweep: str) -> TrackingTarget | None:
    """The sweep's target if it was ever submitted to this store; creates nothing."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        return None
    parents = client.search_runs(
        [experiment.experiment_id], f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP}` = "
        f"'{sweep}'", order_by=["attributes.start_time ASC"], max_results=1)
    if not parents:
        return None
    stage = int(parents[0].data.tags.get(TAG_STAGE, "1"))
    return TrackingTarget(uri, experiment.experiment_id, parents[0].info.run_id, sweep, stage)


def child_runs(target: TrackingTarget, run_key: str | None = None) -> list[Run]:
    """Every child run of the sweep (or of one grid point), newest first."""
    query = f"tags.`{TAG_PARENT}` = '{target.parent_run_id}'"
    if run_key is not None:
        query += f" and tags.`{TAG_KEY}` = '{run_key}'"
    client, token = MlflowClient(target.uri), None
    runs: list[Run] = []
    while True:
        page = client.search_runs([target.experiment_id], query, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def best_run_per_key(runs: Iterable[Run]) -> dict[str, Run]:
    """One run per run_key: FINISHED before RUNNING before FAILED before KILLED."""
    best: dict[str, Run] = {}
    for run in runs:  # newest first, so ties keep the newest
        key = run.data.tags.get(TAG_KEY)
        if key is None:
            continue
        rank = _STATE_RANK.get(run.info.status, 9)
        if key not in best or rank < _STATE_RANK.get(best[key].info.status, 9):
            best[key] = run
    return best


def mark_killed(target: TrackingTarget, runs: Iterable[Run], reason: str) -> int:
    """End runs left RUNNING by a killed driver or worker; returns how many."""
    client, count = MlflowClient(target.uri), 0
    for run in runs:
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_tag(run.info.run_id, TAG_FAILURE, reason)
            client.set_terminated(run.info.run_id, "KILLED")
            count += 1
    return count


class MetricsBuffer:
    """The trainer's MetricsLogger: buffers points and sends them with log_batch (one call
    per <= 1000 points, MLflow's batch limit), at most every `flush_every_s` seconds."""

    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = 5.0) -> None:
        self._client, self._run_id, self._flush_every_s = client, run_id, flush_every_s
        self._points: list[Metric] = []
        self._last_flush = time.monotonic()
        self.last_timestamp_ms = 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        # Strictly increasing timestamps: MLflow's "latest value" breaks step ties by time.
        now = max(int(time.time() * 1000), self.last_timestamp_ms + 1)
        self.last_timestamp_ms = now
        self._points += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if time.monotonic() - self._last_flush > self._flush_every_s:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._points), 1000):
            self._client.log_batch(self._run_id, metrics=self._points[i:i + 1000])
        self._points, self._last_flush = [], time.monotonic()


class ChildRun:
    """One attempt at one grid point, opened from inside the trial."""

    def __init__(self, target: TrackingTarget, cfg: RunConfig, resumed_from_step: int,
                 extra_tags: dict[str, str] | None = None,
                 extra_params: dict[str, Any] | None = None) -> None:
        self.client = MlflowClient(target.uri)
        tags = {TAG_PARENT: target.parent_run_id, TAG_SWEEP: target.sweep,
                TAG_KEY: cfg.run_key, TAG_STAGE: str(target.stage), **(extra_tags or {})}
        if resumed_from_step:
            tags[TAG_RESUMED] = str(resumed_from_step)
        name = f"F{cfg.n_features}-S{cfg.n_steps}-lr{cfg.lr:g}-s{cfg.seed}"
        self.run_id = self.client.create_run(target.experiment_id, tags=tags,
                                             run_name=name).info.run_id
        params = {**cfg.to_dict(), "compute_flops": cfg.compute_flops, "n_tokens": cfg.n_tokens,
                  **(extra_params or {})}
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.metrics = MetricsBuffer(self.client, self.run_id)

    def finish(self, artifacts: Iterable[Path]) -> None:
        """The final held-out metrics came through the trainer's last logger call."""
        self.metrics.flush()
        for path in artifacts:
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))

    def fail(self, reason: str) -> None:
        try:
            self.metrics.flush()
        finally:
            self.client.log_batch(self.run_id, tags=[RunTag(TAG_FAILURE, reason[:4000])])
            self.client.set_terminated(self.run_id, "FAILED")


def run_summary(run: Run) -> dict[str, Any]:
    """State and final loss of a run, for `monoscale status`."""
    return {"state": run.info.status, "loss": run.data.metrics.get("loss"),
            "failure": run.data.tags.get(TAG_FAILURE, "")}


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Tags on an existing run (the adaptive loop marks the runs it added, and its parent)."""
    MlflowClient(uri).log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])
