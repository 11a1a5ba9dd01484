"""The planted dictionary has the L0, frequencies, directions and noise it was asked for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_core.cache import ActivationCache
from sae_core.errors import UserError
from sae_core.synthetic import PlantedDictionary, build_synthetic_cache


def planted(cache: ActivationCache) -> PlantedDictionary:
    """The generator parameters recorded in a synthetic cache's meta.json."""
    names = {f.name for f in dataclasses.fields(PlantedDictionary)}
    return PlantedDictionary(**{k: v for k, v in cache.meta["source"].items() if k in names})


def test_feature_probabilities_are_zipf_with_the_planted_l0() -> None:
    params = PlantedDictionary(n_true_features=100, l0=2.0, zipf_exponent=1.2)
    p = params.feature_probabilities()
    assert p.sum() == pytest.approx(2.0)
    assert p[0] / p[9] == pytest.approx(10**1.2)


def test_saturated_features_keep_the_l0() -> None:
    p = PlantedDictionary(n_true_features=64, l0=10.0, zipf_exponent=2.0).feature_probabilities()
    assert p.max() == 1.0 and p.sum() == pytest.approx(10.0)
    assert np.all(np.diff(p) <= 0)  # still ordered by frequency


def test_samples_have_the_planted_l0_directions_and_noise() -> None:
    params = PlantedDictionary(d_in=24, n_true_features=48, l0=3.0, noise_std=0.05, seed=7)
    x, codes = params.sample(50_000, np.random.default_rng(0))
    dictionary = params.dictionary()
    np.testing.assert_allclose(np.linalg.norm(dictionary, axis=1), 1.0, rtol=1e-12)
    assert (codes > 0).sum(1).mean() == pytest.approx(3.0, rel=0.02)
    frequencies = (codes > 0).mean(0)
    np.testing.assert_allclose(frequencies, params.feature_probabilities(), atol=0.01)
    active = codes[codes > 0]
    assert active.min() >= 0.5 and active.max() <= 1.5  # "uniform" magnitudes
    residual = x - codes @ dictionary
    assert residual.std() == pytest.approx(0.05, rel=0.02)


def test_same_seed_same_dictionary() -> None:
    assert np.array_equal(PlantedDictionary(seed=3).dictionary(),
                          PlantedDictionary(seed=3).dictionary())
    assert not np.array_equal(PlantedDictionary(seed=3).dictionary(),
                              PlantedDictionary(seed=4).dictionary())


def test_synthetic_cache_records_its_generator(synthetic_cache: Path) -> None:
    cache = ActivationCache.open(synthetic_cache, verify="full")
    source, params = cache.meta["source"], planted(cache)
    assert source["kind"] == "synthetic"
    assert {k: source[k] for k in ("d_in", "n_true_features", "l0", "zipf_exponent",
                                   "noise_std", "seed")} == {
        "d_in": 32, "n_true_features": 64, "l0": 4.0, "zipf_exponent": 0.5,
        "noise_std": 0.01, "seed": 0}
    assert source["measured_l0"] == pytest.approx(4.0, rel=0.01)
    true = cache.true_dictionary()
    assert true is not None and true.shape == (64, 32)
    torch.testing.assert_close(true, torch.from_numpy(params.dictionary()).float())


def test_norm_scale_matches_the_generator_analytically(synthetic_cache: Path) -> None:
    """E||x||^2 = sum_ij E[f_i f_j] <D_i, D_j> + d sigma^2, with E[f_i f_j] = p_i p_j for
    i != j and p_i E[m^2] on the diagonal (m ~ U[0.5, 1.5]: E[m] = 1, E[m^2] = 13/12)."""
    cache = ActivationCache.open(synthetic_cache)
    params = planted(cache)
    p = params.feature_probabilities()
    dictionary = params.dictionary()
    second_moment = np.outer(p, p)
    np.fill_diagonal(second_moment, p * 13 / 12)
    expected = (second_moment * (dictionary @ dictionary.T)).sum()
    expected += params.d_in * params.noise_std**2
    assert params.d_in / cache.norm_scale**2 == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("bad", [dict(d_in=0), dict(l0=0.0), dict(l0=300.0),
                                 dict(zipf_exponent=-1.0), dict(magnitude="gaussian"),
                                 dict(n_true_features=-5), dict(noise_std=-0.1)])
def test_bad_parameters_are_user_errors(bad: dict) -> None:
    with pytest.raises(UserError):
        PlantedDictionary(**bad)


def test_build_is_deterministic(tmp_path: Path) -> None:
    params = PlantedDictionary(d_in=8, n_true_features=16, l0=2.0, seed=1)
    a = build_synthetic_cache(tmp_path / "a", params, 3000)
    b = build_synthetic_cache(tmp_path / "b", params, 3000)
    assert a.meta["train_shards"][0]["sha256"] == b.meta["train_shards"][0]["sha256"]
