"""`monoscale analyze / plan / plan-lr` from CSV: right numbers, bad input refused whole."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from planted_runs import isoflop_runs, lr_runs

from analysis.isoflop import assign_budgets
from analysis.parametric import ParametricFit
from sweeps.cli import main
from sweeps.spec import load_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chinchilla"
D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH
TRUTH = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
BUDGETS = [3e10, 1e11, 3e11, 1e12]
LR_COEF, LR_EXP = 1.4e-2, -0.1  # LR_opt(C) ~ 1e-3 at C ~ 3e11


@pytest.fixture(scope="module")
def synthetic_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1 at lr 1e-3 (IsoFLOP design), and a stage-2 LR sweep at the best width of
    three budgets (those stage-1 runs replaced by their LR sweep)."""
    stage1 = isoflop_runs(TRUTH, BUDGETS, K, seed=3).assign(lr=1e-3)
    budget = assign_budgets(stage1["compute_flops"])
    best = stage1.loc[stage1.groupby(budget)["loss"].idxmin()].iloc[:3]
    # curvature 0.5: loss ~5% up half a decade from LR_opt at these losses, as on MiniLM
    stage2 = lr_runs(best, LR_COEF, LR_EXP, curvature=0.5, noise_rel=0.001)
    path = tmp_path_factory.mktemp("csv") / "runs.csv"
    runs = pd.concat([stage1.drop(index=best.index), stage2])
    runs.assign(batch_size_tokens=BATCH, d_in=D_IN).to_csv(path, index=False)
    return path


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_chinchilla_csv_gives_epoch_parameters(tmp_path: Path) -> None:
    raw = pd.read_csv(FIXTURES / "svg_extracted_data.csv").sort_values("loss").iloc[:-5]
    csv = tmp_path / "chinchilla.csv"
    pd.DataFrame({"n_features": raw["Model Size"], "n_steps": raw["Training FLOP"] / (6 * raw["Model Size"]),
                  "compute_flops": raw["Training FLOP"], "loss": raw["loss"]}).to_csv(csv, index=False)
    assert run_cli("analyze", "--runs-csv", csv, "--out", tmp_path / "out", "--draws", "5") == 0
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    target = json.loads((FIXTURES / "expected_fits.json").read_text())["targets"]["huber_min_240_rows"]
    p = fits["parametric"]
    assert fits["flops_per_feature_step"] == pytest.approx(6.0)  # k inferred from C / (N D)
    assert p["alpha"]["value"] == pytest.approx(target["alpha"], abs=target["tolerance"]["alpha_abs"])
    assert p["beta"]["value"] == pytest.approx(target["beta"], abs=target["tolerance"]["beta_abs"])
    assert p["E"]["value"] == pytest.approx(target["E"], abs=target["tolerance"]["E_abs"])
    assert p["A"]["value"] == pytest.approx(target["A"], rel=target["tolerance"]["A_rel"])
    assert p["B"]["value"] == pytest.approx(target["B"], rel=target["tolerance"]["B_rel"])
    assert all(len(p[k]["ci95"]) == 2 for k in ("E", "A", "B", "alpha", "beta"))
    for name in ("loss_vs_compute.png", "isoflop.svg", "allocation.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_analyze_plan_and_plan_lr(synthetic_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("analyze", "--runs-csv", synthetic_csv, "--out", out, "--draws", "20") == 0
    fits = json.loads((out / "fits.json").read_text())
    assert fits["n_runs_lr"] == 3 * 7 and fits["lr_stage1"] == pytest.approx(1e-3)
    assert fits["lr_opt"]["exponent"] == pytest.approx(LR_EXP, abs=0.02)
    for key in ("loss_vs_compute", "features_opt", "steps_opt", "lr_opt"):
        assert {"coefficient", "exponent", "exponent_ci95"} <= set(fits[key])
    assert (out / "lr.png").exists() and (out / "lr.svg").exists()

    plan_path = tmp_path / "plan.json"
    assert run_cli("plan", "--fits", out / "fits.json", "--compute", "1e13", "--out", plan_path) == 0
    plan = json.loads(plan_path.read_text())
    assert plan["lr"] == pytest.approx(LR_COEF * plan["compute_flops"] ** LR_EXP, rel=0.05)
    assert plan["compute_flops"] == pytest.approx(1e13, rel=0.01)
    assert plan["n_features"] * plan["n_steps"] * K == pytest.approx(plan["compute_flops"])
    lo, hi = plan["predicted_loss_pi95"]
    assert lo < plan["predicted_loss"] < hi

    # Stage 3: the planned run, trained (here: the true law's loss), against its prediction.
    achieved = float(TRUTH.predict(plan["n_features"], plan["n_steps"]))
    with_run = tmp_path / "with_run.csv"
    pd.concat([pd.read_csv(synthetic_csv), pd.DataFrame([{
        "n_features": plan["n_features"], "n_steps": plan["n_steps"], "lr": plan["lr"],
        "compute_flops": plan["compute_flops"], "loss": achieved}])]).to_csv(with_run, index=False)
    assert run_cli("analyze", "--runs-csv", with_run, "--out", tmp_path / "out3", "--draws", "0",
                   "--plan", plan_path) == 0
    checked = json.loads((tmp_path / "out3" / "fits.json").read_text())
    assert checked["n_runs"] == fits["n_runs"]  # the planned run is not fitted
    assert checked["planned_run"]["achieved_loss"] == pytest.approx(achieved)
    assert checked["planned_run"]["within_pi95"] is True

    spec = tmp_path / "stage1.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "synth", "stage": 1, "cache": {"path": "caches/synth"},
        "base": {"lr": 1e-3, "batch_size_tokens": BATCH},
        "isoflop": {"compute_flops": BUDGETS, "n_features": [256, 1024, 4096]},
    }))
    spec2 = tmp_path / "sub" / "stage2.yaml"
    assert run_cli("plan-lr", spec, "--fits", out / "fits.json", "--budgets", "3", "--out", spec2) == 0
    loaded = load_spec(spec2)  # the sweeps' own parser accepts it
    assert loaded.stage == 2 and loaded.name == "synth-lr"
    assert loaded.cache.path == (tmp_path / "caches" / "synth").resolve()
    assert len(loaded.sizes) == 3 and dict(loaded.axes)["lr"][2] == pytest.approx(1e-3)
    f_opt, _ = TRUTH.optimal_allocation(BUDGETS[-1], K)
    assert loaded.sizes[-1][0] == pytest.approx(f_opt, rel=0.2)
    assert run_cli("plan-lr", spec, "--fits", out / "fits.json", "--budgets", "2",
                   "--search-trials", "6", "--out", spec2) == 0
    searched = load_spec(spec2)
    assert searched.search is not None and searched.search.n_trials == 6
    assert searched.search.low < 1e-3 < searched.search.high and len(searched.sizes) == 2


