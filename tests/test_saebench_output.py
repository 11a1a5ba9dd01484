"""analysis/saebench.py writes SAEBench's core layout: every group and field, SAEBench's
types, no name SAEBench does not have (tests/fixtures/saebench_core/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from analysis.saebench import GROUPS, NOT_COMPUTED, core_output, eval_config, write_core_output
from sae_core.metrics import reconstruction_metrics

FIELDS = json.loads((Path(__file__).parent / "fixtures" / "saebench_core" /
                     "core_fields.json").read_text())
# The one field written against SAEBench's type: no SAEBench ran (analysis/saebench.py).
NULL_BY_DESIGN = {"sae_bench_commit_hash"}

JSON_TYPES: dict[str, Any] = {"string": str, "object": dict, "array": list, "boolean": bool,
                              "integer": int, "number": (int, float), "null": type(None)}


def assert_fields(obj: dict, spec: dict[str, str], where: str,
                  nullable: frozenset[str] = frozenset()) -> None:
    unknown = set(obj) - set(spec)
    assert not unknown, f"{where}: names SAEBench does not have: {sorted(unknown)}"
    for name, declared in spec.items():
        required = declared.endswith("*")
        if name not in obj:
            assert not required, f"{where}.{name} is required"
            continue
        types = declared.rstrip("*").split("|") + (["null"] if name in nullable else [])
        value = obj[name]
        ok = "any" in types or any(
            isinstance(value, JSON_TYPES[t]) and not (t in ("integer", "number")
                                                      and isinstance(value, bool))
            for t in types)
        assert ok, f"{where}.{name} = {value!r} is not {declared}"


def sample_metrics() -> dict[str, Any]:
    values: dict[str, Any] = {name: 0.5 for names in GROUPS.values() for name in names}
    values.update(total_tokens_eval_reconstruction=4096,
                  total_tokens_eval_sparsity_variance=8192,
                  delta_lm_loss=0.12, normalized_mse=0.3)
    return values


def config(lm_splice: bool = True) -> dict[str, Any]:
    return eval_config("smollm2", "stdlib", 128, 4, 8, lm_splice=lm_splice,
                       weight_metrics=True)


def test_core_output_has_saebench_fields_names_and_types(tmp_path: Path) -> None:
    out = core_output(sample_metrics(), config(), sae_cfg={"d_in": 576})
    path = write_core_output(tmp_path / "eval.json", out)
    read = json.loads(path.read_text())
    assert_fields(read, FIELDS["top_level"], "top level", frozenset(NULL_BY_DESIGN))
    assert read["eval_type_id"] == "core"
    assert_fields(read["eval_config"], FIELDS["eval_config"], "eval_config")
    assert set(read["eval_config"]) == set(FIELDS["eval_config"])  # all of them, filled
    groups = read["eval_result_metrics"]
    assert_fields(groups, FIELDS["eval_result_metrics_groups"], "eval_result_metrics")
    for group, spec in FIELDS["eval_result_metrics"].items():
        assert_fields(groups[group], spec, group)
        assert set(groups[group]) == set(spec)
    assert read["eval_result_unstructured"]["metrics"] == {"delta_lm_loss": 0.12,
                                                           "normalized_mse": 0.3}
    assert read["eval_result_unstructured"]["not_computed"] == []


def test_missing_and_nan_metrics_are_saebench_placeholder_and_listed() -> None:
    metrics = {name: value for name, value in sample_metrics().items()
               if not name.startswith(("ce_", "kl_"))}
    metrics["cossim"] = float("nan")
    out = core_output(metrics, config(lm_splice=False))
    groups = out["eval_result_metrics"]
    assert groups["model_performance_preservation"]["ce_loss_score"] == NOT_COMPUTED
    assert groups["reconstruction_quality"]["cossim"] == NOT_COMPUTED
    not_computed = out["eval_result_unstructured"]["not_computed"]
    assert "model_behavior_preservation.kl_div_score" in not_computed
    assert "reconstruction_quality.cossim" in not_computed and len(not_computed) == 8
    assert_fields(groups["model_performance_preservation"],
                  FIELDS["eval_result_metrics"]["model_performance_preservation"], "perf")
    json.dumps(out, allow_nan=False)


def test_metrics_module_speaks_saebench_names() -> None:
    class Identity:
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def decode(self, f: torch.Tensor) -> torch.Tensor:
            return f

    computed = reconstruction_metrics(Identity(), torch.randn(64, 4)).metrics
    weight_based = {"average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim"}
    for group in ("reconstruction_quality", "shrinkage", "sparsity", "misc_metrics"):
        expected = set(FIELDS["eval_result_metrics"][group]) - weight_based
        assert expected <= set(computed), f"{group}: {expected - set(computed)}"
    assert computed["explained_variance"] == pytest.approx(1.0)
