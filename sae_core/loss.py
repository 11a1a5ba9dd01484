"""The loss of "Scaling Monosemanticity", as pure functions (the held-out metrics:
sae_core/evaluate.py).

Shapes: x, x_hat [B, d]; f (feature activations) [B, F]; W_dec [F, d].
All inputs are in the normalised space (E||x||^2 = d).
"""

from __future__ import annotations

import torch


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared L2 reconstruction error summed over d, averaged over the batch. -> []"""
    return (x - x_hat).pow(2).sum(-1).mean()


def l1_penalty(f: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Σ_i f_i ||W_dec[i]||_2, averaged over the batch. -> []

    Weighting by the decoder norm makes the penalty invariant to rescaling a feature
    between encoder and decoder, so no unit-norm constraint on W_dec is needed
    (April-2024 update).
    """
    return f.sum(0) @ W_dec.norm(dim=1) / f.shape[0]


def sae_loss(
    x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor, W_dec: torch.Tensor, l1: float
) -> torch.Tensor:
    """MSE + λ · penalty. -> []"""
    return mse(x, x_hat) + l1 * l1_penalty(f, W_dec)