def test_plan_lr_without_fits_analyzes_the_runs_itself(synthetic_csv: Path, tmp_path: Path) -> None:
    """plan-lr's --budgets is a count of LR budgets; analyze's --budgets lists IsoFLOP
    budgets in FLOPs. Without --fits, plan-lr runs the analysis and used to hand its count
    (3) to it as the IsoFLOP budgets: an IndexError in analysis/isoflop.py."""
    out = tmp_path / "stage2.yaml"
    assert run_cli("plan-lr", "--runs-csv", synthetic_csv, "--budgets", "3", "--out", out) == 0
    spec = yaml.safe_load(out.read_text())
    assert len(spec["points"]) == 3 and len(spec["grid"]["lr"]) == 5
    f_opt, _ = TRUTH.optimal_allocation(BUDGETS[-1], K)
    assert spec["points"][-1]["n_features"] == pytest.approx(f_opt, rel=0.2)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda df: df.drop(columns=["compute_flops"]), "missing column(s): compute_flops"),
    (lambda df: df.assign(loss=df["loss"].where(df.index != 2)), "NaN or non-positive loss"),
    (lambda df: df.assign(n_features=512), "n_features=512"),
    (lambda df: df.head(4).assign(n_features=[1, 2, 3, 4]), "at least 6 runs"),
])
def test_bad_input_exits_2_and_writes_nothing(synthetic_csv: Path, tmp_path: Path, capsys, edit, message) -> None:
    csv = tmp_path / "bad.csv"
    edit(pd.read_csv(synthetic_csv)).to_csv(csv, index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "fits.json").write_text("{}")  # a previous result survives a failed run
    assert run_cli("analyze", "--runs-csv", csv, "--out", out, "--draws", "0") == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "out"]
    assert (out / "fits.json").read_text() == "{}"


def test_plan_needs_a_budget(tmp_path: Path, capsys) -> None:
    (tmp_path / "fits.json").write_text("{}")
    assert run_cli("plan", "--fits", tmp_path / "fits.json", "--out", tmp_path / "p.json") == 2
    assert "--compute C or --features F" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_predicted_against_achieved_picks_the_run_of_the_planned_lr() -> None:
    """Replanning only the LR gives a run of the same F and steps: it must not be confused
    with the earlier one (the first demo did)."""
    from analysis.plan import check_plan

    runs = pd.DataFrame({"n_features": [3712, 3712], "n_steps": [2192, 2192],
                         "lr": [3.162e-3, 9.5115e-4], "loss": [145.5, 146.9]})
    plan = {"n_features": 3712, "n_steps": 2192, "lr": 9.5115e-4, "predicted_loss": 147.5,
            "predicted_loss_pi95": [142.4, 154.7]}
    report = check_plan(plan, runs)
    assert report is not None and report["achieved_loss"] == 146.9
    assert check_plan({**plan, "lr": 1e-2}, runs) is None


def test_a_plan_carries_the_specs_numbers_as_numbers(synthetic_csv: Path, tmp_path: Path,
                                                     capsys) -> None:
    """`l1_coefficient: 2e0` in a spec is the number 2 (the spec reader's YAML, where
    plain YAML 1.1 reads a string): the plan carries 2.0, and `submit --plan` takes it."""
    out = tmp_path / "out"
    assert run_cli("analyze", "--runs-csv", synthetic_csv, "--out", out, "--draws", "0") == 0
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "meta.json").write_text("{}")
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ncache: {path: cache}\n"
                    "base: {lr: 1e-3, batch_size_tokens: 256, l1_coefficient: 2e0}\n"
                    "grid: {n_features: [256, 1024], n_steps: [100]}\n")
    plan_path = tmp_path / "plan.json"
    assert run_cli("plan", spec, "--fits", out / "fits.json", "--compute", "1e13",
                   "--out", plan_path) == 0
    plan = json.loads(plan_path.read_text())
    assert plan["run_config"]["l1_coefficient"] == 2.0
    capsys.readouterr()
    from sweeps.planned_run import with_plan

    planned = with_plan(load_spec(spec), plan)
    assert planned.base["l1_coefficient"] == 2.0 and planned.sizes == (
        (plan["n_features"], plan["n_steps"]),)
