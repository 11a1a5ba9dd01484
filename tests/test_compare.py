"""Architectures compared (analysis/compare.py, joint_law.py): each architecture is its own
law, the comparison names the one that reaches a metric at the least compute, Gao et
al.'s joint law recovers planted parameters, and a plan under an L0 budget picks the best
group allowed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from planted_runs import isoflop_runs

from analysis.joint_law import NAMES, JointLaw, fit_joint_law
from analysis.parametric import ParametricFit
from sweeps.cli import main

D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH
BUDGETS = [3e10, 1e11, 3e11, 1e12]
# normalised MSE of two architectures: topk's is lower at every compute
LAWS = {"relu": ParametricFit(E=0.05, A=3.0, B=2.0, alpha=0.5, beta=0.4, objective=0, n_runs=0),
        "topk": ParametricFit(E=0.03, A=2.0, B=1.5, alpha=0.5, beta=0.4, objective=0, n_runs=0)}
L0 = {"relu": 12.0, "topk": 32.0}


@pytest.fixture(scope="module")
def two_archs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = []
    for arch, law in LAWS.items():
        runs = isoflop_runs(law, BUDGETS, K, seed=1, noise_rel=0.003)
        frames.append(runs.assign(arch=arch, normalized_mse=runs["loss"],
                                  loss=runs["loss"] * 100, l0=L0[arch],
                                  k=32 if arch == "topk" else None))
    path = tmp_path_factory.mktemp("csv") / "runs.csv"
    pd.concat(frames).assign(batch_size_tokens=BATCH, d_in=D_IN, lr=1e-3).to_csv(path, index=False)
    return path


def test_each_architecture_is_its_own_law_and_the_comparison_names_the_cheaper(
        two_archs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["analyze", "--runs-csv", str(two_archs), "--out", str(out), "--draws", "20"]) == 0
    printed = capsys.readouterr().out
    assert "metric: normalized_mse" in printed  # not relu's loss: the archs differ in kind
    comparison = json.loads((out / "comparison.json").read_text())
    names = [g["group"] for g in comparison["groups"]]
    assert names == ["arch=relu", "arch=topk,k=32"]
    for g in comparison["groups"]:
        arch = g["arch"]
        fits = json.loads((out / g["group"] / "fits.json").read_text())
        assert fits["metric"] == "normalized_mse" and fits["n_runs"] == len(
            isoflop_runs(LAWS[arch], BUDGETS, K, seed=1))
        assert fits["parametric"]["alpha"]["value"] == pytest.approx(LAWS[arch].alpha, abs=0.1)
        assert g["l0"] == L0[arch]
    assert comparison["least_compute"], "the frontiers overlap in metric"
    assert all(row["least_compute_group"].startswith("arch=topk")
               for row in comparison["least_compute"])
    for name in ("compare_frontiers", "compare_pareto", "compare_allocation"):
        assert (out / f"{name}.png").stat().st_size > 1000

    plan = tmp_path / "plan.json"
    assert main(["plan", "--fits", str(out), "--compute", "3e12", "--out", str(plan)]) == 0
    chosen = json.loads(plan.read_text())
    assert chosen["run_config"]["arch"] == "topk" and chosen["metric"] == "normalized_mse"
    # chosen on the number the plan reports: each group's own plan predicts no less
    for g in comparison["groups"]:
        alone = tmp_path / f"plan-{g['arch']}.json"
        assert main(["plan", "--fits", str(out / g["group"] / "fits.json"), "--compute", "3e12",
                     "--out", str(alone)]) == 0
        assert json.loads(alone.read_text())["predicted_loss"] >= chosen["predicted_loss"]
    assert f"its plan predicts normalized_mse {chosen['predicted_loss']:.4g}" in chosen["choice"]
    assert main(["plan", "--fits", str(out), "--compute", "3e12", "--max-l0", "16",
                 "--out", str(plan)]) == 0
    assert json.loads(plan.read_text())["run_config"]["arch"] == "relu"  # topk's L0 is 32
    assert main(["plan", "--fits", str(out), "--compute", "3e12", "--max-l0", "4",
                 "--out", str(plan)]) == 2
    assert "no group has L0 <= 4" in capsys.readouterr().err


def test_joint_law_recovers_planted_parameters() -> None:
    truth = JointLaw(alpha=-0.5, beta_k=0.26, beta_n=-0.1, gamma=-0.04, zeta=-2.5, eta=-0.3)
    rng = np.random.default_rng(0)
    n, k = np.meshgrid([512, 1024, 2048, 4096, 8192], [8, 16, 32, 64])
    loss = truth.predict(n.ravel(), k.ravel()) * np.exp(0.002 * rng.standard_normal(n.size))
    runs = pd.DataFrame({"n_features": n.ravel(), "k": k.ravel(), "loss": loss})
    # a shorter run of each pair too: only the best of a pair is its point
    runs = pd.concat([runs, runs.assign(loss=runs["loss"] * 1.2)], ignore_index=True)
    fit = fit_joint_law(runs, n_draws=40)
    assert fit["n_points"] == 20
    for name in NAMES:
        lo, hi = fit[name]["ci95"]
        assert lo <= getattr(truth, name) <= hi, name
    assert fit["rms_log_residual"] < 0.005
