"""MLflow, and only here: the one adapter that writes a sweep's runs and reads them back.

Layout in MLflow: one experiment per sweep name; one parent run tagged
`monoscale.role=sweep`; one child run per attempt at a grid point, tagged
`mlflow.parentRunId`, `monoscale.sweep`, `monoscale.run_key`, `monoscale.stage`, with every
RunConfig field as a param, the loss curves as step metrics and the final held-out
metrics. A grid point is done when it has a FINISHED child; FAILED/KILLED children stay
as history. Runs are read back as `RunRecord`s carrying every param (typed again), metric
and tag, so nothing a run records is dropped on the way to the analysis.

Trials log from inside themselves, never through the driver (docs/METHOD.md §5.7): the
child run a trial writes is sweeps/child_run.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Run, RunTag
from mlflow.exceptions import MlflowException

from sae_core.errors import UserError
from sweeps.store import check_store

# Every tag monoscale writes, named once.
TAG_PARENT = "mlflow.parentRunId"
TAG_ROLE = "monoscale.role"  # "sweep" on a sweep's parent run
TAG_SWEEP, TAG_KEY, TAG_STAGE = "monoscale.sweep", "monoscale.run_key", "monoscale.stage"
TAG_SPEC = "monoscale.spec"  # the parent: the spec file it was submitted from
TAG_FAILURE = "monoscale.failure"
TAG_RESUMED = "monoscale.resumed_from_step"
TAG_BRANCH_OF = "monoscale.branch_of"  # a branched member: the run_key of its trunk
TAG_NODE = "monoscale.ray_node_id"  # the Ray node that trained the run
TAG_POINT = "monoscale.point_key"  # a search trial: the run_key of its (F, steps) point
TAG_ROUND = "monoscale.adaptive_round"  # a run an adaptive round added ...
TAG_REASON = "monoscale.adaptive_reason"  # ... and why
TAG_STOP = "monoscale.adaptive_stop"  # the parent: why the adaptive loop ended
TAG_NOTE = "mlflow.note.content"  # the description MLflow's UI shows on a run or experiment
TAG_NOTE_PART = "monoscale.note"  # the parent: each part of that description
NOTE_PARTS = ("sweep", "laws", "plan")  # sweeps/descriptions.py
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TAG_EVAL_FAILURE = "monoscale.eval_failure"  # a trial's splice evaluation failed, and why
PLAN_FIELDS = ("predicted_loss", "predicted_loss_pi95", "predicted_loss_ci95", "compute_flops")
_STATE_RANK = {"FINISHED": 0, "RUNNING": 1, "SCHEDULED": 1, "FAILED": 2, "KILLED": 3}


def _no_store(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


# ---- a sweep: its experiment and parent run -------------------------------------------
@dataclass(frozen=True)
class TrackingTarget:
    """Where a sweep logs; small and picklable, so trials receive it."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str
    stage: int


