"""Held-out metrics of a trained SAE (METHOD.md section 1)."""

from __future__ import annotations

import torch

from sae_core.model import SAE


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
            out = sae(chunk)
        f = out.f.float()
        sq_err += (chunk - out.x_hat.float()).pow(2).sum().item()
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
