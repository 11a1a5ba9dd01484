"""On runs drawn from a known law, the fits recover it and their intervals cover it."""

from __future__ import annotations

import pytest
from planted_runs import isoflop_runs

from analysis.parametric import ParametricFit
from analysis.plan import plan_run
from analysis.report import analyze

# An SAE-sized truth: d=64, batch 256 tokens, F_opt from ~500 to ~2500 over the budgets.
D_IN, BATCH = 64, 256
K = 12 * D_IN * BATCH  # C = 12 d F T (docs/METHOD.md §2.1), T = steps x batch
TRUTH = ParametricFit(E=0.2, A=40.0, B=20.0, alpha=0.6, beta=0.5, objective=0.0, n_runs=0)
BUDGETS = [3e10, 1e11, 3e11, 1e12]


@pytest.fixture(scope="module")
def fits() -> dict:
    runs = isoflop_runs(TRUTH, BUDGETS, K, noise_rel=0.01, seed=1)
    return analyze(runs, batch_size_tokens=BATCH, d_in=D_IN, n_draws=100)


def inside(value: float, ci: list[float]) -> bool:
    return ci[0] <= value <= ci[1]


def test_exponents_within_their_intervals(fits: dict) -> None:
    p = fits["parametric"]
    assert inside(TRUTH.alpha, p["alpha"]["ci95"]) and inside(TRUTH.beta, p["beta"]["ci95"])
    assert p["alpha"]["value"] == pytest.approx(TRUTH.alpha, abs=0.05)
    assert p["beta"]["value"] == pytest.approx(TRUTH.beta, abs=0.05)
    # F_opt ∝ C^a with a = beta / (alpha + beta), from the IsoFLOP minima (their intervals'
    # coverage over replicates: tests/test_fit_coverage.py):
    assert fits["features_opt"]["source"] == "isoflop"
    assert fits["features_opt"]["exponent"] == pytest.approx(TRUTH.a, abs=0.02)
    assert fits["steps_opt"]["exponent"] == pytest.approx(1 - TRUTH.a, abs=0.02)
    for law in ("features_opt", "steps_opt"):
        low, high = fits[law]["exponent_ci95"]
        assert 0 < high - low < 0.2
    assert fits["edge_flags"] == []  # the design brackets the optimum at every budget
    assert [row["budget_flops"] for row in fits["frontier_per_budget"]] == pytest.approx(BUDGETS, rel=0.01)


def test_planned_allocation_at_10x_within_intervals(fits: dict) -> None:
    pred = fits["prediction"]
    assert pred["compute_flops"] == pytest.approx(10 * max(BUDGETS), rel=0.01)
    f_true, s_true = TRUTH.optimal_allocation(pred["compute_flops"], K)
    assert inside(f_true, pred["n_features_opt"]["ci95"])
    assert inside(s_true, pred["n_steps_opt"]["ci95"])
    plan = plan_run(fits, compute_flops=pred["compute_flops"])
    assert plan["n_features"] == pytest.approx(f_true, rel=0.1)
    assert plan["compute_flops"] == pytest.approx(pred["compute_flops"], rel=0.01)
    true_loss = float(TRUTH.predict(plan["n_features"], plan["n_steps"]))
    assert inside(true_loss, plan["predicted_loss_pi95"])
    assert plan["run_config"] == {"n_features": plan["n_features"], "n_steps": plan["n_steps"],
                                  "batch_size_tokens": BATCH, "d_in": D_IN}


def test_plan_for_a_fixed_width(fits: dict) -> None:
    """--features F alone: the steps at which F is compute-optimal (inverse allocation)."""
    c = 3e12
    f_opt, s_opt = TRUTH.optimal_allocation(c, K)
    plan = plan_run(fits, n_features=int(round(f_opt)))
    assert plan["n_steps"] == pytest.approx(s_opt, rel=0.1)
    assert plan["compute_flops"] == pytest.approx(c, rel=0.15)
    both = plan_run(fits, compute_flops=c, n_features=1024, power_of_two=True)
    assert both["n_features"] == 1024 and both["n_steps"] == round(c / (K * 1024))
    assert plan_run(fits, compute_flops=c, power_of_two=True)["n_features"] in (1024, 2048, 4096)


@pytest.mark.parametrize(("centre_dex", "hint"), [(-0.9, "add larger n_features"),
                                                  (0.9, "add smaller n_features")])
def test_edge_flag_on_grid_cut_short(centre_dex: float, hint: str) -> None:
    runs = isoflop_runs(TRUTH, BUDGETS, K, span_dex=1.0, centre_dex=centre_dex, seed=2)
    fits = analyze(runs, batch_size_tokens=BATCH, d_in=D_IN, n_draws=0)
    assert len(fits["edge_flags"]) == len(BUDGETS)
    assert all(hint in flag for flag in fits["edge_flags"])


def test_a_law_without_an_optimum_gives_clear_errors_not_tracebacks(fits: dict) -> None:
    """alpha <= 0 (loss rising with F): no compute-optimal width, so fits.json holds None
    for it; the summary, the plot, `plan` and `plan-lr` must say so, not crash."""
    import copy

    import matplotlib

    from analysis.plan_lr import lr_sweep_spec
    from analysis.plots import allocation
    from analysis.report import format_summary
    from sae_core.errors import UserError

    matplotlib.use("Agg")
    bad = copy.deepcopy(fits)
    bad["parametric"]["alpha"]["value"] = -0.2
    for key in ("n_features_opt", "n_steps_opt", "loss"):
        bad["prediction"][key] = {"value": None, "ci95": [None, None], "pi95": [None, None]}
    bad["features_opt"]["coefficient"] = None  # as when the allocation is the law's
    summary = format_summary(bad)
    assert "F_opt=n/a" in summary and "NO OPTIMUM" in summary
    allocation(isoflop_runs(TRUTH, BUDGETS, K, seed=1), bad)
    with pytest.raises(UserError, match="no compute-optimal steps for F=1024"):
        plan_run(bad, n_features=1024)
    with pytest.raises(UserError, match="no compute-optimal width"):
        plan_run(bad, compute_flops=1e13)
    with pytest.raises(UserError, match="no compute-optimal width"):
        lr_sweep_spec(bad, 3, {"base": {"lr": 1e-3}})
    one_budget = copy.deepcopy(fits)
    one_budget["isoflop"] = one_budget["isoflop"][:1]
    with pytest.raises(UserError, match="an LR law needs points at 2 or more"):
        lr_sweep_spec(one_budget, 3, {"base": {"lr": 1e-3}})


def test_the_lr_grid_keeps_stage_ones_lr_exact_at_its_centre(fits: dict) -> None:
    """Stage 2's centre runs join stage 1's fit only if their lr equals stage 1's."""
    from analysis.plan_lr import lr_sweep_spec

    lr0 = 3.16227766e-4  # a median of stage-1 lrs: more digits than the grid's 4
    lrs = lr_sweep_spec({**fits, "lr_stage1": lr0}, 3)["grid"]["lr"]
    assert len(lrs) % 2 == 1 and lrs[len(lrs) // 2] == lr0
    assert lrs[0] == float(f"{lrs[0]:.4g}")  # the others stay readable
