"""One SAE's evaluation as SAEBench's core output JSON, so that it sits beside published
results (SAEBench `sae_bench/evals/core/eval_output.py` at commit 8042bb3; the field names
are in tests/fixtures/saebench_core/).

What is filled, and with what:
- eval_result_metrics: SAEBench's seven groups with exactly its metric names (sae_core/
  metrics.py and sae_core/splice.py compute them under these names). A metric that was not
  computed, or came out NaN, is -1, SAEBench's own placeholder (`replace_nans_with_
  negative_one`), and is listed in eval_result_unstructured["not_computed"]: an encoder
  without an LM head has no CE or KL, and the weight-based misc metrics need the weights.
- eval_config: SAEBench's CoreEvalConfig fields. n_eval_sparsity_variance_batches is 1:
  the whole held-out set is one batch (the legacy explained variance takes x̄ over it).
- eval_id (a new UUID), datetime_epoch_millis: as SAEBench fills them.
- sae_bench_commit_hash: null. No SAEBench ran; the layout's commit is in
  eval_result_unstructured["saebench_layout_commit"]. (The schema types it as a string.)
- sae_lens_id, sae_lens_release_id, sae_lens_version: null: these SAEs are no SAELens
  release and SAELens did not run (SAEBench fills them from its SAE selection).
- sae_cfg_dict: the SAE's SAELens-style cfg.json, when the caller has it.
- eval_result_details: [], SAEBench's default; per-feature rows are left out (the density
  histogram is in eval_result_unstructured).
- eval_result_unstructured: every other metric (delta_lm_loss, normalized_mse, the
  embedding score of an encoder, ...) and what the caller adds.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.outputs import write_text_atomic

SAEBENCH_LAYOUT_COMMIT = "8042bb3828c6340da8d12062324e92b2077c571c"
NOT_COMPUTED = -1

GROUPS: dict[str, tuple[str, ...]] = {
    "model_behavior_preservation": ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
    "model_performance_preservation": ("ce_loss_score", "ce_loss_with_ablation",
                                       "ce_loss_with_sae", "ce_loss_without_sae"),
    "reconstruction_quality": ("explained_variance", "explained_variance_legacy", "mse",
                               "cossim"),
    "shrinkage": ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"),
    "sparsity": ("l0", "l1"),
    "token_stats": ("total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"),
    "misc_metrics": ("freq_over_1_percent", "freq_over_10_percent",
                     "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
                     "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim",
                     "frac_alive"),
}
INTEGER_METRICS = frozenset(GROUPS["token_stats"])


def eval_config(model_name: str, dataset: str, context_size: int, batch_size_prompts: int,
                n_eval_reconstruction_batches: int, lm_splice: bool,
                weight_metrics: bool, llm_dtype: str = "float32") -> dict[str, Any]:
    """SAEBench's CoreEvalConfig for an evaluation as monoscale runs it. lm_splice: CE and
    KL were computed (a decoder LM); weight_metrics: the average max cosine sims were."""
    return {
        "model_name": model_name,
        "llm_dtype": llm_dtype,
        "batch_size_prompts": batch_size_prompts,
        "n_eval_reconstruction_batches": n_eval_reconstruction_batches,
        "n_eval_sparsity_variance_batches": 1,
        "dataset": dataset,
        "context_size": context_size,
        "compute_kl": lm_splice,
        "compute_ce_loss": lm_splice,
        "compute_l2_norms": True,
        "compute_sparsity_metrics": True,
        "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": True,
        "compute_featurewise_weight_based_metrics": weight_metrics,
        # Special tokens, padding and each context's first position keep their activation.
        "exclude_special_tokens_from_reconstruction": True,
        "verbose": False,
    }


def _value(metrics: Mapping[str, Any], name: str) -> float | int | None:
    """The metric as its JSON type, or None where it is missing or NaN."""
    value = metrics.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value) if name in INTEGER_METRICS else float(value)


def core_output(metrics: Mapping[str, Any], config: Mapping[str, Any],
                sae_cfg: Mapping[str, Any] | None = None,
                unstructured: Mapping[str, Any] | None = None,
                eval_id: str | None = None,
                datetime_epoch_millis: int | None = None) -> dict[str, Any]:
    """One SAE's results in SAEBench's core layout. metrics: flat {name: value}, SAEBench's
    names for what SAEBench has; config: `eval_config(...)`."""
    groups: dict[str, dict[str, float | int]] = {}
    not_computed = []
    for group, names in GROUPS.items():
        groups[group] = {}
        for name in names:
            value = _value(metrics, name)
            if value is None:
                not_computed.append(f"{group}.{name}")
            groups[group][name] = NOT_COMPUTED if value is None else value
    in_groups = {name for names in GROUPS.values() for name in names}
    others = {name: (None if isinstance(value, float) and math.isnan(value) else value)
              for name, value in metrics.items() if name not in in_groups}
    return {
        "eval_type_id": "core",
        "eval_config": dict(config),
        "eval_id": eval_id or str(uuid.uuid4()),
        "datetime_epoch_millis": (int(time.time() * 1000) if datetime_epoch_millis is None
                                  else datetime_epoch_millis),
        "eval_result_metrics": groups,
        "eval_result_details": [],
        "sae_bench_commit_hash": None,
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": None,
        "sae_cfg_dict": dict(sae_cfg) if sae_cfg is not None else None,
        "eval_result_unstructured": {
            "producer": "monoscale",
            "saebench_layout_commit": SAEBENCH_LAYOUT_COMMIT,
            "metric_definitions": "docs/METHOD.md section 4; sae_core/metrics.py, splice.py",
            "not_computed": not_computed,
            "metrics": others,
            **(unstructured or {}),
        },
    }


def write_core_output(path: str | Path, output: Mapping[str, Any]) -> Path:
    """RUN_DIR/eval.json (or `path`), written atomically."""
    write_text_atomic(path, json.dumps(output, indent=2, allow_nan=False) + "\n")
    return Path(path)
