"""Sweeps on real Ray and real MLflow (SQLite store), on the small synthetic cache.

One local Ray (2 CPUs, small object store) serves the whole module; the driver reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import ray

from sweeps import tracking
from sweeps.driver import Where, submit
from sweeps.spec import load_spec
from sweeps.tune_runner import FAIL_ONCE_ENV

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(address="local", num_cpus=2, num_gpus=0, object_store_memory=100 * 2**20,
             include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_spec(tmp_path: Path, cache: Path, grid: str, base: str = "lr: 3e-3, ") -> Path:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"""
name: t
cache: {{path: {cache}}}
base: {{{base}batch_size_tokens: 256, eval_n_tokens: 2048}}
grid: {grid}
max_concurrent_trials: 2
""")
    return spec


def children(where: Where) -> list:
    target = tracking.find_sweep(where.tracking_uri, "t")
    assert target is not None
    return tracking.child_runs(target)


def test_sweep_logs_every_point_and_resubmit_runs_nothing(tmp_path: Path, synthetic_cache: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    spec = load_spec(write_spec(tmp_path, synthetic_cache,
                                "{n_features: [32, 64], n_steps: [40, 80]}"))
    where = Where.resolve(str(tmp_path / "store"), None)
    assert submit(spec, where) == 0

    client = mlflow.MlflowClient(where.tracking_uri)
    runs = children(where)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    by_size = {(int(r.data.params["n_features"]), int(r.data.params["n_steps"])): r for r in runs}
    assert set(by_size) == {(32, 40), (32, 80), (64, 40), (64, 80)}
    for (n_features, n_steps), run in by_size.items():
        assert float(run.data.params["lr"]) == 3e-3
        assert float(run.data.params["compute_flops"]) == 12 * 32 * n_features * n_steps * 256
        assert run.data.tags["monoscale.sweep"] == "t"
        assert len(run.data.tags["monoscale.run_key"]) == 16
        metrics = run.data.metrics
        assert {"loss", "mse", "l0", "explained_variance", "dead_fraction"} <= set(metrics)
        # the held-out loss is MSE + 5 x the L1 penalty (METHOD.md), as the trainer logged it
        assert metrics["loss"] == pytest.approx(metrics["mse"] + 5 * metrics["l1_penalty"],
                                                rel=1e-4)
        assert 0 < metrics["explained_variance"] < 1
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history][-1] == n_steps and len(history) >= 5
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "cfg.json" in artifacts
        cfg = json.loads(Path(client.download_artifacts(run.info.run_id, "cfg.json",
                                                        str(tmp_path))).read_text())
        assert cfg["n_features"] == n_features
    # more steps at the same width never hurt here
    assert by_size[(64, 80)].data.metrics["loss"] < by_size[(64, 40)].data.metrics["loss"]

    capsys.readouterr()
    assert submit(spec, where) == 0
    assert "0 to run" in capsys.readouterr().out
    assert len(children(where)) == 4  # no trial ran, no run was added


def test_trial_failing_mid_run_resumes_from_its_checkpoint(
        tmp_path: Path, synthetic_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAIL_ONCE_ENV, "1")
    spec = load_spec(write_spec(tmp_path, synthetic_cache,
                                "{n_features: [32], n_steps: [60]}",
                                "lr: 3e-3, checkpoint_every_steps: 20, "))
    where = Where.resolve(str(tmp_path / "store"), None)
    assert submit(spec, where) == 0
    runs = children(where)
    failed = [r for r in runs if r.info.status == "FAILED"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(failed) == 1 and FAIL_ONCE_ENV in failed[0].data.tags["monoscale.failure"]
    assert len(finished) == 1
    # the retry started from the first checkpoint (step 20), not from scratch
    assert finished[0].data.tags[tracking.TAG_RESUMED] == "20"
    assert finished[0].data.metrics["step"] == 60


def test_diverging_trial_fails_with_reason_and_the_sweep_goes_on(
        tmp_path: Path, synthetic_cache: Path) -> None:
    spec = load_spec(write_spec(tmp_path, synthetic_cache,
                                "{n_features: [32], n_steps: [30], lr: [3e-3, 1e30]}", base=""))
    where = Where.resolve(str(tmp_path / "store"), None)
    assert submit(spec, where) == 1  # one grid point has no FINISHED run
    runs = {float(r.data.params["lr"]): r for r in children(where)}
    assert runs[3e-3].info.status == "FINISHED"
    assert runs[1e30].info.status == "FAILED"
    assert runs[1e30].data.tags["monoscale.failure"].startswith("diverged")
