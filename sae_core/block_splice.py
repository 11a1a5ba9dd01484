"""A model opened at one layer: its residual stream read, replaced, the rest run.

The residual stream at `layer` is hidden_states[layer], the output of block layer-1, as
sae_core/activations.py reads it. `BlockSplice.upper` runs only the blocks from the layer
upwards: the blocks below are stand-ins that hand on the stored, spliced residual stream,
and the model's own forward does the rest (embeddings, masks, rotary embeddings, final
norm, head), so no model-specific code is copied and any transformers version whose block
loop calls each block in turn works. `hooked` runs the whole model with a forward hook
instead: the same output (tests/test_splice.py), at the cost of the lower blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

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

    @torch.inference_mode()
    def probe(self, batch: dict[str, Tensor]) -> None:
        """A clean pass over two tokens of one context: what the stand-ins must return
        (a tensor or a tuple) before `upper` runs on a reference loaded from disk."""
        self.clean({key: value[:1, :2] for key, value in batch.items()})

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


def save_reference(path: str | Path, layer: int, per_batch: list[dict[str, Tensor]],
                   shared: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """A splice reference (what `build` computed once) as one safetensors file: per-batch
    tensors under "{i}.{name}", the rest under their names; `metadata` kept as strings."""
    tensors = {f"{i}.{name}": t for i, batch in enumerate(per_batch) for name, t in batch.items()}
    tensors |= shared
    meta = {**(metadata or {}), "layer": str(layer), "n_batches": str(len(per_batch))}
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(path), meta)


def load_reference(path: str | Path, net: Any
                   ) -> tuple[BlockSplice, list[dict[str, Tensor]], dict[str, Tensor]]:
    """(the splice at the saved layer of `net`, per-batch tensors, shared tensors) as
    `save_reference` wrote them, on net's device; refused if net's width is not theirs."""
    device = next(net.parameters()).device
    with safe_open(str(path), framework="pt", device=str(device)) as file:
        meta = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    per_batch: list[dict[str, Tensor]] = [{} for _ in range(int(meta["n_batches"]))]
    shared = {}
    for key, tensor in tensors.items():
        index, _, name = key.partition(".")
        if name and index.isdigit():
            per_batch[int(index)][name] = tensor
        else:
            shared[key] = tensor
    if per_batch[0]["x"].shape[-1] != net.config.hidden_size:
        raise UserError(f"splice reference {path} has d={per_batch[0]['x'].shape[-1]}, "
                        f"the model d={net.config.hidden_size}")
    return BlockSplice(net, int(meta["layer"])), per_batch, shared
