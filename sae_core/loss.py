"""Loss terms shared by the architectures' steps, as autograd Functions with their
backward written out.

Shapes: x, x_hat [B, d]; f_sum = Σ_b f_b [F]; W_dec [F, d].
All inputs are in the normalised space (E‖x‖² = d, docs/METHOD.md §1).

Both terms are cheap next to the SAE's products, but not free on a sparse step, where
the dense encoder product is all that is left (docs/METHOD.md §5.4): autograd's own
backward of ‖x − x̂‖² runs four passes over [B, d], and that of f_sum · ‖W_dec‖ a divide,
a masked fill and a multiply over [F, d]. The backward passes below are one pass each,
as in the hand-written step these replaced. tests/test_loss.py checks them against
autograd in double.
"""

from __future__ import annotations

from typing import Any

import torch


class _SquaredError(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        err = x_hat - x  # [B, d]
        ctx.save_for_backward(err)
        ctx.dtypes = x_hat.dtype, x.dtype
        flat = err.reshape(-1)
        return torch.dot(flat, flat) / x.shape[0]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (err,) = ctx.saved_tensors
        g_err = err * (2.0 * g / err.shape[0])
        g_x_hat = g_err.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        g_x = -g_err.to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return g_x_hat, g_x


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared L2 reconstruction error summed over d, averaged over the batch. -> []"""
    return _SquaredError.apply(x_hat, x)


class _NormWeightedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, f_sum: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
        norms = W_dec.norm(dim=1)  # [F]
        ctx.save_for_backward(f_sum, W_dec, norms)
        return f_sum @ norms

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        f_sum, W_dec, norms = ctx.saved_tensors
        g_f_sum = norms * g if ctx.needs_input_grad[0] else None
        g_W_dec = None
        if ctx.needs_input_grad[1]:  # ∂‖w‖/∂w = w/‖w‖; a zero row gets 0, as in autograd
            scale = torch.where(norms > 0, f_sum * g / norms, 0.0)
            g_W_dec = W_dec * scale.unsqueeze(1)
        return g_f_sum, g_W_dec


def l1_penalty(f_sum: torch.Tensor, W_dec: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Σ_i f_i ‖W_dec[i]‖₂ averaged over the batch, from f_sum [F]. -> []

    Weighting by the decoder norm makes the penalty invariant to rescaling a feature
    between encoder and decoder, so no unit-norm constraint on W_dec is needed
    (April-2024 update).
    """
    return _NormWeightedSum.apply(f_sum, W_dec) / n_tokens
