"""A sweep with the architecture as an axis, on real Ray and MLflow: every architecture
trains in its trials, and `monoscale analyze` fits each as its own law and compares them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeps import tracking
from sweeps.cli import main
from sweeps.driver import Where, submit
from sweeps.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]


def test_each_architecture_of_a_sweep_is_its_own_law(tmp_path: Path, synthetic_cache: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = tmp_path / "archs.yaml"
    spec_path.write_text(f"""
name: archs
cache: {{path: {synthetic_cache}}}
base: {{lr: 3e-3, batch_size_tokens: 256, eval_n_tokens: 2048}}
variants: [{{arch: relu}}, {{arch: topk, k: 4}}]
isoflop: {{compute_flops: [6e8, 1.2e9, 2.4e9], n_features: [64, 128, 256]}}
max_concurrent_trials: 2
""")
    where = Where.resolve(str(tmp_path / "store"), None)
    assert submit(load_spec(spec_path), where) == 0
    target = tracking.find_sweep(where.tracking_uri, "archs")
    assert target is not None
    runs = tracking.child_runs(target)
    assert sorted(r.params["arch"] for r in runs) == ["relu"] * 9 + ["topk"] * 9
    topk = [r for r in runs if r.params["arch"] == "topk"]
    assert all(r.params["k"] == 4 and r.params["l1_coefficient"] is None for r in topk)
    assert all(3.0 < r.metrics["l0"] <= 4.0 for r in topk)  # k per token, held out

    out = tmp_path / "analysis"
    capsys.readouterr()
    assert main(["analyze", str(spec_path), "--storage", str(tmp_path / "store"), "--out",
                 str(out), "--draws", "10", "--no-attach"]) == 0
    printed = capsys.readouterr().out
    assert "runs differ in arch, l1_coefficient, k: 2 laws" in printed
    assert "metric: normalized_mse" in printed
    for group in ("arch=relu,l1_coefficient=5", "arch=topk,k=4"):
        fits = json.loads((out / group / "fits.json").read_text())
        assert fits["n_runs"] == 9 and fits["metric"] == "normalized_mse"
    comparison = json.loads((out / "comparison.json").read_text())
    assert [g["group"] for g in comparison["groups"]] == ["arch=relu,l1_coefficient=5",
                                                          "arch=topk,k=4"]
