"""What a splice evaluation needs from a model cache, and the text it runs the model on.

A cache built from a model records in meta.json's "source" (sae_core/activations.py) the
model, its layer, the tokenisation (context_tokens, batch_contexts, padding side, the
dropped positions), the corpus and how many of its documents the cache read
(`n_documents_read`). The held-out text is the corpus's documents after those: text that
neither the cache nor any SAE trained on it has seen. (The cache's own eval split holds
activations, not text, and comes from the same documents as its train split.)

A cache built before `n_documents_read` was recorded: the count is found again by
replaying the build's tokenisation without the model until it had produced as many rows
(`generate_activations` stops at the batch that reaches them), and the replayed text must
hash to the cache's `text_sha256`; otherwise (another Python's stdlib, edited files) the
cache is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_core import corpus as corpora
from sae_core.activations import (
    TextsRead,
    _contexts,
    check_layer,
    is_causal_lm,
    model_d_in,
    n_model_layers,
)
from sae_core.cache import ActivationCache
from sae_core.errors import UserError


@dataclass(frozen=True)
class SpliceSource:
    """The model and text behind a model cache."""

    cache_dir: str
    fingerprint: str  # the cache's: a splice reference built for another cache is refused
    model: str
    layer: int
    n_layers: int
    d_in: int
    corpus: str  # as corpus.documents reads it
    corpus_description: dict[str, Any]  # corpus.describe's, at build time
    context_tokens: int
    batch_contexts: int
    n_rows: int  # rows the cache holds (train + eval)
    text_sha256: str
    n_documents_read: int | None  # None: a cache from before it was recorded (replay)

    @property
    def dataset(self) -> str:
        """The held-out text, in words (SAEBench's eval_config.dataset)."""
        start = ("after the documents the cache read" if self.n_documents_read is None
                 else f"from document {self.n_documents_read}")
        return f"{self.corpus} ({start})"


def splice_source(cache: ActivationCache) -> SpliceSource:
    """The cache's model and text, or a UserError naming what is missing."""
    source = cache.meta.get("source") or {}
    kind = source.get("kind")
    if kind != "model":
        how = {"array": "an array file (--npy)", "synthetic": "a planted dictionary "
               "(--synthetic)"}.get(str(kind), f"a source of kind {kind!r}")
        raise UserError(f"cache {cache.path} was built from {how}, not a model: splice "
                        "evaluation needs the model and text behind it (build the cache "
                        "with `monoscale cache --model ...`)")
    missing = [k for k in ("model", "layer", "n_layers", "corpus", "context_tokens",
                           "batch_contexts", "text_sha256") if source.get(k) is None]
    if missing:
        raise UserError(f"cache {cache.path} does not record its {', '.join(missing)}: "
                        "rebuild it with this monoscale to splice-evaluate its SAEs")
    return SpliceSource(
        cache_dir=str(Path(cache.path).resolve()), fingerprint=str(cache.meta.get("fingerprint")),
        model=source["model"], layer=int(source["layer"]), n_layers=int(source["n_layers"]),
        d_in=cache.d_in, corpus=source["corpus"]["name"], corpus_description=source["corpus"],
        context_tokens=int(source["context_tokens"]),
        batch_contexts=int(source["batch_contexts"]),
        n_rows=cache.n_train_tokens + cache.n_eval_tokens,
        text_sha256=source["text_sha256"], n_documents_read=source.get("n_documents_read"))


def check_model(source: SpliceSource) -> bool:
    """That the cache's model loads here and has its layer and width, from its config
    alone (no weights); True for a decoder LM (CE/KL), False for an encoder (embedding)."""
    try:
        n_layers = n_model_layers(source.model)
        d_in = model_d_in(source.model)
    except UserError as err:
        raise UserError(f"cache {source.cache_dir} was built from model {source.model!r}, "
                        f"which cannot be loaded here: {err}") from None
    if n_layers != source.n_layers or d_in != source.d_in:
        raise UserError(f"model {source.model!r} has {n_layers} layers of width {d_in}; "
                        f"cache {source.cache_dir} was built from one with {source.n_layers} "
                        f"layers of width {source.d_in}")
    check_layer(source.layer, n_layers, source.model)
    return is_causal_lm(source.model)


def check_corpus(source: SpliceSource) -> None:
    """The corpus reads as it did when the cache was built (same Python's stdlib, same
    files), or the document count means nothing."""
    now, recorded = corpora.describe(source.corpus), source.corpus_description
    if now != recorded:
        changed = sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))
        raise UserError(f"corpus {source.corpus!r} has changed since cache "
                        f"{source.cache_dir} was built ({', '.join(changed)}): its held-out "
                        "text cannot be told apart; rebuild the cache")


def documents_read(source: SpliceSource, tokenizer: Any) -> int:
    """How many corpus documents the cache's build read: recorded, or found by replay."""
    if source.n_documents_read is not None:
        return source.n_documents_read
    texts = TextsRead(corpora.documents(source.corpus))
    produced = 0
    for batch in _contexts(texts, tokenizer, source.context_tokens, source.batch_contexts):
        produced += int(batch["keep"].sum())
        if produced >= source.n_rows:
            break
    if texts.digest.hexdigest() != source.text_sha256:
        raise UserError(f"cache {source.cache_dir} does not record how far into corpus "
                        f"{source.corpus!r} it read, and replaying its tokenisation gave "
                        "other text than it recorded (text_sha256): rebuild the cache")
    return texts.n_documents


def held_out_texts(source: SpliceSource, tokenizer: Any
                   ) -> tuple[int, Iterator[tuple[str, str]]]:
    """(the first held-out document's index, the corpus's (name, text) pairs from it)."""
    check_corpus(source)
    first = documents_read(source, tokenizer)
    texts = itertools.islice(corpora.documents(source.corpus), first, None)
    head = next(texts, None)
    if head is None:
        raise UserError(f"cache {source.cache_dir} read all {first} documents of corpus "
                        f"{source.corpus!r}: no held-out text is left (build the cache from "
                        "fewer tokens, or from a larger corpus)")
    return first, itertools.chain([head], texts)
