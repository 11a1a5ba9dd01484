"""Sweep specs: validation names the bad field; expansion is pure and gives known grids."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sae_core.errors import UserError
from sweeps.spec import expand, load_spec

D_IN = 64


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


BASE = """
name: t
cache: {path: caches/t}
base: {lr: 1e-3, batch_size_tokens: 256}
"""


def test_cross_product_in_stable_order_with_relative_cache(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, BASE + """
grid:
  n_features: [128, 256]
  n_steps: [10, 20, 40]
  seed: [0, 1]
"""))
    configs = expand(spec, D_IN)
    assert len(configs) == 2 * 3 * 2
    assert [(c.n_features, c.n_steps, c.seed) for c in configs[:3]] == [
        (128, 10, 0), (128, 10, 1), (128, 20, 0)]
    assert all(c.lr == 1e-3 and c.batch_size_tokens == 256 for c in configs)  # 1e-3 a float
    assert configs[0].cache_dir == str((tmp_path / "caches/t").resolve())
    assert len({c.run_key for c in configs}) == 12
    # pure: a second load and expansion gives the same keys in the same order
    again = expand(load_spec(tmp_path / "spec.yaml"), D_IN)
    assert [c.run_key for c in again] == [c.run_key for c in configs]
    assert configs[5].compute_flops == 12 * D_IN * 128 * configs[5].n_steps * 256


def test_logspace_axis_rounds_int_fields(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, BASE.replace("base: {lr: 1e-3, ", "base: {") + """
grid:
  n_features: {logspace: [256, 4096], num: 5}
  n_steps: [100]
  lr: {logspace: [1e-4, 1e-2], num: 3}
"""))
    configs = expand(spec, D_IN)
    assert sorted({c.n_features for c in configs}) == [256, 512, 1024, 2048, 4096]
    assert sorted({c.lr for c in configs}) == [1e-4, 1e-3, 1e-2]


def test_points_and_isoflop_sizes(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, BASE + """
points:
  - {n_features: 1024, n_steps: 500}
  - {n_features: 256, n_steps: 50}
grid: {seed: [0, 1]}
"""))
    assert [(c.n_features, c.n_steps, c.seed) for c in expand(spec, D_IN)] == [
        (1024, 500, 0), (1024, 500, 1), (256, 50, 0), (256, 50, 1)]

    budget = 12 * D_IN * 512 * 256 * 100  # exactly 100 steps at F=512
    spec = load_spec(write_spec(tmp_path, BASE + f"""
isoflop:
  compute_flops: [{budget:.6e}]
  n_features: [256, 512, 1024]
