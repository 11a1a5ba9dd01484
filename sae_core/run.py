"""One training run from an activation cache to files on disk (docs/CONTRACTS.md).

    out_dir/checkpoint/               trainer state while the run is unfinished (removed at the end)
    out_dir/sae_weights.safetensors   the SAE in raw model units, as SAELens reads it
    out_dir/cfg.json                  SAELens's fields + RunConfig + norm_scale (sae_files.py)
    out_dir/metrics.json              the final held-out metrics, with the standard
                                      reconstruction set in model units (SAEBench's names)
    out_dir/feature_density.json      each feature's firing frequency on the held-out
                                      tokens, and their histogram over log10 frequency

This is what `monoscale train` and every sweep trial call.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

from sae_core.cache import ActivationCache, CacheError
from sae_core.config import RunConfig
from sae_core.device import resolve_device
from sae_core.metrics import density_histogram
from sae_core.sae_files import save_sae, write_json
from sae_core.trainer import MetricsLogger, train


def open_cache_for(cfg: RunConfig, verify: str = "size") -> ActivationCache:
    """Open cfg.cache_dir and check that it fits cfg, before any compute."""
    cache = ActivationCache.open(cfg.cache_dir, verify=verify)
    if cache.d_in != cfg.d_in:
        raise CacheError(
            f"cache {cfg.cache_dir} holds d={cache.d_in} activations, the config asks for "
            f"d_in={cfg.d_in}"
        )
    return cache


def run_from_cache(
    cfg: RunConfig,
    out_dir: Path,
    logger: MetricsLogger | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    verify: str = "size",
    fork_steps: Collection[int] = (),
    on_fork: Callable[[Path, int], None] | None = None,
) -> dict[str, float]:
    """Train cfg on its cache, resuming from out_dir/checkpoint if present; return the
    final held-out metrics (loss, mse, l1_penalty, l0, explained_variance, dead_fraction,
    compute_flops, n_tokens, tokens_per_s, step, and the reconstruction set of
    evaluate.final_evaluation). fork_steps, on_fork: see train()."""
    cache = open_cache_for(cfg, verify)
    device = resolve_device(cfg.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_x = cache.eval_tokens(cfg.eval_n_tokens, device=device)

    def make_batches(start_step: int):
        return cache.train_batches(cfg.batch_size_tokens, cfg.seed, start_step, device)

    result = train(
        cfg,
        make_batches,
        eval_x,
        logger=logger,
        checkpoint_dir=out_dir / "checkpoint",
        on_checkpoint=on_checkpoint,
        fork_steps=fork_steps,
        on_fork=on_fork,
        norm_scale=cache.norm_scale,
    )
    save_sae(out_dir, result.sae, cfg, cache.norm_scale, cache.meta.get("source", {}))
    write_json(out_dir / "metrics.json", result.metrics)
    assert result.feature_density is not None  # given norm_scale, train() measures it
    write_json(out_dir / DENSITY_FILE, density_record(result.feature_density, len(eval_x)))
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    return result.metrics


DENSITY_FILE = "feature_density.json"


def density_record(feature_density: torch.Tensor, n_tokens: int) -> dict[str, Any]:
    """feature_density.json: per feature [F] the fraction of the n_tokens held-out tokens
    it fired on, and the histogram over log10 of it (metrics.density_histogram; the dead,
    log10 0 = -inf, counted apart)."""
    hist = density_histogram(feature_density, n_tokens)
    return {"n_tokens": n_tokens, "log10_edges": hist.log10_edges.tolist(),
            "counts": hist.counts.tolist(), "n_dead": hist.n_dead,
            "feature_density": feature_density.tolist()}
