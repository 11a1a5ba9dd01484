"""A decoder kept at unit-norm rows (Gao et al. 2024; Rajamanoharan et al. 2024), as the
reference trainers keep it: the gradient's component along each row is removed before
the optimizer step, and the rows are scaled back to norm 1 after it.

Shapes: W_dec [F, d].
"""

from __future__ import annotations

import torch


def random_rows(n_features: int, d_in: int, norm: float, generator: torch.Generator
                ) -> torch.Tensor:
    """[F, d] rows in random directions, each of L2 norm `norm`."""
    w = torch.randn(n_features, d_in, generator=generator)
    return w * (norm / w.norm(dim=1, keepdim=True))


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
