"""Decoder rows: drawn at a given norm (every architecture's init), and kept at unit norm
(Gao et al. 2024; Rajamanoharan et al. 2024) as the reference trainers keep them: the
gradient's component along each row is removed before the optimizer step, and the rows
are scaled back to norm 1 after it.

Shapes: W_dec [F, d].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sae_core.model import SAE


def random_rows(n_features: int, d_in: int, norm: float, generator: torch.Generator
                ) -> torch.Tensor:
    """[F, d] rows in random directions, each of L2 norm `norm`."""
    w = torch.randn(n_features, d_in, generator=generator)
    return w * (norm / w.norm(dim=1, keepdim=True))


@torch.no_grad()
def init_tied(sae: SAE, norm: float, generator: torch.Generator) -> None:
    """W_dec rows in random directions at L2 norm `norm`, and W_enc = W_decᵀ (at init
    only): the init every architecture here starts from (the April update; Gao et al.)."""
    w = random_rows(sae.W_dec.shape[0], sae.W_dec.shape[1], norm, generator)
    sae.W_dec.copy_(w)
    sae.W_enc.copy_(w.T)


@torch.no_grad()
def remove_parallel_gradient(W_dec: torch.nn.Parameter) -> None:
    """W_dec.grad minus its component along each (unit) row."""
    if W_dec.grad is None:
        return
    rows = W_dec / W_dec.norm(dim=1, keepdim=True)
    W_dec.grad.sub_((W_dec.grad * rows).sum(1, keepdim=True) * rows)


@torch.no_grad()
def renormalise(W_dec: torch.nn.Parameter) -> None:
    """Rows of W_dec back to unit norm."""
    W_dec.div_(W_dec.norm(dim=1, keepdim=True))
