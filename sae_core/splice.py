"""Splice evaluation: how much of a model's behaviour survives when an SAE's reconstruction
replaces its residual stream at one layer (docs/METHOD.md section 4).

The residual stream at `layer` is hidden_states[layer], the output of block layer-1, as
sae_core/activations.py reads it. Text is cut into contexts exactly as the cache cuts it
(`activations._contexts`: `context_tokens` per context, padding on the right); only the
kept positions (text tokens other than each context's first) are replaced. Special
tokens, padding and the first position (SmolLM2's attention sink) keep their original
activation, for the SAE and for zero ablation alike, so an SAE whose decoder returns
zeros scores exactly 0. (SAEBench zero-ablates every position, BOS included.)

For a decoder LM three passes run on the same tokens: clean (CE_orig), spliced (CE_sae),
zero-ablated (CE_zero). The clean and zero passes run once (`LMSplice.build`); per SAE
only the spliced pass runs, and only from the splice upwards: the blocks below are
stand-ins that hand on the stored, spliced residual stream, and the model's own forward
does the rest (masks, rotary embeddings, final norm, head), so no model-specific code is
copied. `score(coder, upper_only=False)` runs the whole model with a hook instead.

Which tokens the averages run over (SAEBench's convention, which excludes BOS/EOS/pad
positions, with ours in their place): KL over the kept positions; CE over the kept
positions whose next token is a real one (the loss of position t predicts token t+1).
KL(orig ‖ spliced) is summed over the vocabulary per position, then averaged.

    ce_loss_score = (CE_zero − CE_sae) / (CE_zero − CE_orig)   ("CE loss recovered")
    delta_lm_loss = CE_sae − CE_orig        (Gemma Scope, Llama Scope, Gao et al. 2024)
    kl_div_score  = (KL_zero − KL_sae) / KL_zero
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from sae_core.activations import _blocks, _contexts, check_layer
from sae_core.coder import SparseCoder
from sae_core.errors import UserError


class ZeroAblation:
    """The coder whose reconstruction is 0 everywhere: the baseline of every score."""

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, f: Tensor) -> Tensor:
        return torch.zeros_like(f)


def spliced(x: Tensor, keep: Tensor, coder: SparseCoder) -> Tensor:
    """x [B, T, d] with the kept positions (keep [B, T]) replaced by x̂ = decode(encode(x))."""
    out = x.clone()
    out[keep] = coder.decode(coder.encode(x[keep])).to(x.dtype)
    return out


class _StandIn(nn.Module):
    """Takes the place of a block below the splice: hands its input on, or, as the last of
    them, returns the spliced residual stream (as a tuple if the block returned one)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.hidden: Tensor | None = None
        self.as_tuple = False
        # Some transformers 4.x block loops read it (Gemma 2, Qwen 2); 5.x indexes
        # config.layer_types by position instead, which the stand-ins keep in place.
        if hasattr(block, "attention_type"):
            self.attention_type = block.attention_type

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.hidden if self.hidden is not None else (
            args[0] if args else kwargs["hidden_states"])
        return (out,) if self.as_tuple else out


class BlockSplice:
    """A model opened at hidden_states[layer]: read it, replace it, run the rest."""

    def __init__(self, net: Any, layer: int | None = None) -> None:
        self.net = net
        self.layer = check_layer(layer, net.config.num_hidden_layers, type(net).__name__)
        self._parent, self._attr, blocks = _blocks(net)
        self._blocks = blocks
        self._stand_ins = [_StandIn(block) for block in blocks[: self.layer]]
        self._upper = nn.ModuleList([*self._stand_ins, *blocks[self.layer:]])
        self.device = next(net.parameters()).device

    def _run(self, batch: dict[str, Tensor]) -> Any:
        return self.net(input_ids=batch["input_ids"].to(self.device),
                        attention_mask=batch["attention_mask"].to(self.device))

    def clean(self, batch: dict[str, Tensor]) -> tuple[Tensor, Any]:
        """(residual stream at the layer [B, T, d], the model's output), unmodified."""
        captured: list[Tensor] = []

        def capture(module: nn.Module, inputs: Any, output: Any) -> None:
            for stand_in in self._stand_ins:
                stand_in.as_tuple = isinstance(output, tuple)
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = self._blocks[self.layer - 1].register_forward_hook(capture)
        try:
            output = self._run(batch)
        finally:
            handle.remove()
        return captured[0], output

    def upper(self, batch: dict[str, Tensor], hidden: Tensor) -> Any:
        """The model's output with hidden_states[layer] = hidden [B, T, d], running the
        blocks from the layer upwards only."""
        self._stand_ins[-1].hidden = hidden.to(self.device)
        setattr(self._parent, self._attr, self._upper)
        try:
            return self._run(batch)
        finally:
            setattr(self._parent, self._attr, self._blocks)
            self._stand_ins[-1].hidden = None

    def hooked(self, batch: dict[str, Tensor], hidden: Tensor) -> Any:
        """The same as `upper`, through the whole model with a hook on block layer-1."""

        def replace(module: nn.Module, inputs: Any, output: Any) -> Any:
            new = hidden.to(self.device)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = self._blocks[self.layer - 1].register_forward_hook(replace)
        try:
            return self._run(batch)
        finally:
            handle.remove()


