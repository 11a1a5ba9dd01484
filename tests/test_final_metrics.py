"""Every run's final evaluation carries the standard reconstruction set in model units
(sae_core/evaluate.py): the numbers of sae_core/metrics.py on the saved, raw-units SAE,
computed in the trainer's own pass; and the feature density as feature_density.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae_core.cache import ActivationCache
from sae_core.config import RunConfig
from sae_core.evaluate import MODEL_UNITS_MSE, SHARED_NAMES
from sae_core.metrics import reconstruction_metrics
from sae_core.run import DENSITY_FILE, run_from_cache
from sae_core.sae_files import load_sae


@pytest.fixture(scope="module")
def trained(synthetic_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(cache_dir=str(synthetic_cache), d_in=32, n_features=96, n_steps=150,
                    lr=3e-3, batch_size_tokens=512, eval_n_tokens=2048, num_threads=1)
    return cfg, out, run_from_cache(cfg, out)


def test_final_metrics_are_the_library_reconstruction_set_in_model_units(trained) -> None:
    cfg, out, metrics = trained
    sae, _ = load_sae(out)  # raw model units: the scale folded in
    cache = ActivationCache.open(cfg.cache_dir)
    x_raw = cache.eval_tokens(cfg.eval_n_tokens) / cache.norm_scale
    library = reconstruction_metrics(sae, x_raw).metrics
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    for name, value in library.items():
        logged = metrics[MODEL_UNITS_MSE if name == "mse" else name]
        assert logged == pytest.approx(value, rel=1e-4, abs=1e-6), name
    # The names the analysis reads keep their meaning: mse is the normalised-units term of
    # the loss, the model-units one scaled by norm_scale².
    assert metrics["mse"] == pytest.approx(metrics[MODEL_UNITS_MSE] * cache.norm_scale ** 2,
                                           rel=1e-4)
    assert SHARED_NAMES <= set(metrics) and {"loss", "dead_fraction"} <= set(metrics)
    assert 0 < metrics["explained_variance_legacy"] < 1 and 0 < metrics["cossim"] <= 1
    assert metrics["relative_reconstruction_bias"] < 1  # an L1 SAE shrinks (docs/METHOD.md §4.4)


def test_feature_density_file_counts_every_feature(trained) -> None:
    cfg, out, metrics = trained
    record = json.loads((out / DENSITY_FILE).read_text())
    sae, _ = load_sae(out)
    cache = ActivationCache.open(cfg.cache_dir)
    with torch.no_grad():
        f = sae.encode(cache.eval_tokens(cfg.eval_n_tokens) / cache.norm_scale)
    expected = (f != 0).double().mean(0)
    assert record["n_tokens"] == cfg.eval_n_tokens
    assert record["feature_density"] == pytest.approx(expected.tolist(), abs=1e-3)
    assert sum(record["counts"]) + record["n_dead"] == cfg.n_features
    assert record["n_dead"] == int((expected == 0).sum())
    assert 1 - record["n_dead"] / cfg.n_features == pytest.approx(metrics["frac_alive"])
