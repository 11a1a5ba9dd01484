"""sae_core/metrics.py against hand computations on a small known array."""

from __future__ import annotations

import pytest
import torch

from sae_core.coder import RawUnits
from sae_core.metrics import (
    average_max_cosine_similarity,
    density_histogram,
    explained_variance,
    explained_variance_legacy,
    reconstruction_metrics,
)

# Four tokens in d = 2. x̄ = (1.5, 1.5); ‖x_i − x̄‖² = 8.5, 0.5, 2.5, 2.5 (Σ 14).
X = torch.tensor([[4.0, 0.0], [1.0, 1.0], [0.0, 2.0], [1.0, 3.0]])


class Halver:
    """f = ReLU(x) (F = d = 2), x̂ = f / 2: on X the residual is x / 2, ‖·‖² = 4, .5, 1, 2.5."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f / 2


def test_pooled_and_legacy_explained_variance_match_hand_computation() -> None:
    x_hat = X / 2
    # Pooled: 1 − (4 + .5 + 1 + 2.5) / 14 = 3/7.
    assert explained_variance(X, x_hat).item() == pytest.approx(3 / 7)
    # Legacy, per token: mean(1 − 4/8.5, 1 − .5/.5, 1 − 1/2.5, 1 − 2.5/2.5).
    legacy = (1 - 4 / 8.5 + 0 + (1 - 1 / 2.5) + 0) / 4
    assert explained_variance_legacy(X, x_hat).item() == pytest.approx(legacy)
    # Neither is the variance-around-zero version (1 − 8/32) that SAELens had before
    # 6.45.1, nor dictionary_learning's centred one (also 0.75 here).
    assert explained_variance(X, x_hat).item() != pytest.approx(0.75)


def test_reconstruction_metrics_by_hand_in_one_and_many_chunks() -> None:
    for chunk_tokens in (4, 1):
        metrics, density = reconstruction_metrics(Halver(), X, chunk_tokens=chunk_tokens)
        assert metrics["explained_variance"] == pytest.approx(3 / 7)
        assert metrics["normalized_mse"] == pytest.approx(4 / 7)
        assert metrics["explained_variance_legacy"] == pytest.approx(1.129412 / 4, abs=1e-6)
        assert metrics["mse"] == pytest.approx(8 / 4)
        assert metrics["cossim"] == pytest.approx(1.0)  # x̂ ∥ x
        assert metrics["l2_ratio"] == pytest.approx(0.5)
        # E‖x̂‖² / E⟨x, x̂⟩ = (32/4) / (32/2) for x̂ = x/2.
        assert metrics["relative_reconstruction_bias"] == pytest.approx(0.5)
        norms = X.norm(dim=-1)
        assert metrics["l2_norm_in"] == pytest.approx(norms.mean().item())
        assert metrics["l2_norm_out"] == pytest.approx(norms.mean().item() / 2)
        assert metrics["l0"] == pytest.approx((1 + 2 + 1 + 2) / 4)
        assert metrics["l1"] == pytest.approx((4 + 2 + 2 + 4) / 4)
        assert density.tolist() == [0.75, 0.75]  # each feature is off on one token
        assert metrics["frac_alive"] == 1.0
        assert metrics["freq_over_10_percent"] == 1.0
        assert metrics["normalized_freq_over_10_percent"] == pytest.approx(1.0)


def test_chunked_metrics_equal_the_whole_array_formulas_on_offset_data() -> None:
    gen = torch.Generator().manual_seed(0)
    # A large constant offset on a few dimensions, as SmolLM2's middle layer has.
    x = torch.randn(3000, 16, generator=gen) + torch.tensor([300.0] * 3 + [0.0] * 13)
    enc = torch.randn(16, 64, generator=gen) / 4
    dec = torch.linalg.pinv(enc)

    class Linear:
        def encode(self, v: torch.Tensor) -> torch.Tensor:
            return torch.relu(v @ enc)

        def decode(self, f: torch.Tensor) -> torch.Tensor:
            return f @ dec

    coder = Linear()
    metrics, density = reconstruction_metrics(coder, x, chunk_tokens=256)
    x64 = x.double()
    x_hat = coder.decode(coder.encode(x)).double()
    assert metrics["explained_variance"] == pytest.approx(explained_variance(x64, x_hat).item())
    assert metrics["explained_variance_legacy"] == pytest.approx(
        explained_variance_legacy(x64, x_hat).item())
    assert torch.equal(density, (coder.encode(x) > 0).double().mean(0))


def test_raw_units_folds_the_normalisation_scale() -> None:
    scaled = RawUnits(Halver(), norm_scale=4.0)
    assert torch.equal(scaled.encode(X), torch.relu(X * 4))
    assert torch.allclose(scaled.decode(scaled.encode(X)), X / 2)


def test_density_histogram_counts_alive_features_and_names_the_dead() -> None:
    n_tokens = 1000
    density = torch.tensor([0.0, 0.0, 1 / n_tokens, 0.01, 0.01, 0.5, 1.0],
                           dtype=torch.float64)
    hist = density_histogram(density, n_tokens=n_tokens, n_bins=3)  # bins of one decade
    assert hist.log10_edges.tolist() == pytest.approx([-3.0, -2.0, -1.0, 0.0])
    assert hist.counts.tolist() == [1, 2, 2]
    assert hist.n_dead == 2


def test_average_max_cosine_similarity_ignores_self() -> None:
    directions = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Best other cosines: 1, 1, 1/√2, 1/√2.
    expected = (1 + 1 + 2 ** -0.5 + 2 ** -0.5) / 4
    assert average_max_cosine_similarity(directions, chunk_rows=3) == pytest.approx(expected)
