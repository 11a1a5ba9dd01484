"""The activation cache on disk and its reader (docs/CONTRACTS.md, "Activation cache").

    DIR/meta.json            written last (cache_writer.py): a directory without it is no cache
    DIR/train-00000.npy      [n_tokens, d_in] raw activations, rows shuffled at build time
    DIR/eval-00000.npy       the held-out split
    DIR/true_dictionary.npy  synthetic caches only: [n_true_features, d_in], unit rows

bfloat16 has no numpy dtype: it is stored as its uint16 bit pattern and named in meta.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_core.cache_reader import prefetched, read_batch
from sae_core.errors import UserError

FORMAT = "monoscale-cache/1"
STORAGE_DTYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}


class CacheError(UserError):
    """A missing, half-built or corrupt cache. The message names the path or shard."""


def to_storage(rows: np.ndarray, dtype: str) -> np.ndarray:
    """float rows [n, d] -> the on-disk representation of `dtype`."""
    if dtype == "bfloat16":
        bf16 = torch.from_numpy(np.array(rows, dtype=np.float32)).bfloat16()
        return bf16.view(torch.int16).numpy().view(np.uint16)
    with np.errstate(over="ignore"):  # float16 overflow becomes inf, which the writer refuses
        return np.asarray(rows, dtype=STORAGE_DTYPES[dtype])


def from_storage(rows: np.ndarray, dtype: str, scale: float = 1.0) -> torch.Tensor:
    """On-disk rows [n, d] -> float32 tensor [n, d] of rows * scale. Copies read-only
    (memory-mapped) rows; may reuse the memory of writable float32 ones."""
    if not rows.flags.writeable or not rows.flags.c_contiguous:
        rows = np.array(rows)
    tensor = torch.from_numpy(rows)
    if dtype == "bfloat16":
        tensor = tensor.view(torch.int16).view(torch.bfloat16)
    tensor = tensor.float()
    return tensor.mul_(scale) if scale != 1.0 else tensor


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


class ActivationCache:
    """Read-only view of a cache directory. Open with `ActivationCache.open(path)`."""

    def __init__(self, path: Path, meta: dict[str, Any], train: list[np.ndarray],
                 eval_: list[np.ndarray]) -> None:
        self.path = path
        self.meta = meta
        self.d_in: int = meta["d_in"]
        self.dtype: str = meta["dtype"]
        self.norm_scale: float = meta["norm_scale"]
        self.n_train_tokens: int = meta["n_train_tokens"]
        self.n_eval_tokens: int = meta["n_eval_tokens"]
        self._train = train  # memory-mapped shards [n_i, d_in]
        self._eval = eval_

    @classmethod
    def open(cls, path: str | Path, verify: str = "size") -> ActivationCache:
        """Open and check a cache. verify="size": every shard has its recorded shape and
        file size (milliseconds); "full": also its sha256 (about 1 s per GB)."""
        if verify not in ("size", "full"):
            raise ValueError(f"verify must be 'size' or 'full', got {verify!r}")
        path = Path(path)
        meta = read_meta(path)
        shards = {}
        for split in ("train", "eval"):
            shards[split] = [_open_shard(path, s, meta, verify) for s in meta[f"{split}_shards"]]
        for extra in meta.get("extra_files", []):  # a synthetic cache's true_dictionary.npy
            file = path / extra["file"]
            if not file.exists() or (verify == "full" and sha256_file(file) != extra["sha256"]):
                raise CacheError(f"{file} is missing or fails its sha256 checksum: the cache "
                                 "is corrupt, rebuild it")
        return cls(path, meta, shards["train"], shards["eval"])

    def train_batches(self, batch_size_tokens: int, seed: int, start_step: int = 0,
                      device: str | torch.device = "cpu", prefetch: bool = True
                      ) -> Iterator[torch.Tensor]:
        """Infinite iterator of normalised float32 batches [batch_size_tokens, d_in].

        Batch k depends only on (seed, k): each epoch visits every train row once, in a
        seeded permutation of contiguous row blocks, so `start_step=k` resumes exactly at
        batch k. With `prefetch`, a thread reads batch k+1 while batch k is used.
        """
        if batch_size_tokens <= 0 or start_step < 0:
            raise UserError(f"batch_size_tokens must be > 0 and start_step >= 0, got "
                            f"{batch_size_tokens}, {start_step}")
        device = torch.device(device)

        def make(step: int) -> torch.Tensor:
            rows = read_batch(self._train, batch_size_tokens, seed, step)
            batch = from_storage(rows, self.dtype, self.norm_scale)
            return batch.pin_memory() if device.type == "cuda" else batch

        steps = prefetched(make, start_step) if prefetch else map(make, count(start_step))
        return (batch.to(device, non_blocking=True) for batch in steps)

    def eval_tokens(self, n_tokens: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """The first min(n_tokens, n_eval_tokens) held-out rows, normalised: [n, d_in]."""
        parts, left = [], n_tokens
        for shard in self._eval:
            if left <= 0:
                break
            parts.append(from_storage(shard[:left], self.dtype, self.norm_scale))
            left -= parts[-1].shape[0]
        return (torch.cat(parts) if parts else torch.empty(0, self.d_in)).to(device)

    def true_dictionary(self) -> torch.Tensor | None:
        """Synthetic caches: the planted feature directions [n_true_features, d_in], unit
        rows (the normalisation is one scalar, so directions are the same); else None."""
        file = self.path / "true_dictionary.npy"
        return torch.from_numpy(np.load(file)).float() if file.exists() else None


def read_meta(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CacheError(f"no activation cache at {path} (not a directory)")
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise CacheError(f"{path} is not a finished activation cache (no meta.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{meta_file} is corrupt: {err}") from None
    keys = ("d_in", "dtype", "norm_scale", "n_train_tokens", "n_eval_tokens",
            "train_shards", "eval_shards")
    missing = [k for k in keys if k not in meta] if isinstance(meta, dict) else list(keys)
    if missing or meta.get("format") != FORMAT:
        raise CacheError(f"{meta_file} is not a {FORMAT} meta file (missing {missing})")
    if meta["dtype"] not in STORAGE_DTYPES:
        raise CacheError(f"{meta_file}: unknown dtype {meta['dtype']!r}")
    shard_keys = ("file", "n_tokens", "sha256")
    for split in ("train", "eval"):
        shards = meta[f"{split}_shards"]
        if not isinstance(shards, list) or not all(
                isinstance(s, dict) and all(k in s for k in shard_keys) for s in shards):
            raise CacheError(f"{meta_file}: {split}_shards must list shards with "
                             f"{', '.join(shard_keys)}")
        if sum(s["n_tokens"] for s in shards) != meta[f"n_{split}_tokens"]:
            raise CacheError(f"{meta_file}: {split} shards do not add up to n_{split}_tokens")
    return meta


def _open_shard(root: Path, shard: dict[str, Any], meta: dict[str, Any],
                verify: str) -> np.ndarray:
    file = root / shard["file"]
    if not file.exists():
        raise CacheError(f"shard {file} is missing")
    if verify == "full" and sha256_file(file) != shard["sha256"]:
        raise CacheError(f"shard {file} fails its sha256 checksum: the cache is corrupt, "
                         "rebuild it")
    try:
        rows = np.load(file, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise CacheError(f"shard {file} is unreadable: {err}") from None
    expected_shape = (shard["n_tokens"], meta["d_in"])
    expected_bytes = rows.offset + rows.nbytes
    if rows.shape != expected_shape or rows.dtype != STORAGE_DTYPES[meta["dtype"]]:
        raise CacheError(f"shard {file} holds {rows.dtype}{list(rows.shape)}, meta.json says "
                         f"{meta['dtype']}{list(expected_shape)}")
    if file.stat().st_size != expected_bytes:
        raise CacheError(f"shard {file} has {file.stat().st_size} bytes, expected "
                         f"{expected_bytes}")
    return rows
