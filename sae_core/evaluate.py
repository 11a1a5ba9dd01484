"""Held-out metrics of a trained SAE, for any architecture (docs/METHOD.md section 1)."""

from __future__ import annotations

import torch

from sae_core.device import matmul_autocast
from sae_core.kernels import SPARSE_MAX_DENSITY, ActiveSet, sparse_decode
from sae_core.model import SAE

# f is decoded through its active entries when it is sparse (kernels.SPARSE_MAX_DENSITY):
# on one thread, d=384, F=8192, 65,536 tokens at L0 43, the final evaluation took 14.5 s
# dense and 10.2 s so (docs/METHOD.md section 5).


@torch.no_grad()
def evaluate(
    sae: SAE,
    x: torch.Tensor,
    mm_dtype: torch.dtype | None = None,
    chunk_tokens: int = 8192,
) -> dict[str, float]:
    """loss, mse, l0, explained_variance and the architecture's own terms (the ReLU SAE:
    l1_penalty) over held-out x [N, d].

    The loss is the architecture's (the ReLU SAE: the paper's proxy MSE + λ·penalty at
    the final λ). Computed in chunks so that N x F never sits in memory at once.
    """
    n_tokens = x.shape[0]
    sq_err = active = 0.0
    sums: dict[str, float] = {}
    for chunk in x.split(chunk_tokens):
        with matmul_autocast(chunk.device, mm_dtype):
            f = sae.encode(chunk)
            x_hat = _decode(sae, f) if mm_dtype is None else sae.decode(f)
        f = f.float()
        sq_err += (chunk - x_hat.float()).pow(2).sum().item()
        active += (f > 0).sum().item()
        for name, value in sae.arch.held_out_terms(sae, f).items():
            sums[name] = sums.get(name, 0.0) + value.item()
    total_var = (x - x.mean(0)).pow(2).sum().item()
    metrics = {"mse": sq_err / n_tokens, **{k: v / n_tokens for k, v in sums.items()},
               "l0": active / n_tokens}
    return {
        "loss": sae.arch.held_out_loss(metrics),
        **metrics,
        "explained_variance": 1.0 - sq_err / total_var,
        # 1 - explained variance: the metric that compares architectures at matched L0
        "normalized_mse": sq_err / total_var,
    }


def _decode(sae: SAE, f: torch.Tensor) -> torch.Tensor:
    """x̂ = f W_dec + b_dec, through f's active entries only when it is sparse."""
    if int(torch.count_nonzero(f)) > SPARSE_MAX_DENSITY * f.numel():
        return sae.decode(f)  # counted first: the indices of a dense f would be huge
    mask = f != 0
    return sparse_decode(f[mask], sae.W_dec, ActiveSet.where(mask)) + sae.b_dec