def _parent(client: MlflowClient, experiment_id: str, sweep: str) -> Run | None:
    """The sweep's parent run: the oldest one tagged as it (two first submits racing may
    both create one; every driver then agrees on the same)."""
    parents = client.search_runs(
        [experiment_id], f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP}` = '{sweep}'",
        order_by=["attributes.start_time ASC"], max_results=10)
    return min(parents, key=lambda r: (r.info.start_time, r.info.run_id), default=None)


def _experiment(client: MlflowClient, sweep: str, artifact_root: Path | None) -> str:
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        # An explicit artifact location: else artifacts land in the creator's cwd.
        location = (artifact_root / sweep).resolve().as_uri() if artifact_root else None
        try:
            return client.create_experiment(sweep, artifact_location=location)
        except MlflowException:  # a concurrent submit created it first
            experiment = client.get_experiment_by_name(sweep)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return str(experiment.experiment_id)


def open_sweep(uri: str, sweep: str, stage: int, artifact_root: Path | None,
               spec_path: Path) -> TrackingTarget:
    """The experiment and the sweep's parent run (found again by its tag on a re-submit),
    in a store prepare_store made. Changes nothing in a sweep that exists: claim it
    (sweeps/sweep_lock.py), then start_sweep."""
    client = MlflowClient(uri)
    experiment_id = _experiment(client, sweep, artifact_root)
    parent = _parent(client, experiment_id, sweep)
    if parent is None:
        tags = {TAG_ROLE: "sweep", TAG_SWEEP: sweep, TAG_STAGE: str(stage),
                TAG_SPEC: str(spec_path)}
        mine = client.create_run(experiment_id, tags=tags, run_name=sweep).info.run_id
        parent = _parent(client, experiment_id, sweep)
        assert parent is not None
        if parent.info.run_id != mine:  # a concurrent first submit made one first
            client.delete_run(mine)
    return TrackingTarget(uri, experiment_id, parent.info.run_id, sweep, stage)


def start_sweep(target: TrackingTarget, extra_tags: dict[str, str] | None = None) -> None:
    """Reopen the parent run (a re-submit) and tag it, once this driver holds the sweep.
    The experiment is marked as model development: MLflow 3.17's UI otherwise opens it in
    its GenAI layout (traces, judges, prompts; docs/METHOD.md §5.7)."""
    client = MlflowClient(target.uri)
    client.update_run(target.parent_run_id, status="RUNNING")
    client.set_experiment_tag(target.experiment_id, TAG_EXPERIMENT_KIND, "custom_model_development")
    if extra_tags:
        client.log_batch(target.parent_run_id,
                         tags=[RunTag(k, v) for k, v in extra_tags.items()])


def describe(target: TrackingTarget, part: str, text: str) -> None:
    """Set one part of the sweep's description (sweeps/descriptions.py): kept as its own
    tag of the parent run, and all parts joined into the parent run's and the experiment's
    `mlflow.note.content`, the text their UI pages show."""
    client = MlflowClient(target.uri)
    client.set_tag(target.parent_run_id, f"{TAG_NOTE_PART}.{part}", text[:4900])
    tags = client.get_run(target.parent_run_id).data.tags
    parts = [tags[f"{TAG_NOTE_PART}.{p}"] for p in NOTE_PARTS if f"{TAG_NOTE_PART}.{p}" in tags]
    note = "\n\n".join(parts)[:4900]  # MLflow's limit on a tag value is 5000 characters
    client.set_tag(target.parent_run_id, TAG_NOTE, note)
    client.set_experiment_tag(target.experiment_id, TAG_NOTE, note)


# ---- who runs a sweep: claims on its parent run (sweeps/sweep_lock.py) ----------------
CLAIM = "monoscale.claim"  # param CLAIM.<n>: the n-th holder (JSON); tag CLAIM.<n>.beat


@dataclass(frozen=True)
class Claim:
    n: int  # 0: the sweep was never claimed
    holder: str | None  # what its driver wrote (sweeps/sweep_lock.py reads it)
    beat: str | None  # its last heartbeat (time.time() as text), or "released"


def latest_claim(target: TrackingTarget) -> Claim:
    """The newest claim on the sweep."""
    run = MlflowClient(target.uri).get_run(target.parent_run_id)
    numbers = [int(k.rsplit(".", 1)[1]) for k in run.data.params
               if k.startswith(CLAIM + ".") and k.rsplit(".", 1)[1].isdigit()]
    if not numbers:
        return Claim(0, None, None)
    n = max(numbers)
    return Claim(n, run.data.params[f"{CLAIM}.{n}"], run.data.tags.get(f"{CLAIM}.{n}.beat"))


def write_claim(target: TrackingTarget, n: int, holder: str) -> bool:
    """Write claim `n`; False when another driver wrote it first. A param is written once
    (MLflow refuses to change one; the database's key on (run, param) decides between
    two drivers writing at the same moment), so exactly one driver gets each claim."""
    client = MlflowClient(target.uri)
    try:
        client.log_param(target.parent_run_id, f"{CLAIM}.{n}", holder)
    except MlflowException:
        pass  # "Changing param values is not allowed": read below who holds it
    return client.get_run(target.parent_run_id).data.params.get(f"{CLAIM}.{n}") == holder


def beat(target: TrackingTarget, n: int, value: str) -> None:
    """The holder of claim `n` is alive (a time), or has let the sweep go ("released")."""
    MlflowClient(target.uri).set_tag(target.parent_run_id, f"{CLAIM}.{n}.beat", value)


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
    if _no_store(uri):
        return None
    check_store(uri, write=False)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(sweep)
    parent = _parent(client, experiment.experiment_id, sweep) if experiment else None
    if experiment is None or parent is None:
        return None
    stage = int(parent.data.tags.get(TAG_STAGE, "1"))
    return TrackingTarget(uri, experiment.experiment_id, parent.info.run_id, sweep, stage)


def plan_tags(plan: Mapping[str, Any]) -> dict[str, str]:
    """A plan's prediction as tags of the parent run that trains it (`submit --plan`)."""
    return {f"monoscale.{k}": json.dumps(plan[k]) for k in PLAN_FIELDS if k in plan}


# ---- reading runs back ----------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as monoscale reads it: every param (typed back), metric and tag."""

    run_id: str
    status: str
    start_time_ms: int
    end_time_ms: int | None
    params: Mapping[str, Any]
    metrics: Mapping[str, float]  # the latest value of each
    tags: Mapping[str, str]

    @property
    def run_key(self) -> str | None:
        return self.tags.get(TAG_KEY)

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"


def param_text(value: Any) -> str:
    """A param as text that _typed reads back: str() of scalars, JSON of a tuple."""
    return json.dumps(list(value)) if isinstance(value, tuple | list) else str(value)


def _typed(text: str) -> Any:
    """MLflow params are strings: give back the value that was logged (str() of it)."""
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _record(run: Run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.status, run.info.start_time,
                     run.info.end_time, {k: _typed(v) for k, v in run.data.params.items()},
                     dict(run.data.metrics), dict(run.data.tags))


def _search(client: MlflowClient, experiment_ids: list[str], query: str) -> list[RunRecord]:
    """Every run matching `query`, newest first."""
    runs: list[RunRecord] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs += [_record(r) for r in page]
        token = page.token
        if not token:
            return runs


def child_runs(target: TrackingTarget, run_key: str | None = None) -> list[RunRecord]:
    """Every child run of the sweep (or of one grid point), newest first."""
    query = f"tags.`{TAG_PARENT}` = '{target.parent_run_id}'"
    if run_key is not None:
        query += f" and tags.`{TAG_KEY}` = '{run_key}'"
    return _search(MlflowClient(target.uri), [target.experiment_id], query)


def best_run_per_key(runs: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """One run per run_key: FINISHED before RUNNING before FAILED before KILLED."""
    best: dict[str, RunRecord] = {}
    for run in runs:  # newest first, so ties keep the newest
        key = run.run_key
        if key is None:
            continue
        rank = _STATE_RANK.get(run.status, 9)
        if key not in best or rank < _STATE_RANK.get(best[key].status, 9):
            best[key] = run
    return best


def finished_runs(uri: str, sweep: str) -> list[RunRecord]:
    """The newest FINISHED child run of each grid point of a sweep, in any experiment
    (a sweep logged elsewhere than one experiment per sweep is still found)."""
    if _no_store(uri):
        raise UserError(f"no MLflow store at {uri}: submit the sweep first or pass --tracking-uri")
    check_store(uri, write=False)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(sweep)
    ids = [experiment.experiment_id] if experiment else [
        e.experiment_id for e in client.search_experiments()]
    query = f"tags.`{TAG_SWEEP}` = '{sweep}' and attributes.status = 'FINISHED'"
    runs = [r for r in _search(client, ids, query) if r.tags.get(TAG_ROLE) != "sweep"]
    return list(best_run_per_key(runs).values())


def runs_table(records: Iterable[RunRecord]) -> pd.DataFrame:
    """The runs table the analysis reads (docs/CONTRACTS.md): one row per run with every
    param and metric, its run_key and stage; by compute. Where a metric has a param's name
    (`lr`, the schedule's last value), the param is the run's config and wins."""
    rows = [{"run_id": r.run_id, **r.metrics, **r.params, "run_key": r.run_key,
             "stage": r.tags.get(TAG_STAGE)} for r in records]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["compute_flops", "n_features"]).reset_index(drop=True)


def run_summary(run: RunRecord) -> dict[str, Any]:
    """State and final loss of a run, for `monoscale status`."""
    return {"state": run.status, "loss": run.metrics.get("loss"),
            "failure": run.tags.get(TAG_FAILURE, "")}


# ---- writing runs ---------------------------------------------------------------------
def mark_killed(target: TrackingTarget, runs: Iterable[RunRecord], reason: str) -> int:
    """End runs left RUNNING by a killed driver or worker; returns how many."""
    client, count = MlflowClient(target.uri), 0
    for run in runs:
        if run.status in ("RUNNING", "SCHEDULED"):
            client.set_tag(run.run_id, TAG_FAILURE, reason)
            client.set_terminated(run.run_id, "KILLED")
            count += 1
    return count


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Tags on an existing run (the adaptive loop marks the runs it added, and its parent)."""
    MlflowClient(uri).log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])


def log_evaluation(uri: str, run_id: str, metrics: dict[str, float], step: int,
                   artifacts: Iterable[Path] = ()) -> None:
    """An evaluation's metrics at `step` (the run's last) and its files, into a run that
    finished earlier (`monoscale eval SPEC`; MLflow logs into ended runs too)."""
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i:i + 1000])
    for path in artifacts:
        client.log_artifact(run_id, str(path))


def attach(uri: str, run_id: str, directory: str | Path, artifact_path: str) -> None:
    """Every file of `directory` (fits.json, plots, a log) as artifacts of a run."""
    MlflowClient(uri).log_artifacts(run_id, str(directory), artifact_path)