"""))
    configs = expand(spec, D_IN)
    assert [(c.n_features, c.n_steps) for c in configs] == [(256, 200), (512, 100), (1024, 50)]
    assert all(c.compute_flops == pytest.approx(budget) for c in configs)


@pytest.mark.parametrize(("extra", "field"), [
    ("grid: {n_features: [128, 256, -4], n_steps: [10]}", "grid.n_features[2]"),
    ("grid: {n_features: [128], n_steps: []}", "grid.n_steps"),
    ("grid: {n_features: [128], n_steps: [10], lrr: [1e-3]}", "grid.lrr"),
    ("grid: {n_features: [128], n_steps: ['10']}", "grid.n_steps[0]"),
    ("grid: {n_features: [128.5], n_steps: [10]}", "grid.n_features[0]"),
    ("grid: {n_features: [128], n_steps: [10], init_decoder_norm: [0.0]}",
     "grid.init_decoder_norm[0]"),
    ("grid: {n_features: [128], n_steps: [10], lr: [1e-2]}", "grid.lr"),
    ("grid: {n_features: [128]}", "grid.n_steps"),
    ("grid: {n_features: [128], n_steps: [10]}\nbogus: 1", "bogus"),
    ("grid: {n_features: [128], n_steps: [10]}\nresources: {cpu: 0}", "resources.cpu"),
    ("grid: {n_features: [128], n_steps: [10]}\nresources: {gpus: 1}", "resources.gpus"),
    ("grid: {n_features: [128], n_steps: [10]}\nmax_concurrent_trials: 0",
     "max_concurrent_trials"),
    ("grid: {n_features: {logspace: [0, 10], num: 3}, n_steps: [10]}",
     "grid.n_features.logspace[0]"),
    ("points: [{n_features: 1, n_steps: 0}]", "points[0].n_steps"),
    ("isoflop: {compute_flops: [1e9], n_features: [64], n_steps: [1]}", "isoflop.n_steps"),
    ("points: [{n_features: 1, n_steps: 1}]\ngrid: {n_features: [2]}",
     "points and grid.n_features"),
    ("grid: {n_features: [128], n_steps: [10]}\nsearch: {axis: n_steps, range: [1, 2], "
     "n_trials: 3}", "search.axis"),
    ("grid: {n_features: [128], n_steps: [10]}\neval: {splice: yes please}", "eval.splice"),
    ("grid: {n_features: [128], n_steps: [10]}\neval: {splice: true, n_tokens: 0}",
     "eval.n_tokens"),
    ("grid: {n_features: [128], n_steps: [10]}\neval: {spliced: true}", "eval.spliced"),
])
def test_bad_specs_name_the_field(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(UserError) as info:
        load_spec(write_spec(tmp_path, BASE + extra))
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_bad_base_and_cache(tmp_path: Path) -> None:
    grid = "grid: {n_features: [128], n_steps: [10]}\n"
    for text, field in [
        (BASE.replace("batch_size_tokens: 256", "batch_size_tokens: -1") + grid,
         "base.batch_size_tokens"),
        (BASE.replace("lr: 1e-3", "learning_rate: 1e-3") + grid, "base.learning_rate"),
        (BASE.replace("lr: 1e-3", "d_in: 3") + grid, "base.d_in"),
        ("name: t\ncache: {}\n" + grid, "cache.path"),
        ("name: t\ncache: {path: c, recipe: 1}\n" + grid, "cache.recipe"),
        ("name: 'a b'\ncache: {path: c}\n" + grid, "name"),
        (BASE.replace(", batch_size_tokens: 256", "") + "isoflop: {compute_flops: [1e9], "
         "n_features: [64]}\ngrid: {batch_size_tokens: [256, 512]}", "grid.batch_size_tokens"),
    ]:
        with pytest.raises(UserError, match=f"^{field}:"):
            load_spec(write_spec(tmp_path, text))


def test_isoflop_budget_too_small_is_an_error(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, BASE + "isoflop: {compute_flops: [10], "
                                "n_features: [64]}"))
    with pytest.raises(UserError, match="isoflop"):
        expand(spec, D_IN)


def test_search_spec(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, BASE.replace("lr: 1e-3, ", "") + """
points: [{n_features: 128, n_steps: 10}]
search: {range: [1e-4, 1e-2], n_trials: 4}
"""))
    assert spec.search is not None
    assert (spec.search.axis, spec.search.low, spec.search.high, spec.search.n_trials) == (
        "lr", 1e-4, 1e-2, 4)


@pytest.mark.parametrize("name", ["smoke.yaml", "demo.yaml"])
def test_shipped_specs_load(name: str) -> None:
    path = Path(__file__).parents[1] / "sweeps" / name
    spec = load_spec(path)
    d_in = 384 if name == "demo.yaml" else yaml.safe_load(path.read_text())["cache"][
        "build"]["synthetic"]["d_in"]
    configs = expand(spec, d_in)
    assert (6 <= len(configs) <= 8) if name == "smoke.yaml" else len(configs) == 16
    if name == "demo.yaml":  # branched, it would cost at most 0.65 of the independent grid
        from sae_core.branching import branched_compute_flops, families, independent_compute_flops

        grouped = families(configs)
        assert not spec.branching and len(grouped) == 4
        ratio = (sum(map(branched_compute_flops, grouped))
                 / sum(map(independent_compute_flops, grouped)))
        assert 0.62 < ratio <= 0.65


def test_plan_narrows_the_spec_to_the_planned_run(tmp_path: Path) -> None:
    from sweeps.planned_run import with_plan

    spec = load_spec(write_spec(tmp_path, BASE + "isoflop: {compute_flops: [1e12], "
                                "n_features: [256, 1024]}"))
    plan = {"n_features": 4096, "n_steps": 900, "lr": 2e-3, "compute_flops": 1.0,
            "run_config": {"n_features": 4096, "n_steps": 900, "lr": 2e-3, "d_in": D_IN,
                           "batch_size_tokens": 256}}
    planned = with_plan(spec, plan)
    assert (planned.name, planned.stage) == ("t-plan", 3)
    [cfg] = expand(planned, D_IN)
    assert (cfg.n_features, cfg.n_steps, cfg.lr, cfg.batch_size_tokens) == (4096, 900, 2e-3, 256)
    with pytest.raises(UserError, match="^plan.n_steps: missing"):
        with_plan(spec, {"n_features": 8})


def test_arch_and_its_sparsity_control_as_grid_axes(tmp_path: Path) -> None:
    """arch and k as axes: a run per combination the recipes allow, each with its own
    recipe's defaults (relu's λ = 5; topk's lr prior 2e-4 / sqrt(F / 2^14))."""
    spec = load_spec(write_spec(tmp_path, """
name: t
cache: {path: caches/t}
base: {batch_size_tokens: 256}
grid: {n_features: [1024], n_steps: [10], arch: [topk, batchtopk], k: [8, 16]}
"""))
    configs = expand(spec, D_IN)
    assert [(c.arch, c.k) for c in configs] == [("topk", 8), ("topk", 16), ("batchtopk", 8),
                                                ("batchtopk", 16)]
    assert configs[0].lr == pytest.approx(2e-4 / (1024 / 2**14) ** 0.5)
    assert configs[0].l1_coefficient is None and configs[0].aux_k == D_IN // 2
    groups = load_spec(write_spec(tmp_path, BASE + """
grid: {n_features: [256], n_steps: [10], arch: [matryoshka_batchtopk],
       matryoshka_groups: [[64, 192], [0.5, 0.5]]}
"""))
    assert [c.matryoshka_groups for c in expand(groups, D_IN)] == [(64.0, 192.0), (0.5, 0.5)]


