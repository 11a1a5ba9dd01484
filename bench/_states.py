"""SAE states to time the training step on: one at the start of training, one sparse.

The step's cost depends on how many features fire (sae_core/archs/relu.py switches to a
sparse path), so the benchmark times it at a realistic L0, stated in its output, and at the start
of training, where half of the features fire.
"""

from __future__ import annotations

import torch

from sae_core import archs
from sae_core.archs.relu import ReLU
from sae_core.config import RunConfig
from sae_core.model import SAE, StepContext

# Feature frequencies of trained SAEs are heavy-tailed; the planted-dictionary source uses
# p_i ∝ (i+1)^-0.5 for the same reason (sae_core/synthetic.py).
ZIPF_EXPONENT = 0.5


def normalised_batch(batch_size_tokens: int, d_in: int, generator: torch.Generator
                     ) -> torch.Tensor:
    """Gaussian tokens [B, d] with E‖x‖² = d, the normalisation of docs/METHOD.md §1."""
    return torch.randn(batch_size_tokens, d_in, generator=generator)


def initial_sae(d_in: int, n_features: int, generator: torch.Generator,
                l1_coefficient: float = 5.0) -> SAE:
    """Step 0 of training: the paper's init, both biases 0; L0 ≈ F/2. Its step runs at
    the full λ (no warm-up)."""
    return ReLU(l1_coefficient, 0, 0.1).init(d_in, n_features, generator)


@torch.no_grad()
def sparse_sae(d_in: int, n_features: int, target_l0: float, generator: torch.Generator,
               calibration_x: torch.Tensor) -> SAE:
    """The init's weights with encoder biases set so that feature i fires on a fraction
    p_i ∝ (i+1)^-ZIPF_EXPONENT of the calibration tokens [B, d], Σ p_i = target_l0.

    Rare features with B·p_i < 1 never fire on a batch, as dead and rare features of a
    trained SAE do. The L0 actually reached on a new batch is measured by the caller.
    """
    sae = initial_sae(d_in, n_features, generator)
    pre = calibration_x @ sae.W_enc  # [B, F]
    batch = pre.shape[0]
    p = torch.arange(1, n_features + 1, dtype=torch.float64) ** -ZIPF_EXPONENT
    p = (p * target_l0 / p.sum()).clamp(max=1.0)
    # Feature i fires when pre_bi + b_i > 0: put b_i at minus the (1 - p_i) quantile.
    rank = ((1.0 - p) * (batch - 1)).round().long()  # [F]
    sorted_pre = pre.sort(dim=0).values  # [B, F]
    threshold = sorted_pre.gather(0, rank.unsqueeze(0)).squeeze(0)
    sae.b_enc.copy_(-threshold)
    return sae


def gradients(sae: SAE, x: torch.Tensor, mm_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One gradient computation as the trainer runs it (sae_core/trainer.py); the loss."""
    dead = torch.zeros(sae.n_features, dtype=torch.bool, device=x.device)
    return sae.arch.gradients(sae, x, StepContext(1 << 30, dead, mm_dtype)).loss


def topk_sae(arch: str, d_in: int, n_features: int, k: int, generator: torch.Generator,
             first_batch: torch.Tensor) -> SAE:
    """A TopK-family SAE at step 0 of its recipe (unit-norm decoder, W_enc = W_decᵀ, b_dec at
    the first batch's geometric median): its step's cost is the same at every step."""
    cfg = RunConfig(cache_dir="-", d_in=d_in, n_features=n_features, n_steps=1, arch=arch, k=k)
    sae = archs.build(cfg).init(d_in, n_features, generator)
    sae.arch.fit_to_data(sae, first_batch)
    return sae
