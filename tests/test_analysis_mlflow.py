"""The analysis reads a sweep's finished runs from a real MLflow store (sweeps/tracking.py)
with every param, metric and tag, fits runs of different configs apart, and attaches."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from planted_runs import isoflop_runs

from analysis.parametric import ParametricFit
from sweeps import tracking
from sweeps.analysis_input import read_sweep_runs
from sweeps.cli import main

pytestmark = pytest.mark.integration

D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH
TRUTH = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
BUDGETS = [3e10, 1e11, 3e11, 1e12]


def _child(client: MlflowClient, exp: str, parent: str, sweep: str, key: str, row: pd.Series,
           status: str = "FINISHED", **more_params: object) -> str:
    """A child run laid out as sweeps/tracking.py writes them."""
    tags = {"mlflow.parentRunId": parent, "monoscale.sweep": sweep, "monoscale.run_key": key,
            "monoscale.stage": "1"}
    run_id = client.create_run(exp, tags=tags).info.run_id
    params = {"n_features": int(row.n_features), "n_steps": int(row.n_steps), "lr": 1e-3,
              "compute_flops": row.compute_flops, "batch_size_tokens": BATCH, "d_in": D_IN,
              "l1_coefficient": 5.0, "arch": "relu", "l1_warmup_steps": None, **more_params}
    now = int(time.time() * 1000)
    metrics = {"loss": row.loss, "mse": 0.8 * row.loss, "l0": 12.0, "explained_variance": 0.7,
               "dead_fraction": 0.01, "eval/l0": 11.0,
               "lr": 2e-6}  # the trainer logs the LR schedule under the param's name
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag("note", "x")])
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame, str]:
    tmp_path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"  # MLflow 3.17 refuses ./mlruns
    client = MlflowClient(uri)
    exp = client.create_experiment("synth", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"monoscale.role": "sweep", "monoscale.sweep": "synth",
                                          "monoscale.stage": "1"}).info.run_id
    runs = isoflop_runs(TRUTH, BUDGETS, K, seed=4)
    stale = runs.iloc[0].copy()
    stale["loss"] = 99.0
    _child(client, exp, parent, "synth", "key0", stale)  # an older attempt at key0
    time.sleep(0.01)
    for i, row in enumerate(runs.itertuples()):
        _child(client, exp, parent, "synth", f"key{i}", row)
    # Not part of the table either: a failed attempt and another sweep's run.
    _child(client, exp, parent, "synth", "key-failed", stale, status="FAILED")
    _child(client, exp, parent, "other", "key-other", stale)
    client.set_terminated(parent, "FINISHED")
    return uri, runs, parent


def test_read_runs_gives_the_runs_table(store: tuple[str, pd.DataFrame, str]) -> None:
    uri, planted, parent = store
    table = read_sweep_runs("synth", uri)
    assert len(table) == len(planted) and table["loss"].max() < 99
    # Every param, typed back, and every metric: nothing is whitelisted away.
    assert {"n_features", "n_steps", "lr", "compute_flops", "loss", "mse", "l0",
            "explained_variance", "dead_fraction", "run_key", "stage", "d_in",
            "l1_coefficient", "arch", "eval/l0"} <= set(table.columns)
    assert table["n_features"].dtype.kind == "i" and table["arch"].eq("relu").all()
    assert table["l1_coefficient"].eq(5.0).all() and table["l1_warmup_steps"].isna().all()
    assert table["lr"].eq(1e-3).all()  # the config, not the schedule's last value
    merged = table.merge(planted, on=["n_features", "n_steps"], suffixes=("", "_planted"))
    assert len(merged) == len(planted)
    pd.testing.assert_series_equal(merged["loss"], merged["loss_planted"], check_names=False)
    target = tracking.find_sweep(uri, "synth")
    assert target is not None and target.parent_run_id == parent


def test_analyze_spec_reads_mlflow_and_attaches(store: tuple[str, pd.DataFrame, str], tmp_path: Path) -> None:
    uri, _, parent = store
    spec = tmp_path / "synth.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "synth", "cache": {"path": "cache"}, "base": {"lr": 1e-3, "batch_size_tokens": BATCH},
        "isoflop": {"compute_flops": BUDGETS, "n_features": [256, 1024]}}))
    out = tmp_path / "analysis"
    assert main(["analyze", str(spec), "--tracking-uri", uri, "--out", str(out), "--draws", "10"]) == 0
    fits = json.loads((out / "fits.json").read_text())
    assert fits["n_runs"] == 24 and fits["flops_per_feature_step"] == K
    assert fits["budgets"] == BUDGETS  # the spec's IsoFLOP budgets group the runs
    assert fits["parametric"]["alpha"]["value"] == pytest.approx(TRUTH.alpha, abs=0.06)
    names = {a.path for a in MlflowClient(uri).list_artifacts(parent, "analysis")}
    assert {"analysis/fits.json", "analysis/isoflop.png", "analysis/isoflop.svg"} <= names
    # The parent run's page says the result in words: the laws with their intervals.
    note = MlflowClient(uri).get_run(parent).data.tags["mlflow.note.content"]
    exponent = fits["features_opt"]["exponent"]
    assert "Fitted laws" in note and f"F_opt ∝ C^{exponent:.3f}" in note
    experiment = MlflowClient(uri).get_experiment_by_name("synth")
    assert experiment is not None and experiment.tags["mlflow.note.content"] == note


def test_attach_logs_a_directory(store: tuple[str, pd.DataFrame, str], tmp_path: Path) -> None:
    uri, _, parent = store
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "fits.json").write_text("{}")
    tracking.attach(uri, parent, tmp_path / "x", "again")
    assert [a.path for a in MlflowClient(uri).list_artifacts(parent, "again")] == ["again/fits.json"]


def test_missing_store_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "cache": {"path": "c"},
                                    "grid": {"n_features": [1, 2], "n_steps": [1]}}))
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["analyze", str(spec), "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_analyze_plan_finds_the_run_in_the_plan_sweep(store: tuple[str, pd.DataFrame, str],
                                                      tmp_path: Path) -> None:
    """`submit SPEC --plan` trains into the sweep `<name>-plan`; analyze --plan finds it there."""
    uri, _, _ = store
    client = MlflowClient(uri)
    exp = client.create_experiment("synth-plan", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={"monoscale.role": "sweep", "monoscale.sweep": "synth-plan",
                                          "monoscale.stage": "3"}).info.run_id
    f, s = 4096, 3000
    achieved = float(TRUTH.predict(f, s))
    row = pd.Series({"n_features": f, "n_steps": s, "compute_flops": K * f * s, "loss": achieved})
    _child(client, exp, parent, "synth-plan", "planned", row)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"n_features": f, "n_steps": s, "predicted_loss": achieved * 1.01,
                                "predicted_loss_pi95": [achieved * 0.98, achieved * 1.04]}))
    spec = tmp_path / "synth.yaml"
    spec.write_text(yaml.safe_dump({"name": "synth", "cache": {"path": "cache"},
                                    "grid": {"n_features": [256, 1024], "n_steps": [100]}}))
    out = tmp_path / "checked"
    assert main(["analyze", str(spec), "--tracking-uri", uri, "--out", str(out), "--draws", "0",
                 "--plan", str(plan), "--no-attach"]) == 0
    report = json.loads((out / "fits.json").read_text())["planned_run"]
    assert report["achieved_loss"] == pytest.approx(achieved)
    assert report["within_pi95"] is True and report["relative_error"] == pytest.approx(1 / 1.01 - 1)


def test_runs_that_differ_in_lambda_are_fitted_as_separate_laws(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    """Two λ values in one sweep: two laws, each on its own runs, each with its own fits;
    the printout says why."""
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    exp = client.create_experiment("lam", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={"monoscale.role": "sweep", "monoscale.sweep": "lam",
                                          "monoscale.stage": "1"}).info.run_id
    laws = {2.0: TRUTH, 10.0: ParametricFit(E=0.5, A=40.0, B=20.0, alpha=0.6, beta=0.5,
                                            objective=0.0, n_runs=0)}
    for lam, law in laws.items():
        for i, row in enumerate(isoflop_runs(law, BUDGETS, K, seed=4).itertuples()):
            _child(client, exp, parent, "lam", f"{lam}-{i}", row, l1_coefficient=lam)
    spec = tmp_path / "lam.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "lam", "cache": {"path": "cache"}, "base": {"lr": 1e-3, "batch_size_tokens": BATCH},
        "isoflop": {"compute_flops": BUDGETS, "n_features": [256, 1024]},
        "grid": {"l1_coefficient": [2.0, 10.0]}}))
    out = tmp_path / "out"
    assert main(["analyze", str(spec), "--tracking-uri", uri, "--out", str(out), "--draws", "0",
                 "--no-attach"]) == 0
    printed = capsys.readouterr().out
    assert "runs differ in l1_coefficient: 2 laws" in printed
    fitted = {}
    for lam, law in laws.items():
        fits = json.loads((out / f"l1_coefficient={lam:g}" / "fits.json").read_text())
        assert fits["group"] == {"l1_coefficient": lam} and fits["n_runs"] == 24
        fitted[lam] = ParametricFit(**{k: fits["parametric"][k]["value"]
                                       for k in ("E", "A", "B", "alpha", "beta")},
                                    objective=0.0, n_runs=0)
        # Each law is its own runs' law (one fit over both would sit between them).
        for f, s in ((512, 4000), (2048, 2000)):
            assert fitted[lam].predict(f, s) == pytest.approx(law.predict(f, s), rel=0.02)
    assert fitted[10.0].E - fitted[2.0].E > 0.2
    assert not (out / "fits.json").exists()
    # plan without --fits cannot choose a law for the user
    assert main(["plan", str(spec), "--tracking-uri", uri, "--compute", "1e13",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "--fits" in capsys.readouterr().err
