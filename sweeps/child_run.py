"""One attempt at one grid point, written to MLflow from inside its trial (the layout and
every tag name: sweeps/tracking.py).

Logging is batched (log_batch): single log_metric calls cost ~4 ms each on SQLite, and
trials log from inside themselves, never through the driver (docs/METHOD.md §5.7).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from sae_core.config import RunConfig
from sweeps.tracking import (
    TAG_FAILURE,
    TAG_KEY,
    TAG_PARENT,
    TAG_RESUMED,
    TAG_STAGE,
    TAG_SWEEP,
    TrackingTarget,
    param_text,
)


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
        self.client.log_batch(self.run_id, params=[Param(k, param_text(v)) for k, v in params.items()])
        self.metrics = MetricsBuffer(self.client, self.run_id)

    def finish(self, artifacts: Iterable[Path]) -> None:
        """The final held-out metrics came through the trainer's last logger call."""
        self.metrics.flush()
        for path in artifacts:
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, reason: str) -> None:
        try:
            self.metrics.flush()
        finally:
            self.client.log_batch(self.run_id, tags=[RunTag(TAG_FAILURE, reason[:4000])])
            self.client.set_terminated(self.run_id, "FAILED")
