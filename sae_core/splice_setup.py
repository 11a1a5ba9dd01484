"""Splice evaluation of saved SAEs on the model and held-out text of their cache.

The model and text come from the cache (sae_core/held_out.py): a decoder LM is scored on
its next-token predictions (sae_core/splice.py: CE, KL), an encoder on its sentence
embedding (sae_core/splice_embedding.py). The reference (clean and zero-ablated passes)
is built once and can be saved beside a sweep's runs, so that its trials and `monoscale
eval` load it instead of rerunning those passes; the file names the cache, layer and
token count it was built for, and is refused for any other.

Each score that rises to 1 with quality has a falling twin, `<name>_gap` = 1 − score, the
form a scaling law (a loss falling as a power law in compute) is fitted to:

    ce_loss_gap          = (CE_sae − CE_orig) / (CE_zero − CE_orig)   (ΔLM loss over the
                           ablation's)
    kl_div_gap           = KL_sae / KL_zero
    embedding_cosine_gap = (1 − cos_sae) / (1 − cos_zero)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from sae_core.activations import load_model
from sae_core.coder import SparseCoder
from sae_core.errors import UserError
from sae_core.held_out import SpliceSource, check_model, held_out_texts
from sae_core.metrics import SCORE_GAPS
from sae_core.splice import LMSplice
from sae_core.splice_embedding import EmbeddingSplice


def with_gaps(metrics: dict[str, float]) -> dict[str, float]:
    """metrics with `<name>_gap` = 1 − score beside each score (metrics.SCORE_GAPS)."""
    return {**metrics, **{gap: 1.0 - metrics[score] for score, gap in SCORE_GAPS.items()
                          if score in metrics}}


class SpliceEvaluation:
    """One model opened at one layer with its reference passes over held-out text."""

    def __init__(self, source: SpliceSource, splice: LMSplice | EmbeddingSplice,
                 n_tokens: int, first_document: int) -> None:
        self.source, self.splice = source, splice
        self.n_tokens, self.first_document = n_tokens, first_document
        self.causal = isinstance(splice, LMSplice)

    @classmethod
    def build(cls, source: SpliceSource, n_tokens: int = 4096,
              device: str = "cpu") -> SpliceEvaluation:
        """Check the model (config only), load it, run the clean and zero passes over
        `n_tokens` kept positions of held-out text (whole contexts)."""
        if not isinstance(n_tokens, int) or n_tokens < 1:
            raise UserError(f"splice evaluation needs n_tokens >= 1, got {n_tokens!r}")
        causal = check_model(source)
        net, tokenizer = load_model(source.model, device, lm_head=causal)
        first, texts = held_out_texts(source, tokenizer)
        builder = LMSplice if causal else EmbeddingSplice
        splice = builder.build(net, tokenizer, texts, source.layer, n_tokens,
                               source.context_tokens)
        return cls(source, splice, n_tokens, first)

    def save(self, path: str | Path) -> None:
        """The reference as one safetensors file (its metadata: what it was built for)."""
        self.splice.save(path, {**_identity(self.source, self.n_tokens),
                                "first_document": str(self.first_document)})

    @classmethod
    def load(cls, source: SpliceSource, path: str | Path, n_tokens: int,
             device: str = "cpu") -> SpliceEvaluation:
        """A saved reference, with the model it was built from loaded again."""
        meta = reference_metadata(path)
        wanted = _identity(source, n_tokens)
        differ = sorted(k for k in wanted if meta.get(k) != wanted[k])
        if differ:
            raise UserError(f"splice reference {path} was built for another "
                            f"{', '.join(differ)} ({', '.join(str(meta.get(k)) for k in differ)}"
                            f"; wanted {', '.join(wanted[k] for k in differ)})")
        causal = check_model(source)
        net, _ = load_model(source.model, device, lm_head=causal)
        splice = (LMSplice if causal else EmbeddingSplice).load(path, net)
        return cls(source, splice, n_tokens, int(meta["first_document"]))

    @classmethod
    def load_or_build(cls, source: SpliceSource, path: Path, n_tokens: int,
                      device: str = "cpu") -> SpliceEvaluation:
        """The reference at `path` when it was built for this cache, layer and token count;
        else built and saved there."""
        if _matches(path, source, n_tokens):
            return cls.load(source, path, n_tokens, device)
        built = cls.build(source, n_tokens, device)
        built.save_atomically(path)
        return built

    @classmethod
    def ensure(cls, source: SpliceSource, path: Path, n_tokens: int,
               device: str = "cpu") -> bool:
        """A reference at `path` for this cache, layer and token count: built unless there.
        True when it was built."""
        if _matches(path, source, n_tokens):
            return False
        cls.build(source, n_tokens, device).save_atomically(path)
        return True

    def save_atomically(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        self.save(tmp)
        tmp.replace(path)

    def score_many(self, coders: Sequence[SparseCoder]) -> list[dict[str, float]]:
        """Each coder's splice metrics (in raw model units, on the model's device), with
        the gaps beside the scores."""
        return [with_gaps(m) for m in self.splice.score_many(list(coders))]

    def config(self) -> dict[str, Any]:
        """What the evaluation ran on, in SAEBench's eval_config terms."""
        batches = ([c.batch for c in self.splice.clean] if isinstance(self.splice, LMSplice)
                   else self.splice.batches)
        return {"model_name": self.source.model,
                "dataset": f"{self.source.corpus} (from document {self.first_document})",
                "context_size": self.source.context_tokens,
                "batch_size_prompts": int(len(batches[0]["keep"])),
                "n_eval_reconstruction_batches": len(batches),
                "lm_splice": self.causal}


def _matches(path: Path, source: SpliceSource, n_tokens: int) -> bool:
    if not path.is_file():
        return False
    meta = reference_metadata(path)
    return all(meta.get(k) == v for k, v in _identity(source, n_tokens).items())


def _identity(source: SpliceSource, n_tokens: int) -> dict[str, str]:
    return {"cache_fingerprint": source.fingerprint, "model": source.model,
            "layer": str(source.layer), "n_tokens": str(n_tokens)}


def reference_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a saved reference (no tensors read)."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return dict(file.metadata() or {})
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"cannot read splice reference {path}: {err}") from None
