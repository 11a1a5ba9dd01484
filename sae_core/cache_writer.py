"""Build an activation cache: stream rows in, shuffle, shard, checksum, publish atomically.

A source (synthetic.py, array_files.py, activations.py) is a `produce(writer)` function
that feeds rows to a `CacheWriter` and returns what it learned (e.g. a text checksum).
`build_cache` builds into a hidden sibling directory (sae_core/cache_staging.py) and
renames it into place after meta.json is written, so a half-built cache is never mistaken
for a cache; a cache built from the same request (same fingerprint) is reused instead of
rebuilt, and one built from another request is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sae_core.cache import (
    FORMAT,
    STORAGE_DTYPES,
    ActivationCache,
    CacheError,
    from_storage,
    read_meta,
    sha256_file,
    to_storage,
)
from sae_core.cache_staging import remove_dead_builds, staging_folder

SHARD_BYTES = 1 << 28  # 256 MiB shards: a few files per million tokens, each one mmap
EVAL_FRACTION = 0.02  # held-out split: 2% of the rows ...
EVAL_MAX_TOKENS = 1 << 18  # ... capped at 262k, 4x the default eval_n_tokens of RunConfig


class CacheWriter:
    """Collects up to `n_tokens` rows [n, d] in a staging file inside `tmp_dir`."""

    def __init__(self, tmp_dir: Path, n_tokens: int, dtype: str) -> None:
        if dtype not in STORAGE_DTYPES:
            raise CacheError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
        self.tmp_dir, self.n_tokens, self.dtype = tmp_dir, n_tokens, dtype
        self.n_written = 0
        self._staging: np.ndarray | None = None
        self._extra_files: list[dict[str, Any]] = []

    @property
    def n_remaining(self) -> int:
        return self.n_tokens - self.n_written

    def add(self, rows: np.ndarray) -> int:
        """Append float rows [n, d] (only as many as still fit); returns how many fit."""
        rows = np.asarray(rows)[: self.n_remaining]
        if rows.ndim != 2 or not np.isfinite(rows).all():
            raise CacheError(f"a source gave rows of shape {rows.shape} with NaN/inf or not 2-D")
        if self._staging is None:
            self._staging = np.lib.format.open_memmap(
                self.tmp_dir / "staging.npy", mode="w+",
                dtype=STORAGE_DTYPES[self.dtype], shape=(self.n_tokens, rows.shape[1]))
        if rows.shape[1] != self._staging.shape[1]:
            raise CacheError(f"a source gave rows of width {rows.shape[1]} after "
                             f"{self._staging.shape[1]}")
        stored = to_storage(rows, self.dtype)
        if self.dtype == "float16" and not np.isfinite(stored).all():
            raise CacheError("activations overflow float16 (|x| > 65504): use --dtype bfloat16")
        self._staging[self.n_written:self.n_written + len(rows)] = stored
        self.n_written += len(rows)
        return len(rows)

    def add_file(self, name: str, array: np.ndarray) -> None:
        """An extra array stored beside the shards (true_dictionary.npy), checksummed."""
        np.save(self.tmp_dir / name, array)
        self._extra_files.append({"file": name, "sha256": sha256_file(self.tmp_dir / name)})

    def finish(self, seed: int) -> dict[str, Any]:
        """Shuffle rows across contexts, split off eval, write shards; returns meta fields."""
        n_rows, staging = self.n_written, self._staging
        if staging is None or n_rows < 2:
            raise CacheError(f"the source gave {n_rows} rows; a cache needs at least 2")
        d_in = staging.shape[1]
        n_eval = split_sizes(n_rows)[1]
        order = np.random.default_rng(seed).permutation(n_rows)
        shard_rows = max(1024, 2 ** int(math.log2(SHARD_BYTES / (d_in * staging.itemsize))))
        train_shards, sum_sq = [], 0.0
        for i, start in enumerate(range(n_eval, n_rows, shard_rows)):
            rows = staging[order[start:start + shard_rows]]
            sum_sq += float(from_storage(rows, self.dtype).double().square().sum())
            train_shards.append(self._write_shard(f"train-{i:05d}.npy", rows))
        eval_shards = [
            self._write_shard(f"eval-{i:05d}.npy", staging[order[s:min(s + shard_rows, n_eval)]])
            for i, s in enumerate(range(0, n_eval, shard_rows))]
        del staging, self._staging
        (self.tmp_dir / "staging.npy").unlink()
        mean_sq_norm = sum_sq / (n_rows - n_eval)
        if not mean_sq_norm > 0:
            raise CacheError("every train activation is zero: nothing to normalise")
        return {
            "format": FORMAT,
            "d_in": int(d_in),
            "dtype": self.dtype,
            # E||x * norm_scale||^2 = d over the train split (docs/METHOD.md §1).
            "norm_scale": math.sqrt(d_in / mean_sq_norm),
            "n_train_tokens": n_rows - n_eval,
            "n_eval_tokens": n_eval,
            "shuffle_seed": seed,
            "train_shards": train_shards,
            "eval_shards": eval_shards,
            "extra_files": self._extra_files,
        }

    def _write_shard(self, name: str, rows: np.ndarray) -> dict[str, Any]:
        np.save(self.tmp_dir / name, rows)
        return {"file": name, "n_tokens": len(rows), "sha256": sha256_file(self.tmp_dir / name)}


def fingerprint(request: dict[str, Any]) -> str:
    """Hash of everything that determines a cache's contents."""
    blob = json.dumps({"format": FORMAT, **request}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def split_sizes(n_rows: int) -> tuple[int, int]:
    """(train, eval) rows of a cache of `n_rows`: EVAL_FRACTION held out, capped."""
    n_eval = min(EVAL_MAX_TOKENS, max(1, round(EVAL_FRACTION * n_rows)))
    return n_rows - n_eval, n_eval


class CacheMissing(CacheError):
    """`build_cache(..., reuse_only=True)` found no cache to reuse."""


def build_cache(out_dir: str | Path, request: dict[str, Any], n_tokens: int, dtype: str,
                produce: Callable[[CacheWriter], dict[str, Any]], seed: int = 0,
                reuse_only: bool = False) -> ActivationCache:
    """Build (or reuse) the cache at `out_dir` from `produce`.

    `request` says what is built (source kind and parameters) and goes into meta.json as
    "source", merged with what `produce` returns. Its fingerprint decides reuse: a cache
    built from another request is refused. `reuse_only`: build nothing, only open the
    cache that is there (CacheMissing when there is none): how a sweep checks that an
    existing cache is the one its spec describes.
    """
    out_dir = Path(out_dir)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens <= 0:
        raise CacheError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    if dtype not in STORAGE_DTYPES:
        raise CacheError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    asked = {**request, "n_tokens": n_tokens, "dtype": dtype, "seed": seed}
    key = fingerprint(asked)
    if (cache := _reusable(out_dir, key, asked, quiet=reuse_only)) is not None:
        return cache
    if reuse_only:
        raise CacheMissing(f"no activation cache at {out_dir}")
    remove_dead_builds(out_dir)
    with staging_folder(out_dir) as tmp_dir:
        started = time.perf_counter()
        writer = CacheWriter(tmp_dir, n_tokens, dtype)
        found = produce(writer)
        if 0 < writer.n_remaining:
            print(f"note: the source ran out after {writer.n_written} of {n_tokens} tokens",
                  file=sys.stderr)
        meta = writer.finish(seed)
        seconds = time.perf_counter() - started
        meta["source"] = {**request, **found}
        meta["fingerprint"] = key
        meta["build"] = {"seconds": round(seconds, 3),
                         "tokens_per_s": round(writer.n_written / seconds, 1)}
        (tmp_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:  # rename() is atomic, and replaces an empty directory but never a full one
            os.rename(tmp_dir, out_dir)
        except OSError:
            if (cache := _reusable(out_dir, key, asked)) is not None:  # another build won
                return cache
            raise
    return ActivationCache.open(out_dir, verify="size")


def _reusable(out_dir: Path, key: str, asked: dict[str, Any], quiet: bool = False
              ) -> ActivationCache | None:
    if not out_dir.exists():
        return None
    if not (out_dir / "meta.json").exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            return None
        raise CacheError(f"{out_dir} exists and is not a cache: choose a new directory")
    meta = read_meta(out_dir)
    if meta.get("fingerprint") != key:
        raise CacheError(f"{out_dir} holds a cache built from other settings "
                         f"({_differences(meta, asked)}): delete it or choose another "
                         "directory")
    if not quiet:
        print(f"reusing the cache at {out_dir} (same source)", file=sys.stderr)
    return ActivationCache.open(out_dir, verify="size")


def _differences(meta: dict[str, Any], asked: dict[str, Any]) -> str:
    """What a cache records against what was asked, for the settings that differ."""
    recorded = {**meta.get("source", {}), "dtype": meta.get("dtype"),
                "seed": meta.get("shuffle_seed"),
                "n_tokens": meta.get("n_train_tokens", 0) + meta.get("n_eval_tokens", 0)}
    differ = [f"{k} {recorded.get(k)!r}, asked {v!r}" for k, v in asked.items()
              if json.dumps(recorded.get(k), default=str) != json.dumps(v, default=str)]
    return "; ".join(differ[:3]) or "its fingerprint differs"
