"""MLflow, and only here for the analysis: a sweep's finished runs in, fits and plots out.

Layout written by sweeps/tracking.py: one experiment per sweep name, a parent run tagged
`monoscale.role=sweep`, one child run per attempt at a grid point with tags
`monoscale.sweep`, `monoscale.run_key`, `monoscale.stage`, the RunConfig fields and
compute as params and the final held-out metrics.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from sae_core.errors import UserError

PARAMS = ("n_features", "n_steps", "lr", "compute_flops", "batch_size_tokens", "d_in", "n_tokens", "seed")
METRICS = ("loss", "mse", "l0", "explained_variance", "dead_fraction")
TAGS = {"monoscale.run_key": "run_key", "monoscale.stage": "stage"}


def _search(client: MlflowClient, experiment_ids: list[str], query: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client: MlflowClient, sweep: str, experiment_names: list[str] | None) -> list[str]:
    names = experiment_names or [sweep]
    found = [e.experiment_id for n in names if (e := client.get_experiment_by_name(n)) is not None]
    if not found:  # not laid out one experiment per sweep: look everywhere
        found = [e.experiment_id for e in client.search_experiments()]
    return found


def read_runs(tracking_uri: str, sweep: str, experiment_names: list[str] | None = None) -> pd.DataFrame:
    """The runs table (docs/CONTRACTS.md) of a sweep's FINISHED child runs, newest per run key."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"no MLflow store at {tracking_uri}: submit the sweep first or pass --tracking-uri")
    client = MlflowClient(tracking_uri)
    query = f"tags.`monoscale.sweep` = '{sweep}' and attributes.status = 'FINISHED'"
    runs = _search(client, _experiment_ids(client, sweep, experiment_names), query)
    rows, seen = [], set()
    for run in runs:  # newest first: a re-run grid point keeps its newest finished run
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        key = tags.get("monoscale.run_key")
        if key is None or key in seen or tags.get("monoscale.role") == "sweep":
            continue
        seen.add(key)
        row: dict[str, object] = {"run_id": run.info.run_id}
        row.update({p: float(params[p]) for p in PARAMS if p in params})
        row.update({m: metrics[m] for m in METRICS if m in metrics})
        row.update({col: tags[t] for t, col in TAGS.items() if t in tags})
        rows.append(row)
    if not rows:
        raise UserError(f"no finished runs of sweep '{sweep}' in {tracking_uri}: submit it first")
    table = pd.DataFrame(rows)
    for col in ("n_features", "n_steps", "batch_size_tokens", "d_in", "seed"):
        if col in table and table[col].notna().all():
            table[col] = table[col].astype(int)
    return table.sort_values(["compute_flops", "n_features"]).reset_index(drop=True)


def sweep_parent_run_id(tracking_uri: str, sweep: str) -> str | None:
    """The sweep's parent run (tag monoscale.role=sweep), oldest first; None if absent."""
    client = MlflowClient(tracking_uri)
    query = f"tags.`monoscale.role` = 'sweep' and tags.`monoscale.sweep` = '{sweep}'"
    parents = [r for r in _search(client, _experiment_ids(client, sweep, None), query)]
    return parents[-1].info.run_id if parents else None


def attach(tracking_uri: str, parent_run_id: str, out_dir: str | Path, artifact_path: str = "analysis") -> None:
    """Log every file of out_dir (fits.json, plots) as artifacts of the sweep's parent run."""
    MlflowClient(tracking_uri).log_artifacts(parent_run_id, str(out_dir), artifact_path)
