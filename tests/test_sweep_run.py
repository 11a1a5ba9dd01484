"""Sweeps on real Ray and real MLflow (SQLite store), on the small synthetic cache.

One local Ray (2 CPUs, small object store) serves the whole module; the driver reuses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from sessions import kill_session

from sweeps import tracking
from sweeps.driver import Where, submit
from sweeps.spec import load_spec
from sweeps.trial import FAIL_ONCE_ENV

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]


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
    assert len(runs) == 4 and {r.status for r in runs} == {"FINISHED"}
    by_size = {(int(r.params["n_features"]), int(r.params["n_steps"])): r for r in runs}
    assert set(by_size) == {(32, 40), (32, 80), (64, 40), (64, 80)}
    for (n_features, n_steps), run in by_size.items():
        assert float(run.params["lr"]) == 3e-3
        assert float(run.params["compute_flops"]) == 12 * 32 * n_features * n_steps * 256
        assert run.tags["monoscale.sweep"] == "t"
        assert len(run.tags["monoscale.run_key"]) == 16
        metrics = run.metrics
        assert {"loss", "mse", "l0", "explained_variance", "dead_fraction"} <= set(metrics)
        # the held-out loss is MSE + 5 x the L1 penalty (docs/METHOD.md §1), as logged
        assert metrics["loss"] == pytest.approx(metrics["mse"] + 5 * metrics["l1_penalty"],
                                                rel=1e-4)
        assert 0 < metrics["explained_variance"] < 1
        history = client.get_metric_history(run.run_id, "train/loss")
        assert [m.step for m in history][-1] == n_steps and len(history) >= 5
        artifacts = {a.path for a in client.list_artifacts(run.run_id)}
        assert "cfg.json" in artifacts
        cfg = json.loads(Path(client.download_artifacts(run.run_id, "cfg.json",
                                                        str(tmp_path))).read_text())
        assert cfg["d_sae"] == cfg["monoscale"]["run_config"]["n_features"] == n_features
    # The MLflow UI opens the experiment as model development, and its pages say what ran.
    target = tracking.find_sweep(where.tracking_uri, "t")
    assert target is not None
    experiment = client.get_experiment(target.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = client.get_run(target.parent_run_id).data.tags["mlflow.note.content"]
    assert note.startswith("**monoscale sweep `t`** (stage 1): 4 runs of 4 × relu (λ = 5)")
    assert experiment.tags["mlflow.note.content"] == note
    # more steps at the same width never hurt here
    assert by_size[(64, 80)].metrics["loss"] < by_size[(64, 40)].metrics["loss"]

    capsys.readouterr()
    assert submit(spec, where) == 0
    assert "0 to run" in capsys.readouterr().out
    assert len(children(where)) == 4  # no trial ran, no run was added


def test_failing_trial_resumes_from_checkpoint_and_diverging_one_fails_alone(
        tmp_path: Path, synthetic_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every trial's first attempt raises right after its first checkpoint (step 20);
    # lr=1e30 diverges at once, before any checkpoint.
    monkeypatch.setenv(FAIL_ONCE_ENV, "1")
    spec = load_spec(write_spec(tmp_path, synthetic_cache,
                                "{n_features: [32], n_steps: [60], lr: [3e-3, 1e30]}",
                                base="checkpoint_every_steps: 20, "))
    where = Where.resolve(str(tmp_path / "store"), None)
    assert submit(spec, where) == 1  # one grid point has no FINISHED run
    runs = children(where)
    good = [r for r in runs if float(r.params["lr"]) == 3e-3]
    failed = [r for r in good if r.status == "FAILED"]
    finished = [r for r in good if r.status == "FINISHED"]
    assert len(failed) == 1 and FAIL_ONCE_ENV in failed[0].tags["monoscale.failure"]
    assert len(finished) == 1
    # Tune retried it from the first checkpoint (step 20), not from scratch
    assert finished[0].tags[tracking.TAG_RESUMED] == "20"
    assert finished[0].metrics["step"] == 60

    diverged = [r for r in runs if float(r.params["lr"]) == 1e30]
    assert [r.status for r in diverged] == ["FAILED"]  # not retried: deterministic
    assert diverged[0].tags["monoscale.failure"].startswith("diverged")


def test_lr_search_runs_n_trials_per_point_in_range_and_resubmit_adds_none(
        tmp_path: Path, synthetic_cache: Path) -> None:
    # Two points that differ only in lambda: each gets its own n_trials (a point must not
    # count the other's trials as its own), and the sweep's parent run ends FINISHED.
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(f"""
name: t
cache: {{path: {synthetic_cache}}}
base: {{batch_size_tokens: 256, eval_n_tokens: 2048}}
points: [{{n_features: 32, n_steps: 40}}]
grid: {{l1_coefficient: [1.0, 5.0]}}
search: {{range: [1e-4, 1e-2], n_trials: 2}}
""")
    where = Where.resolve(str(tmp_path / "store"), None)
    assert submit(load_spec(spec_path), where) == 0
    runs = children(where)
    assert {r.status for r in runs} == {"FINISHED"}
    for lam in (1.0, 5.0):
        point = [r for r in runs if r.params["l1_coefficient"] == lam]
        lrs = sorted(float(r.params["lr"]) for r in point)
        assert len(lrs) == len(set(lrs)) == 2 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
        assert len({r.tags[tracking.TAG_POINT] for r in point}) == 1
    target = tracking.find_sweep(where.tracking_uri, "t")
    assert target is not None
    parent = mlflow.MlflowClient(where.tracking_uri).get_run(target.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_finished"] == 4
    assert submit(load_spec(spec_path), where) == 0
    assert len(children(where)) == 4


def test_driver_killed_mid_sweep_then_resumed_finishes_each_point_once(
        tmp_path: Path, synthetic_cache: Path) -> None:
    spec_path = write_spec(tmp_path, synthetic_cache,
                           "{n_features: [32, 64], n_steps: [800, 1200]}")
    store = tmp_path / "store"
    where = Where.resolve(str(store), None)
    log = tmp_path / "driver.log"
    code = ("import sys; from sweeps.driver import Where, submit; from sweeps.spec import "
            f"load_spec; sys.exit(submit(load_spec({str(spec_path)!r}), "
            f"Where.resolve({str(store)!r}, None)))")
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out,
                                  cwd=Path(__file__).parents[1], start_new_session=True)
    try:
        deadline, finished_before = time.monotonic() + 150, []
        while not finished_before:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
            if "to run" in log.read_text():  # the driver has created the store
                finished_before = [r.run_id for r in children(where)
                                   if r.status == "FINISHED"]
        driver.kill()  # SIGKILL: no cleanup of any kind
        driver.wait()
    finally:
        kill_session(driver.pid)

    spec = load_spec(spec_path)
    assert submit(spec, where) == 0
    runs = children(where)
    finished = [r for r in runs if r.status == "FINISHED"]
    keys = [r.tags["monoscale.run_key"] for r in finished]
    assert len(keys) == len(set(keys)) == 4  # exactly one FINISHED run per grid point
    assert set(finished_before) <= {r.run_id for r in finished}  # never re-run
    assert not [r for r in runs if r.status == "RUNNING"]
    # the resumed experiment is recorded as ended, so the next submit starts a fresh one
    assert json.loads((store / "tune" / "t.monoscale.json").read_text())["done"]
