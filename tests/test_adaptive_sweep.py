"""The adaptive loop on real Ray and real MLflow (SQLite), on the small synthetic cache:
one round's additions become tagged child runs of the same parent, logged with reasons."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from analysis.adaptive import AdaptiveSettings
from sweeps import tracking
from sweeps.adaptive import LOG_NAME, run_adaptive
from sweeps.driver import Where
from sweeps.spec import load_spec
from sweeps.tracking import TAG_REASON, TAG_ROUND, TAG_STOP

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]


def test_one_adaptive_round_adds_tagged_runs_and_resubmit_adds_none(
        tmp_path: Path, synthetic_cache: Path, capsys: pytest.CaptureFixture) -> None:
    # k = 12 x 32 x 256: 1e8 FLOPs is 64 steps at F=16, 16 steps at F=64.
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(f"""
name: t
cache: {{path: {synthetic_cache}}}
base: {{lr: 3e-3, batch_size_tokens: 256, eval_n_tokens: 2048}}
isoflop: {{compute_flops: [5e7, 1e8], n_features: [16, 32, 64]}}
max_concurrent_trials: 2
""")
    spec, where = load_spec(spec_path), Where.resolve(str(tmp_path / "store"), None)
    settings = AdaptiveSettings(max_rounds=1, n_draws=10)
    assert run_adaptive(spec, settings, where) == 0

    target = tracking.find_sweep(where.tracking_uri, "t")
    assert target is not None
    runs = tracking.child_runs(target)
    assert {r.status for r in runs} == {"FINISHED"}
    added = [r for r in runs if TAG_ROUND in r.tags]
    log = json.loads((tmp_path / "store" / "runs" / "t" / "adaptive" / LOG_NAME).read_text())
    # Three widths per budget always leave the curvature undetermined (one midpoint) or the
    # minimum on an edge (one or two widths beyond): every addition is a tagged child run.
    assert 2 <= len(log[0]["additions"]) <= 4
    assert len(runs) == 6 + len(added) and len(added) == len(log[0]["additions"])
    design_widths = {16, 32, 64}
    for run in added:
        assert run.tags[TAG_ROUND] == "1"
        assert run.tags[tracking.TAG_PARENT] == target.parent_run_id
        assert int(run.params["n_features"]) not in design_widths
        reasons = {a["reason"] for a in log[0]["additions"]}
        assert run.tags[TAG_REASON] in reasons

    assert [r["round"] for r in log] == [1, 2]
    assert log[1]["stop"].startswith("max_rounds")
    client = mlflow.MlflowClient(where.tracking_uri)
    assert f"adaptive/{LOG_NAME}" in {
        a.path for a in client.list_artifacts(target.parent_run_id, "adaptive")}
    assert client.get_run(target.parent_run_id).data.tags[TAG_STOP].startswith("max_rounds")
    out = capsys.readouterr().out
    assert out.count("adaptive round 1: add F=") == len(added)

    assert run_adaptive(spec, settings, where) == 0  # resumes after round 1: stops at once
    assert len(tracking.child_runs(target)) == len(runs)
