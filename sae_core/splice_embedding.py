"""Splice evaluation of an encoder without an LM head (the embedded all-MiniLM-L6-v2):
what survives of what the model is used for, its sentence embedding.

The embedding is sentence-transformers' for all-MiniLM-L6-v2 (its modules.json: Transformer,
mean Pooling, Normalize): the last layer mean-pooled over the attention mask ([CLS] and
[SEP] included), then L2-normalised. The normalisation leaves every cosine unchanged, so
the score below is the same with or without it; it is applied so that `embeddings` are
the vectors users get. The SAE is spliced into hidden_states[layer] (default the middle,
hidden_states[3]) at the kept positions, exactly as sae_core/splice.py does for a decoder
LM; each context of the cache's tokenisation is one text.

    embedding_cos_with_sae       mean over texts of cos(e_spliced, e_clean)
    embedding_cos_with_ablation  the same, the activation zero-ablated at the kept positions
    embedding_cosine_score = (cos_sae − cos_zero) / (1 − cos_zero)

1 for a perfect reconstruction, 0 for one no better than zero ablation: the encoder's
analogue of ce_loss_score. The clean embeddings and the zero-ablated cosines are computed
once (`EmbeddingSplice.build`); per SAE only the blocks from the splice upwards run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from sae_core.block_splice import (
    BlockSplice,
    ZeroAblation,
    held_out_batches,
    load_reference,
    save_reference,
    spliced,
)
from sae_core.coder import SparseCoder
from sae_core.errors import UserError


def sentence_embedding(last_hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over the attended positions, L2-normalised: [B, T, d], [B, T] -> [B, d]."""
    mask = attention_mask.to(last_hidden.device, last_hidden.dtype)[..., None]
    pooled = (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return functional.normalize(pooled, dim=-1)


def _cosines(splice: BlockSplice, batches: list[dict[str, Tensor]], xs: list[Tensor],
             clean: Tensor, coder: SparseCoder, upper_only: bool) -> Tensor:
    """cos(e_spliced, e_clean) per text [n_texts]: a dot product of unit vectors."""
    run = splice.upper if upper_only else splice.hooked
    out = []
    for batch, x in zip(batches, xs, strict=True):
        hidden = spliced(x, batch["keep"].to(x.device), coder)
        out.append(sentence_embedding(run(batch, hidden).last_hidden_state,
                                      batch["attention_mask"]))
    return (torch.cat(out) * clean).sum(-1)


class EmbeddingSplice:
    """Sentence-embedding fidelity of SAEs spliced at one layer of an encoder."""

    def __init__(self, splice: BlockSplice, batches: list[dict[str, Tensor]],
                 xs: list[Tensor], embeddings: Tensor, cos_zero: Tensor) -> None:
        self.splice, self.batches, self.xs = splice, batches, xs
        self.embeddings = embeddings  # [n_texts, d] clean, normalised
        self.cos_zero = cos_zero  # [n_texts]

    @classmethod
    @torch.inference_mode()
    def build(cls, net: Any, tokenizer: Any, texts: Iterable[tuple[str, str]],
              layer: int | None = None, n_tokens: int = 4096, context_tokens: int = 128,
              batch_contexts: int = 32) -> EmbeddingSplice:
        """net: the encoder (`load_model("minilm")`); texts: held-out (name, text) pairs;
        n_tokens: kept positions, at least (whole contexts are taken)."""
        splice = BlockSplice(net, layer)
        batches, xs, embeddings = [], [], []
        for batch in held_out_batches(tokenizer, texts, n_tokens, context_tokens,
                                      batch_contexts):
            x, output = splice.clean(batch)
            batches.append(batch)
            xs.append(x)
            embeddings.append(sentence_embedding(output.last_hidden_state,
                                                 batch["attention_mask"]))
        if not batches:
            raise UserError("splice evaluation got no text")
        clean = torch.cat(embeddings)
        cos_zero = _cosines(splice, batches, xs, clean, ZeroAblation(), upper_only=True)
        return cls(splice, batches, xs, clean, cos_zero)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """The clean pass's results, for `load` in another process (a sweep's trials)."""
        per_batch = [{**batch, "x": x} for batch, x in zip(self.batches, self.xs, strict=True)]
        shared = {"embeddings": self.embeddings, "cos_zero": self.cos_zero}
        save_reference(path, self.splice.layer, per_batch, shared, metadata)

    @classmethod
    def load(cls, path: str | Path, net: Any) -> EmbeddingSplice:
        """What `save` wrote, with `net` the same encoder it was built from."""
        splice, per_batch, shared = load_reference(path, net)
        batches = [{k: b[k] for k in ("input_ids", "attention_mask", "keep")}
                   for b in per_batch]
        splice.probe(batches[0])
        return cls(splice, batches, [b["x"] for b in per_batch], shared["embeddings"],
                   shared["cos_zero"])

    @torch.inference_mode()
    def cosines(self, coder: SparseCoder, upper_only: bool = True) -> Tensor:
        """cos(e_spliced, e_clean) per text [n_texts]."""
        return _cosines(self.splice, self.batches, self.xs, self.embeddings, coder,
                        upper_only)

    def score_many(self, coders: list[SparseCoder], upper_only: bool = True
                   ) -> list[dict[str, float]]:
        """`score` of each coder (LMSplice's interface; nothing to share here)."""
        return [self.score(coder, upper_only) for coder in coders]

    def score(self, coder: SparseCoder, upper_only: bool = True) -> dict[str, float]:
        """embedding_cosine_score and its two cosines; coder in raw model units."""
        cos_sae = self.cosines(coder, upper_only).mean().item()
        cos_zero = self.cos_zero.mean().item()
        return {
            "embedding_cosine_score": (cos_sae - cos_zero) / (1 - cos_zero),
            "embedding_cos_with_sae": cos_sae,
            "embedding_cos_with_ablation": cos_zero,
            "n_texts": len(self.embeddings),
            "n_tokens": int(sum(int(b["keep"].sum()) for b in self.batches)),
        }
