"""The `adaptive:` spec key: off by default, `true` or a mapping of settings, strict checks,
and the derived spec of a round (explicit points: the design's pairs plus the additions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.adaptive import AdaptiveSettings
from sae_core.errors import UserError
from sweeps.adaptive import design_of, with_points
from sweeps.spec import expand, load_spec

D_IN = 64
ISO = """
name: t
cache: {path: caches/t}
base: {lr: 1e-3, batch_size_tokens: 256}
isoflop: {compute_flops: [1e12, 4e12], n_features: [256, 512, 1024]}
"""


def spec_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_off_by_default_true_or_settings(tmp_path: Path) -> None:
    assert load_spec(spec_with(tmp_path, ISO)).adaptive is None
    assert load_spec(spec_with(tmp_path, ISO + "adaptive: false\n")).adaptive is None
    assert load_spec(spec_with(tmp_path, ISO + "adaptive: true\n")).adaptive == AdaptiveSettings()
    spec = load_spec(spec_with(tmp_path, ISO + "adaptive: {max_rounds: 2, compute_cap_flops: 3e13}\n"))
    assert spec.adaptive == AdaptiveSettings(max_rounds=2, compute_cap_flops=3e13)


@pytest.mark.parametrize(("extra", "message"), [
    ("adaptive: {max_round: 2}\n", "adaptive.max_round"),
    ("adaptive: {max_rounds: 0}\n", "adaptive.max_rounds: must be a positive integer"),
    ("adaptive: {compute_cap_flops: -1}\n", "adaptive.compute_cap_flops: must be positive"),
])
def test_bad_settings_name_the_field(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_spec(spec_with(tmp_path, ISO + extra))


def test_needs_an_isoflop_design(tmp_path: Path) -> None:
    grid = ISO.replace("isoflop: {compute_flops: [1e12, 4e12], n_features: [256, 512, 1024]}",
                       "grid: {n_features: [256], n_steps: [100]}")
    with pytest.raises(UserError, match="adaptive: needs an isoflop"):
        load_spec(spec_with(tmp_path, grid + "adaptive: true\n"))


def test_round_spec_keeps_the_design_and_adds_the_points(tmp_path: Path) -> None:
    spec = load_spec(spec_with(tmp_path, ISO + "adaptive: true\n"))
    design = design_of(spec, D_IN)
    assert design.flops_per_feature_step == 12 * D_IN * 256  # docs/METHOD.md §2.1: C = 12 d F T
    assert design.spacing_dex == pytest.approx(0.30103)
    first = expand(spec, D_IN)
    derived = with_points(spec, D_IN, [(2048, 124), (2048, 124)])
    configs = expand(derived, D_IN)
    assert [c.run_key for c in configs[:len(first)]] == [c.run_key for c in first]
    assert [(c.n_features, c.n_steps) for c in configs[len(first):]] == [(2048, 124)]