@pytest.mark.parametrize(("settings", "message"), [
    ("arch: gated", "arch must be one of relu, topk, batchtopk, jumprelu, matryoshka_batchtopk"),
    ("arch: relu, k: 8", "k does not apply to arch relu"),
    ("arch: topk, l1_coefficient: 5", "l1_coefficient does not apply to arch topk"),
    ("arch: topk, k: 512", "k must be below n_features=128"),
    ("arch: topk, k: 0", "k must be a positive integer"),
    ("arch: matryoshka_batchtopk, matryoshka_groups: [100, 100]", "must be sizes summing to"),
    ("arch: jumprelu, target_l0: 600", "target_l0 must be below"),
])
def test_bad_arch_settings_are_refused_before_anything_runs(tmp_path: Path, settings: str,
                                                            message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_spec(write_spec(tmp_path, f"""
name: t
cache: {{path: caches/t}}
base: {{{settings}}}
grid: {{n_features: [128, 512], n_steps: [10]}}
"""))


def test_variants_cross_the_grid_with_settings_that_go_together(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, BASE + """
grid: {n_features: [128, 256], n_steps: [10], seed: [0, 1]}
variants: [{arch: relu, l1_coefficient: 4}, {arch: topk, k: 8}]
"""))
    configs = expand(spec, D_IN)
    assert [(c.n_features, c.arch, c.seed) for c in configs[:4]] == [
        (128, "relu", 0), (128, "relu", 1), (128, "topk", 0), (128, "topk", 1)]
    assert {(c.arch, c.l1_coefficient, c.k) for c in configs} == {("relu", 4.0, None),
                                                                   ("topk", None, 8)}
    for text, message in [
        ("variants: [{k: 8}]", "k does not apply to arch relu"),
        ("variants: [{arch: topk, lr: 1e-3}]", "variants[0].lr: also set in base"),
        ("variants: [{n_features: 8}]", "not a RunConfig field a variant may set"),
        ("variants: []", "non-empty list"),
    ]:
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_spec(write_spec(tmp_path, BASE + "grid: {n_features: [128], n_steps: [10]}\n"
                                 + text + "\n"))