def held_out_batches(tokenizer: Any, texts: Iterable[tuple[str, str]], n_tokens: int,
                     context_tokens: int, batch_contexts: int) -> Iterator[dict[str, Tensor]]:
    """The cache's contexts of (name, text) pairs, whole contexts, until `n_tokens` kept
    positions: input_ids, attention_mask, keep [B, T]."""
    n_left = n_tokens
    for batch in _contexts(texts, tokenizer, context_tokens, batch_contexts):
        kept = batch["keep"].sum(1).cumsum(0)
        n_contexts = int((kept < n_left).sum()) + 1
        yield {key: value[:n_contexts] for key, value in batch.items()}
        n_left -= int(kept[min(n_contexts, len(kept)) - 1])
        if n_left <= 0:
            return


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


def _spliced_ce_kl(splice: BlockSplice, clean: list[_Clean], coder: SparseCoder,
                   upper_only: bool) -> tuple[Tensor, Tensor]:
    """Per-token CE [n_ce] and KL [n_kl] with `coder` spliced in, over every batch."""
    head = splice.net.get_output_embeddings()
    ce, kl = [], []
    for c in clean:
        log_q = _log_probs(spliced_logits(splice, c, coder, upper_only), c.batch["keep"])
        ce.append(_ce(log_q, c.batch))
        kl.append(_kl(_log_probs(head(c.head_in), c.batch["keep"]), log_q))
    return torch.cat(ce), torch.cat(kl)


@torch.inference_mode()
def spliced_logits(splice: BlockSplice, c: _Clean, coder: SparseCoder,
                   upper_only: bool = True) -> Tensor:
    """Logits [B, T, V] of one clean batch with `coder` spliced in."""
    hidden = spliced(c.x, c.batch["keep"].to(c.x.device), coder)
    run = splice.upper if upper_only else splice.hooked
    return run(c.batch, hidden).logits


class LMSplice:
    """CE and KL of a decoder LM with SAEs spliced at one layer, on one held-out text.
    `build` runs the clean and zero-ablated passes once; `score` runs one SAE's."""

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
                # The clean logits are recomputed per SAE from the head's input (storing
                # N x vocabulary floats would take 0.8 GB at 4096 tokens of SmolLM2).
                if not torch.allclose(head(clean[-1].head_in), output.logits, atol=1e-4):
                    raise UserError(f"{type(net).__name__} transforms its logits after its"
                                    " output head; splice evaluation does not support it")
                ce_orig.append(_ce(_log_probs(output.logits, batch["keep"]), batch))
        finally:
            hook.remove()
        if not clean:
            raise UserError("splice evaluation got no text")
        ce_zero, kl_zero = _spliced_ce_kl(splice, clean, ZeroAblation(), upper_only=True)
        return cls(splice, clean, torch.cat(ce_orig), ce_zero, kl_zero)

    @torch.inference_mode()
    def score(self, coder: SparseCoder, upper_only: bool = True) -> dict[str, float]:
        """SAEBench's model_performance/behavior_preservation metrics, delta_lm_loss, and
        the token counts averaged over. coder: raw model units (coder.RawUnits)."""
        ce_sae, kl_sae = _spliced_ce_kl(self.splice, self.clean, coder, upper_only)
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
