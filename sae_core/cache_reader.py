"""Which rows make training batch k, and a one-batch-ahead prefetch thread.

Rows were shuffled across contexts when the cache was built, so a batch can be read as a
few contiguous blocks (fast sequential reads from the memory-mapped shards) without
correlating its tokens. Each epoch visits every train row exactly once, in a permutation
of the blocks seeded by (seed, epoch); batch k covers positions [k B, (k+1) B) of the
endless sequence of epochs, so it depends only on (seed, k) and a resumed run reads the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch

# 256 rows (192 KiB at d=384 fp16) per contiguous read: a 4096-token batch mixes 16 blocks,
# so batches are recombined every epoch, and reads stay sequential (docs/METHOD.md §5.1: random
# contiguous blocks read at ~0.9 GB/s from a cold file, far above what training needs).
BLOCK_ROWS = 256

T = TypeVar("T")


@lru_cache(maxsize=4)
def _spans(shard_lengths: tuple[int, ...]) -> np.ndarray:
    """The train split cut into blocks: [n_blocks, 3] of (shard, first row, n rows)."""
    spans = [(s, r, min(BLOCK_ROWS, n - r))
             for s, n in enumerate(shard_lengths) for r in range(0, n, BLOCK_ROWS)]
    return np.array(spans, dtype=np.int64).reshape(-1, 3)


@lru_cache(maxsize=4)
def _epoch(shard_lengths: tuple[int, ...], seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The blocks of one epoch in their seeded order, and each one's end position."""
    spans = _spans(shard_lengths)
    ordered = spans[np.random.default_rng([seed, epoch]).permutation(len(spans))]
    return ordered, np.cumsum(ordered[:, 2])


def read_batch(shards: list[np.ndarray], batch_size_tokens: int, seed: int,
               step: int) -> np.ndarray:
    """Rows of batch `step` in storage dtype: [batch_size_tokens, d_in]."""
    lengths = tuple(len(s) for s in shards)
    n_rows = sum(lengths)
    out = np.empty((batch_size_tokens, shards[0].shape[1]), dtype=shards[0].dtype)
    start, filled = step * batch_size_tokens, 0
    while filled < batch_size_tokens:
        epoch, pos = divmod(start + filled, n_rows)
        ordered, ends = _epoch(lengths, seed, epoch)
        i = int(np.searchsorted(ends, pos, side="right"))
        shard, first, n = (int(v) for v in ordered[i])
        offset = pos - (int(ends[i]) - n)
        take = min(n - offset, batch_size_tokens - filled)
        out[filled:filled + take] = shards[shard][first + offset:first + offset + take]
        filled += take
    return out


def prefetched(make: Callable[[int], T], start: int) -> Iterator[T]:
    """make(start), make(start + 1), ... computed one item ahead in a daemon thread.

    numpy copies and torch ops release the GIL, so the read overlaps the training step. The thread stops
    when the generator is closed or garbage-collected, or at interpreter exit.
    """
    items: queue.Queue[T | BaseException] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def work() -> None:
        # One intra-op thread for this thread only (the setting is per thread): on a busy
        # 2-core machine, converting a 4096x384 fp16 batch took ~2 ms this way against
        # ~20 ms waiting for a second pool thread (docs/METHOD.md §5.4), and it leaves the
        # trainer's threads alone.
        torch.set_num_threads(1)
        step = start
        while not stop.is_set():
            try:
                item: T | BaseException = make(step)
            except BaseException as err:  # handed to the consumer, re-raised there
                item = err
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    thread = threading.Thread(target=work, daemon=True, name="cache-prefetch")
    _running.add((stop, thread))
    thread.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        _running.discard((stop, thread))


_running: set[tuple[threading.Event, threading.Thread]] = set()


@atexit.register
def _stop_prefetchers() -> None:
    """A daemon thread still inside a torch/numpy call when the interpreter exits aborts
    the process ("terminate called without an active exception", seen here): stop them."""
    for stop, _ in list(_running):
        stop.set()
    for _, thread in list(_running):
        thread.join(timeout=5)
