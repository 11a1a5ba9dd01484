"""Loss terms as pure functions, shared by the architectures' steps and their tests.

Shapes: x, x_hat [B, d]; f (feature activations) [B, F]; f_sum = Σ_b f_b [F]; W_dec [F, d].
All inputs are in the normalised space (E‖x‖² = d, docs/METHOD.md §1).
"""

from __future__ import annotations

import torch
from torch.nn import functional


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared L2 reconstruction error summed over d, averaged over the batch. -> []

    One fused op each way: written as (x - x_hat).pow(2).sum(-1).mean(), its backward
    runs four passes over [B, d] (5% of a sparse step at d=384, F=4096)."""
    return functional.mse_loss(x_hat, x, reduction="sum") / x.shape[0]


def l1_penalty(f_sum: torch.Tensor, W_dec: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Σ_i f_i ‖W_dec[i]‖₂ averaged over the batch, from f_sum [F]. -> []

    Weighting by the decoder norm makes the penalty invariant to rescaling a feature
    between encoder and decoder, so no unit-norm constraint on W_dec is needed
    (April-2024 update).
    """
    return f_sum @ W_dec.norm(dim=1) / n_tokens


def relu_loss(x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor, W_dec: torch.Tensor,
              l1: float) -> torch.Tensor:
    """The ReLU SAE's training loss, MSE + λ · penalty, from dense f [B, F]. -> []"""
    return mse(x, x_hat) + l1 * l1_penalty(f.sum(0), W_dec, f.shape[0])
