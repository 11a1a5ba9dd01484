"""One saved SAE's evaluation: the reconstruction set in model units on its cache's eval
split, the weight-based metrics, the splice scores, as SAEBench's core output
(RUN_DIR/eval.json, analysis/saebench.py) and as the flat metrics its MLflow run logs.

What `monoscale eval` (sweeps/eval_commands.py) and a sweep's trial with `eval: {splice:
true}` (sweeps/eval_trial.py) both write. Names: SAEBench's in eval.json; in MLflow the
reconstruction set as the trainer logs it (evaluate.run_metric_names: SAEBench's model-
units mse is mse_model_units there) and the splice's token counts as splice_<count>, so
that none overwrites a training metric (n_tokens is the run's training tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from analysis.saebench import core_output, eval_config
from sae_core.cache import ActivationCache
from sae_core.config import RunConfig
from sae_core.evaluate import MODEL_UNITS_MSE, run_metric_names
from sae_core.metrics import Reconstruction, average_max_cosine_similarity, reconstruction_metrics
from sae_core.model import SAE
from sae_core.sae_files import read_cfg

EVAL_FILE = "eval.json"
DENSITY_PNG = "feature_density.png"
SPLICE_COUNTS = ("n_tokens_ce", "n_tokens_kl", "n_texts", "n_tokens")


def reconstruction(sae: SAE, cfg: RunConfig, cache: ActivationCache
                   ) -> tuple[Reconstruction, int]:
    """(sae_core.metrics.reconstruction_metrics of the raw-units SAE, the number of rows)
    on the first cfg.eval_n_tokens rows of the cache's eval split (all of it when it is
    smaller) in raw units: the tokens of the trainer's final evaluation."""
    device = sae.W_dec.device
    x = cache.eval_tokens(cfg.eval_n_tokens, device=device) / cache.norm_scale
    return reconstruction_metrics(sae, x), len(x)


def weight_metrics(sae: SAE) -> dict[str, float]:
    """SAEBench's weight-based misc metrics: the mean max cosine between features."""
    with torch.no_grad():
        return {"average_max_encoder_cosine_sim": average_max_cosine_similarity(sae.W_enc.T),
                "average_max_decoder_cosine_sim": average_max_cosine_similarity(sae.W_dec)}


def from_run_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """SAEBench's names back from a run's logged ones (its metrics.json): mse is the
    model-units one; the trainer's explained_variance, normalized_mse and l0 are the same
    definitions."""
    out = {k: v for k, v in metrics.items() if k != "mse"}
    if MODEL_UNITS_MSE in out:
        out["mse"] = out.pop(MODEL_UNITS_MSE)
    return out


def logged_metrics(reconstruction_set: dict[str, float] | None, weights: dict[str, float],
                   splice: dict[str, float] | None) -> dict[str, float]:
    """The flat metrics an evaluation logs into the run's MLflow record (a trial's
    reconstruction set is logged by the trainer already: None)."""
    splice = {(f"splice_{k}" if k in SPLICE_COUNTS else k): float(v)
              for k, v in (splice or {}).items()}
    recon = run_metric_names(reconstruction_set) if reconstruction_set is not None else {}
    return {**recon, **weights, **splice}


def eval_document(run_dir: Path, cfg: RunConfig, reconstruction_set: dict[str, float],
                  density: dict[str, Any], weights: dict[str, float],
                  splice: dict[str, float] | None, splice_config: dict[str, Any] | None,
                  model_name: str | None, extra: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """SAEBench's core output for one SAE. reconstruction_set: SAEBench's names, model
    units; density: feature_density.json's record; splice, splice_config: the splice's
    scores and SpliceEvaluation.config() (None: not spliced)."""
    counts = splice or {}
    metrics: dict[str, Any] = {
        **reconstruction_set, **weights,
        **{k: v for k, v in counts.items() if k not in SPLICE_COUNTS},
        "total_tokens_eval_reconstruction": counts.get("n_tokens_kl", counts.get("n_tokens")),
        "total_tokens_eval_sparsity_variance": density["n_tokens"],
    }
    config = splice_config or {"model_name": model_name or "none", "dataset": "none",
                               "context_size": 0, "batch_size_prompts": 0,
                               "n_eval_reconstruction_batches": 0, "lm_splice": False}
    saebench_config = eval_config(config["model_name"], config["dataset"],
                                  config["context_size"], config["batch_size_prompts"],
                                  config["n_eval_reconstruction_batches"],
                                  lm_splice=config["lm_splice"], weight_metrics=True)
    unstructured = {
        "run_key": cfg.run_key,
        "run_dir": str(run_dir),
        "reconstruction_tokens": f"the first {density['n_tokens']} rows of the eval split "
                                 f"of cache {cfg.cache_dir}, in model units",
        "splice": None if splice is None else {
            "tokens": "kept positions of whole contexts of held-out text (the corpus's "
                      "documents after those the cache read)",
            **{k: counts[k] for k in SPLICE_COUNTS if k in counts}, **config},
        "feature_density_histogram": {k: density[k] for k in ("log10_edges", "counts",
                                                              "n_dead")},
        **(extra or {}),
    }
    return core_output(metrics, saebench_config, sae_cfg=read_cfg(run_dir),
                       unstructured=unstructured)


def write_density_png(path: Path, density: dict[str, Any], cfg: RunConfig) -> Path:
    """The feature-density histogram (analysis/density_plot.py) as a PNG at `path`."""
    from analysis.density_plot import density_figure

    title = f"{cfg.arch} F={cfg.n_features}, {cfg.n_steps} steps"
    density_figure(density, title).savefig(path, dpi=110)
    return path
