"""Splice evaluation: how much of a model's behaviour survives when an SAE's reconstruction
replaces its residual stream at one layer (docs/METHOD.md §4.1, §4.2).

The residual stream at `layer` is hidden_states[layer] (sae_core/block_splice.py).
Text is cut into contexts exactly as the cache cuts it
(`activations._contexts`: `context_tokens` per context, padding on the right); only the
kept positions (text tokens other than each context's first) are replaced. Special
tokens, padding and the first position (SmolLM2's attention sink) keep their original
activation, for the SAE and for zero ablation alike, so an SAE whose decoder returns
zeros scores exactly 0. (SAEBench zero-ablates every position, BOS included.)

For a decoder LM three passes run on the same tokens: clean (CE_orig), spliced (CE_sae),
zero-ablated (CE_zero). The clean and zero passes run once (`LMSplice.build`); per SAE
only the spliced pass runs, and only the blocks from the splice upwards (`BlockSplice.
upper`; `score(coder, upper_only=False)` runs the whole model with a hook instead). The
clean logits are not kept (N x vocabulary floats: 0.8 GB at 4096 tokens of SmolLM2) but
recomputed from the head's stored input, once per batch for all the SAEs of `score_many`.

Which tokens the averages run over (SAEBench's convention, which excludes BOS/EOS/pad
positions, with ours in their place): KL over the kept positions; CE over the kept
positions whose next token is a real one (the loss of position t predicts token t+1).
KL(orig ‖ spliced) is summed over the vocabulary per position, then averaged.

    ce_loss_score = (CE_zero − CE_sae) / (CE_zero − CE_orig)   ("CE loss recovered")
    delta_lm_loss = CE_sae − CE_orig        (Gemma Scope, Llama Scope, Gao et al. 2024)
    kl_div_score  = (KL_zero − KL_sae) / KL_zero
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Clean:
    batch: dict[str, Tensor]  # input_ids, attention_mask, keep [B, T]
    x: Tensor  # [B, T, d] residual stream at the layer
    head_in: Tensor  # [B, T, d] input of the output head: the clean logits, recomputed


def _log_probs(logits: Tensor, keep: Tensor) -> Tensor:
    """log-softmax [n_kl, V] of logits [B, T, V] at the kept positions."""
    return functional.log_softmax(logits[keep.to(logits.device)].float(), dim=-1)


def _ce(log_q: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Per-token CE [n_ce]: at the kept positions whose next token is a real one."""
    keep = batch["keep"]
    next_ids = batch["input_ids"].roll(-1, dims=1)[keep]
    has_next = batch["attention_mask"].roll(-1, dims=1).bool()
    has_next[:, -1] = False
    rows = has_next[keep].to(log_q.device)
    return -log_q[rows].gather(-1, next_ids.to(log_q.device)[rows][:, None])[:, 0]


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(clean ‖ spliced) summed over the vocabulary, per kept position [n_kl]."""
    return functional.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)


def _spliced_ce_kl(splice: BlockSplice, clean: list[_Clean], coders: list[SparseCoder],
                   upper_only: bool) -> list[tuple[Tensor, Tensor]]:
    """Per coder: per-token CE [n_ce] and KL [n_kl] with it spliced in. The clean
    log-probabilities of a batch are recomputed once for all the coders."""
    head = splice.net.get_output_embeddings()
    ce: list[list[Tensor]] = [[] for _ in coders]
    kl: list[list[Tensor]] = [[] for _ in coders]
    for c in clean:
        keep = c.batch["keep"]
        log_p = functional.log_softmax(head(c.head_in[keep.to(c.head_in.device)]).float(),
                                       dim=-1)
        for i, coder in enumerate(coders):
            log_q = _log_probs(spliced_logits(splice, c, coder, upper_only), keep)
            ce[i].append(_ce(log_q, c.batch))
            kl[i].append(_kl(log_p, log_q))
    return [(torch.cat(a), torch.cat(b)) for a, b in zip(ce, kl, strict=True)]


@torch.inference_mode()
def spliced_logits(splice: BlockSplice, c: _Clean, coder: SparseCoder,
                   upper_only: bool = True) -> Tensor:
    """Logits [B, T, V] of one clean batch with `coder` spliced in."""
    hidden = spliced(c.x, c.batch["keep"].to(c.x.device), coder)
    run = splice.upper if upper_only else splice.hooked
    return run(c.batch, hidden).logits


class LMSplice:
    """CE and KL of a decoder LM with SAEs spliced at one layer, on one held-out text.
    `build` runs the clean and zero-ablated passes once; `score` runs one SAE's, and
    `score_many` several, recomputing the clean logits once for all of them."""

    def __init__(self, splice: BlockSplice, clean: list[_Clean], ce_orig: Tensor,
                 ce_zero: Tensor, kl_zero: Tensor) -> None:
        self.splice, self.clean = splice, clean
        self.ce_orig, self.ce_zero, self.kl_zero = ce_orig, ce_zero, kl_zero
        self.n_contexts = sum(len(c.batch["keep"]) for c in clean)

    @classmethod
    @torch.inference_mode()
    def build(cls, net: Any, tokenizer: Any, texts: Iterable[tuple[str, str]],
              layer: int | None = None, n_tokens: int = 4096, context_tokens: int = 128,
              batch_contexts: int = 4) -> LMSplice:
        """net: a causal LM (`load_model(..., lm_head=True)`); texts: held-out (name, text)
        pairs; n_tokens: kept positions, at least (whole contexts are taken)."""
        splice = BlockSplice(net, layer)
        head = net.get_output_embeddings()
        clean: list[_Clean] = []
        ce_orig: list[Tensor] = []
        head_in: list[Tensor] = []
        hook = head.register_forward_hook(lambda m, inputs, out: head_in.append(inputs[0]))
        try:
            for batch in held_out_batches(tokenizer, texts, n_tokens, context_tokens,
                                          batch_contexts):
                x, output = splice.clean(batch)
                clean.append(_Clean(batch, x, head_in.pop()))
                # The clean logits are recomputed from the head's input: check, once, that
                # they can be (Gemma 2 soft-caps its logits after the head, for one).
                if len(clean) == 1 and not torch.allclose(head(clean[0].head_in),
                                                          output.logits, atol=1e-4):
                    raise UserError(f"{type(net).__name__} transforms its logits after its"
                                    " output head; splice evaluation does not support it")
                ce_orig.append(_ce(_log_probs(output.logits, batch["keep"]), batch))
        finally:
            hook.remove()
        if not clean:
            raise UserError("splice evaluation got no text")
        [(ce_zero, kl_zero)] = _spliced_ce_kl(splice, clean, [ZeroAblation()], upper_only=True)
        return cls(splice, clean, torch.cat(ce_orig), ce_zero, kl_zero)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """The clean and zero passes' results, for `load` in another process (a sweep's
        trials): 2 x n_tokens x d floats and the token ids, 19 MB for SmolLM2 at 4096."""
        per_batch = [{**c.batch, "x": c.x, "head_in": c.head_in} for c in self.clean]
        shared = {"ce_orig": self.ce_orig, "ce_zero": self.ce_zero, "kl_zero": self.kl_zero}
        save_reference(path, self.splice.layer, per_batch, shared, metadata)

    @classmethod
    def load(cls, path: str | Path, net: Any) -> LMSplice:
        """What `save` wrote, with `net` the same causal LM it was built from."""
        splice, per_batch, shared = load_reference(path, net)
        clean = [_Clean({k: b[k] for k in ("input_ids", "attention_mask", "keep")}, b["x"],
                        b["head_in"]) for b in per_batch]
        splice.probe(clean[0].batch)
        return cls(splice, clean, shared["ce_orig"], shared["ce_zero"], shared["kl_zero"])

    def score(self, coder: SparseCoder, upper_only: bool = True) -> dict[str, float]:
        """SAEBench's model_performance/behavior_preservation metrics, delta_lm_loss, and
        the token counts averaged over. coder: raw model units (coder.RawUnits)."""
        return self.score_many([coder], upper_only)[0]

    @torch.inference_mode()
    def score_many(self, coders: list[SparseCoder], upper_only: bool = True
                   ) -> list[dict[str, float]]:
        """`score` of each coder, sharing the clean log-probabilities between them."""
        return [self._metrics(ce, kl)
                for ce, kl in _spliced_ce_kl(self.splice, self.clean, coders, upper_only)]

    def _metrics(self, ce_sae: Tensor, kl_sae: Tensor) -> dict[str, float]:
        orig, sae, zero = (v.mean().item() for v in (self.ce_orig, ce_sae, self.ce_zero))
        kl_with_sae, kl_with_ablation = kl_sae.mean().item(), self.kl_zero.mean().item()
        return {
            "ce_loss_score": (zero - sae) / (zero - orig),
            "ce_loss_with_ablation": zero,
            "ce_loss_with_sae": sae,
            "ce_loss_without_sae": orig,
            "delta_lm_loss": sae - orig,
            "kl_div_score": (kl_with_ablation - kl_with_sae) / kl_with_ablation,
            "kl_div_with_ablation": kl_with_ablation,
            "kl_div_with_sae": kl_with_sae,
            "n_tokens_ce": len(ce_sae),
            "n_tokens_kl": len(kl_sae),
        }
