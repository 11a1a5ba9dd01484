"""The April-2024 ReLU SAE of "Scaling Monosemanticity" (docs/METHOD.md §1).

    f = ReLU(x W_enc + b_enc)          no decoder-bias subtraction before the encoder
    L = ‖x − x̂‖² + λ Σ_i f_i ‖W_dec,i‖   averaged over the batch; no unit-norm W_dec
    λ rises linearly from 0 over the first 5% of steps; W_dec rows random with norm 0.1
    (lib), W_enc = W_decᵀ at init only, both biases 0.

The loss is written once (sae_core/loss.py) and differentiated by autograd. Early in
training, when λ ≈ 0 and half of the features fire, the step is dense; once the SAE is
sparse the decoder and every backward product run over the active entries only
(sae_core/kernels.py), and each step picks its path by the density it measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_core import loss
from sae_core.archs import unit_norm
from sae_core.device import matmul_autocast
from sae_core.kernels import ActiveSet, encoder_values, sparse_decode, sparse_enough
from sae_core.model import SAE, StepContext, StepStats
from sae_core.schedule import warmup_factor


@dataclass(frozen=True)
class ReLU:
    l1_coefficient: float  # λ, the paper's 5
    warmup_steps: int  # λ rises linearly from 0 over these steps
    init_decoder_norm: float  # (lib) 0.1; the April update gives a range 0.05-1
    path: str = "auto"  # "dense" | "sparse" force one path (tests, bench/step_crossover.py)
    name = "relu"

    def saelens_config(self) -> dict[str, object]:
        return {"architecture": "standard", "apply_b_dec_to_input": False}

    def init(self, d_in: int, n_features: int, generator: torch.Generator) -> SAE:
        """Decoder rows in random directions with L2 norm init_decoder_norm; W_enc = W_decᵀ
        at init only; both biases 0 (April-2024 update)."""
        sae = SAE(d_in, n_features, self)
        unit_norm.init_tied(sae, self.init_decoder_norm, generator)
        return sae

    def fit_to_data(self, sae: SAE, x: torch.Tensor) -> None:
        return None  # the April update starts both biases at 0

    def l1_at(self, step: int) -> float:
        return self.l1_coefficient * warmup_factor(step, self.warmup_steps)

    def schedule(self, step: int) -> dict[str, float]:
        return {"l1_coefficient": self.l1_at(step)}

    def encode(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(sae.b_enc, x, sae.W_enc).relu_()

    def gradients(self, sae: SAE, x: torch.Tensor, ctx: StepContext) -> StepStats:
        """Autograd on loss.mse + λ · loss.l1_penalty; dense, or over the active entries
        (kernels.py)."""
        if self.path not in ("auto", "dense", "sparse"):
            raise ValueError(f"path must be 'auto', 'dense' or 'sparse', got {self.path!r}")
        sae.zero_grad(set_to_none=True)
        batch = x.shape[0]
        with matmul_autocast(x.device, ctx.mm_dtype):
            pre = torch.addmm(sae.b_enc, x, sae.W_enc)  # [B, F]; graph used by the dense path
        path = self.path
        if path == "auto":
            path = "sparse" if sparse_enough(pre.detach()) else "dense"
        if path == "sparse":  # fp32 throughout: these products are cheap, bf16 buys nothing
            pre = pre.detach().to(sae.W_dec.dtype)
            active = ActiveSet.where(pre > 0)
            values = encoder_values(pre, x, sae.W_enc, sae.b_enc, None, active)
            x_hat = sparse_decode(values, sae.W_dec, active) + sae.b_dec
            f_sum = torch.zeros_like(sae.b_enc).index_add(0, active.cols, values)  # [F]
        else:
            f = pre.relu_().to(sae.W_dec.dtype)  # in place: addmm saves its inputs, not pre
            with matmul_autocast(x.device, ctx.mm_dtype):
                x_hat = torch.addmm(sae.b_dec, f, sae.W_dec)
            x_hat, f_sum = x_hat.to(x.dtype), f.sum(0)
        mse = loss.mse(x, x_hat)
        penalty = loss.l1_penalty(f_sum, sae.W_dec, batch)
        total = mse + self.l1_at(ctx.step) * penalty
        total.backward()
        return StepStats(total.detach(), {"mse": mse.detach(), "l1_penalty": penalty.detach()},
                         f_sum.detach() > 0)

    def after_step(self, sae: SAE) -> None:
        return None  # no constraint on W_dec: the penalty's ‖W_dec,i‖ weighting replaces it

    def held_out_terms(self, sae: SAE, f: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"l1_penalty": f.sum(0) @ sae.W_dec.norm(dim=1)}

    def held_out_loss(self, metrics: dict[str, float]) -> float:
        """The paper's proxy at the final λ."""
        return metrics["mse"] + self.l1_coefficient * metrics["l1_penalty"]
