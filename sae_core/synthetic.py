"""A planted dictionary: activations that are sparse sums of known feature directions.

    x = sum_i f_i D_i + noise,   D [n_true_features, d_in] with unit rows

Feature i fires independently with probability p_i, Zipf-distributed (p_i ∝ (i+1)^-a, like
the heavy-tailed feature frequencies SAEs find in language models), scaled so that the
expected number of active features per token (L0) is the planted one. Scaling behaviour
and feature recovery can then be tested against known answers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae_core.cache import ActivationCache
from sae_core.cache_writer import CacheWriter, build_cache
from sae_core.errors import UserError

# Magnitudes of active features. "uniform" (default) is U[0.5, 1.5]: bounded away from 0,
# so every planted activation stands out of the noise; "exponential" (mean 1) puts many
# activations near 0, which an L1 penalty shrinks away; "constant" is 1.
MAGNITUDES = ("uniform", "exponential", "constant")


@dataclass(frozen=True)
class PlantedDictionary:
    d_in: int = 64
    n_true_features: int = 256
    l0: float = 4.0  # mean number of active features per token
    zipf_exponent: float = 0.5  # 0: all features equally frequent
    magnitude: str = "uniform"
    noise_std: float = 0.01  # per dimension, Gaussian
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_in", "n_true_features"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if not isinstance(self.l0, int | float) or not 0 < self.l0 < self.n_true_features:
            raise UserError(f"l0 must lie in (0, n_true_features={self.n_true_features}), "
                            f"got {self.l0}")
        if self.zipf_exponent < 0 or self.noise_std < 0:
            raise UserError("zipf_exponent and noise_std must be >= 0")
        if self.magnitude not in MAGNITUDES:
            raise UserError(f"magnitude must be one of {MAGNITUDES}, got {self.magnitude!r}")

    def feature_probabilities(self) -> np.ndarray:
        """p [n_true_features], p_i ∝ (i+1)^-zipf_exponent, sum(p) = l0, all p_i <= 1."""
        p = np.arange(1, self.n_true_features + 1, dtype=np.float64) ** -self.zipf_exponent
        p *= self.l0 / p.sum()
        while (over := p > 1).any():  # the most frequent features saturate at always-on
            p[over] = 1.0
            p[~over] *= (self.l0 - over.sum()) / p[~over].sum()
        return p

    def dictionary(self) -> np.ndarray:
        """D [n_true_features, d_in], random directions, unit rows."""
        rng = np.random.default_rng([self.seed, 0])
        directions = rng.standard_normal((self.n_true_features, self.d_in))
        return directions / np.linalg.norm(directions, axis=1, keepdims=True)

    def sample(self, n_tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Activations x [n_tokens, d_in] (float32) and codes f [n_tokens, n_true_features]."""
        active = rng.random((n_tokens, self.n_true_features)) < self.feature_probabilities()
        shape = active.shape
        if self.magnitude == "uniform":
            magnitudes = rng.uniform(0.5, 1.5, shape)
        elif self.magnitude == "exponential":
            magnitudes = rng.exponential(1.0, shape)
        else:
            magnitudes = np.ones(shape)
        codes = active * magnitudes
        x = codes @ self.dictionary() + self.noise_std * rng.standard_normal((n_tokens, self.d_in))
        return x.astype(np.float32), codes.astype(np.float32)


def build_synthetic_cache(out_dir: str | Path, params: PlantedDictionary, n_tokens: int,
                          dtype: str = "float32", reuse_only: bool = False) -> ActivationCache:
    """A cache of `n_tokens` planted-dictionary activations (train + eval split), with
    true_dictionary.npy and the generator parameters in meta.json's "source".
    reuse_only: open the cache at out_dir if these parameters built it; build nothing."""
    # ~4M code entries per chunk (32 MB) whatever the number of features.
    chunk_tokens = max(256, (1 << 22) // params.n_true_features)

    def produce(writer: CacheWriter) -> dict[str, float]:
        writer.add_file("true_dictionary.npy", params.dictionary().astype(np.float32))
        rng = np.random.default_rng([params.seed, 1])
        n_active = 0
        while writer.n_remaining > 0:
            x, codes = params.sample(min(chunk_tokens, writer.n_remaining), rng)
            writer.add(x)
            n_active += int(np.count_nonzero(codes))
        return {"measured_l0": n_active / writer.n_written}

    request = {"kind": "synthetic", **dataclasses.asdict(params)}
    return build_cache(out_dir, request, n_tokens, dtype, produce, seed=params.seed,
                       reuse_only=reuse_only)
