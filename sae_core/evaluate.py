"""Held-out metrics of a trained SAE (METHOD.md section 1)."""

from __future__ import annotations

import torch
from torch.nn import functional

from sae_core.model import SAE
from sae_core.step import SPARSE_MAX_DENSITY


@torch.no_grad()
def evaluate(
    sae: SAE,
    x: torch.Tensor,
    l1_coefficient: float,
    mm_dtype: torch.dtype | None = None,
    chunk_tokens: int = 8192,
) -> dict[str, float]:
    """loss, mse, l1_penalty, l0 and explained_variance over held-out x [N, d].

    The loss is the paper's proxy: MSE + λ·penalty at the final λ. Computed in chunks so
    that N x F never sits in memory at once.
    """
    n_tokens = x.shape[0]
    dec_norms = sae.W_dec.norm(dim=1)
    sq_err = penalty = active = 0.0
    for chunk in x.split(chunk_tokens):
        with torch.autocast(chunk.device.type, dtype=mm_dtype or torch.float32,
                            enabled=mm_dtype is not None):
            f = sae.encode(chunk)
            x_hat = _decode(sae, f) if mm_dtype is None else sae.decode(f)
        f = f.float()
        sq_err += (chunk - x_hat.float()).pow(2).sum().item()
        penalty += (f.sum(0) @ dec_norms).item()
        active += (f > 0).sum().item()
    total_var = (x - x.mean(0)).pow(2).sum().item()
    mse = sq_err / n_tokens
    l1_penalty = penalty / n_tokens
    return {
        "loss": mse + l1_coefficient * l1_penalty,
        "mse": mse,
        "l1_penalty": l1_penalty,
        "l0": active / n_tokens,
        "explained_variance": 1.0 - sq_err / total_var,
    }


def _decode(sae: SAE, f: torch.Tensor) -> torch.Tensor:
    """x̂ = f W_dec + b_dec, through f's active entries only when it is sparse (as the
    training step does, sae_core/step.py). Measured here, one thread, d=384, F=8192,
    65,536 tokens at L0 43: the final evaluation took 14.5 s dense, 10.2 s so."""
    batch = f.shape[0]
    if int(torch.count_nonzero(f)) > SPARSE_MAX_DENSITY * f.numel():
        return sae.decode(f)  # counted first: the indices of a dense f would be huge
    rows, cols = f.nonzero(as_tuple=True)
    ptr = torch.zeros(batch + 1, dtype=torch.long, device=f.device)
    ptr[1:] = torch.bincount(rows, minlength=batch).cumsum(0)
    x_hat = functional.embedding_bag(cols, sae.W_dec, ptr, mode="sum",
                                     per_sample_weights=f[rows, cols], include_last_offset=True)
    return x_hat.add_(sae.b_dec)
