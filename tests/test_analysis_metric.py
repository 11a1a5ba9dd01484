"""`analyze --metric NAME` on a splice metric, from CSV: the laws are fitted to it, a plan
made from those fits predicts it, the planned run is checked on it, and a score that
rises with quality is refused with the name of its falling twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from planted_runs import isoflop_runs

from analysis.parametric import ParametricFit
from sweeps.cli import main

D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH
BUDGETS = [3e10, 1e11, 3e11, 1e12]
LOSS = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
# ΔLM loss of the same runs: another law, so that a fit on the wrong column shows.
DELTA = ParametricFit(E=0.01, A=6.0, B=3.0, alpha=0.45, beta=0.35, objective=0.0, n_runs=0)


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = isoflop_runs(LOSS, BUDGETS, K, seed=3).assign(lr=1e-3)
    noise = np.exp(0.01 * np.random.default_rng(4).standard_normal(len(runs)))
    delta = DELTA.predict(runs["n_features"].to_numpy(), runs["n_steps"].to_numpy()) * noise
    path = tmp_path_factory.mktemp("csv") / "runs.csv"
    runs.assign(delta_lm_loss=delta, ce_loss_score=1 - delta / 5, batch_size_tokens=BATCH,
                d_in=D_IN).to_csv(path, index=False)
    return path


def test_a_rising_score_is_refused_naming_its_gap(runs_csv: Path, tmp_path: Path,
                                                 capsys) -> None:
    assert run_cli("analyze", "--runs-csv", runs_csv, "--metric", "ce_loss_score",
                   "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "rises with quality" in err and "ce_loss_gap" in err
    assert not (tmp_path / "out").exists()


def test_laws_plan_and_planned_run_on_delta_lm_loss(runs_csv: Path, tmp_path: Path,
                                                    capsys) -> None:
    out = tmp_path / "out"
    assert run_cli("analyze", "--runs-csv", runs_csv, "--metric", "delta_lm_loss", "--out",
                   out, "--draws", "20") == 0
    fits = json.loads((out / "fits.json").read_text())
    assert fits["metric"] == "delta_lm_loss"
    assert fits["parametric"]["alpha"]["value"] == pytest.approx(DELTA.alpha, abs=0.1)
    assert fits["parametric"]["E"]["value"] < 0.1  # ΔLM loss's floor, not the loss's 0.2

    plan_path = tmp_path / "plan.json"
    assert run_cli("plan", "--fits", out / "fits.json", "--compute", 1e13, "--out",
                   plan_path) == 0
    plan = json.loads(plan_path.read_text())
    assert plan["metric"] == "delta_lm_loss"
    truth = float(DELTA.predict(plan["n_features"], plan["n_steps"]))
    assert plan["predicted_loss"] == pytest.approx(truth, rel=0.1)

    # The planned run trained: its ΔLM loss is the truth, its loss something else.
    with_run = tmp_path / "with_run.csv"
    pd.concat([pd.read_csv(runs_csv), pd.DataFrame([{
        "n_features": plan["n_features"], "n_steps": plan["n_steps"], "lr": plan["lr"],
        "compute_flops": plan["compute_flops"], "loss": 99.0, "delta_lm_loss": truth,
        "batch_size_tokens": BATCH, "d_in": D_IN}])]).to_csv(with_run, index=False)
    assert run_cli("analyze", "--runs-csv", with_run, "--metric", "delta_lm_loss", "--out",
                   tmp_path / "out3", "--draws", "0", "--plan", plan_path) == 0
    checked = json.loads((tmp_path / "out3" / "fits.json").read_text())["planned_run"]
    assert checked["metric"] == "delta_lm_loss"
    assert checked["achieved_loss"] == pytest.approx(truth)
    assert checked["relative_error"] == pytest.approx(truth / plan["predicted_loss"] - 1)

    # A plan on ΔLM loss checked against the paper's loss would compare apples and pears.
    capsys.readouterr()
    assert run_cli("analyze", "--runs-csv", with_run, "--out", tmp_path / "out4",
                   "--plan", plan_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--metric delta_lm_loss" in err
