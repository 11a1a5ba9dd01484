"""The JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435; Gemma Scope, arXiv
2408.05147). docs/METHOD.md §3.3.

    pre = x W_enc + b_enc
    f   = pre · H(pre − θ)                   θ [F]: a learned threshold per latent
    L   = ‖x − x̂‖² + λ · L0                  or, with a target, λ (L0 / target − 1)²
                                             (the quadratic form of SAEBench's trainer)
The step H has no gradient; θ learns through straight-through estimators with a
rectangle kernel of bandwidth ε (the paper's eqs. 11-12): ∂f/∂θ = −(θ/ε) K((pre − θ)/ε),
∂H/∂θ = −(1/ε) K((pre − θ)/ε). θ is a plain fp32 parameter, not exp(log θ): Adam moves a
parameter by about its LR per step, so a log-threshold barely moves (SAELens #718, #728),
and it is kept >= 0 after each step. Decoder rows at unit norm (unit_norm.py). Early in
training half the latents fire and the step is dense; once few do, it runs over the
latents above θ − ε/2 only (sae_core/kernels.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sae_core import loss
from sae_core.archs import unit_norm
from sae_core.device import matmul_autocast
from sae_core.kernels import ActiveSet, encoder_values, sparse_decode, sparse_enough
from sae_core.model import SAE, StepContext, StepStats
from sae_core.schedule import warmup_factor


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _Jump(torch.autograd.Function):
    """pre · H(pre − θ); θ broadcasts to pre."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float
                ) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        d_theta = -(theta / eps) * _rectangle((pre - theta) / eps) * g
        return (pre > theta) * g, d_theta.sum_to_size(theta.shape), None


class _Step(torch.autograd.Function):
    """H(pre − θ), with the gradient to θ only (none to pre, as in the paper)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float
                ) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        d_theta = -(1.0 / eps) * _rectangle((pre - theta) / eps) * g
        return None, d_theta.sum_to_size(theta.shape), None


@dataclass(frozen=True)
class JumpReLU:
    l0_coefficient: float  # λ
    target_l0: float | None  # None: λ · L0; else λ (L0 / target − 1)²
    bandwidth: float  # ε
    init_threshold: float  # θ at init
    warmup_steps: int  # λ rises linearly from 0 over these steps
    init_decoder_norm: float = 1.0
    path: str = "auto"  # "dense" | "sparse" force one path (tests)
    name = "jumprelu"

    def saelens_config(self) -> dict[str, object]:
        return {"architecture": "jumprelu", "apply_b_dec_to_input": False}

    def init(self, d_in: int, n_features: int, generator: torch.Generator) -> SAE:
        sae = SAE(d_in, n_features, self)
        unit_norm.init_tied(sae, self.init_decoder_norm, generator)
        sae.register_parameter("threshold", torch.nn.Parameter(
            torch.full((n_features,), self.init_threshold)))
        return sae

    def fit_to_data(self, sae: SAE, x: torch.Tensor) -> None:
        return None

    def coefficient_at(self, step: int) -> float:
        return self.l0_coefficient * warmup_factor(step, self.warmup_steps)

    def schedule(self, step: int) -> dict[str, float]:
        return {"l0_coefficient": self.coefficient_at(step)}

    def encode(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        pre = torch.addmm(sae.b_enc, x, sae.W_enc)
        return pre * (pre > sae.get_parameter("threshold"))

    def sparsity(self, l0: torch.Tensor) -> torch.Tensor:
        """The penalty per unit λ, from the batch's mean L0 (a tensor with θ's gradient)."""
        return l0 if self.target_l0 is None else (l0 / self.target_l0 - 1).pow(2)

    def gradients(self, sae: SAE, x: torch.Tensor, ctx: StepContext) -> StepStats:
        sae.zero_grad(set_to_none=True)
        theta, eps, batch = sae.get_parameter("threshold"), self.bandwidth, x.shape[0]
        with matmul_autocast(x.device, ctx.mm_dtype):
            pre = torch.addmm(sae.b_enc, x, sae.W_enc)  # [B, F]; graph used by the dense path
        band = (theta - eps / 2).detach()  # below this, f = 0 and every gradient is 0
        path = self.path
        if path == "auto":
            path = "sparse" if sparse_enough(pre.detach(), band) else "dense"
        if path == "sparse":
            pre = pre.detach().to(sae.W_dec.dtype)
            active = ActiveSet.where(pre > band)
            z = encoder_values(pre, x, sae.W_enc, sae.b_enc, None, active)
            theta_at = theta[active.cols]
            f_values = _Jump.apply(z, theta_at, eps)
            x_hat = sparse_decode(f_values, sae.W_dec, active) + sae.b_dec
            l0 = _Step.apply(z, theta_at, eps).sum() / batch
            fired = torch.zeros_like(theta, dtype=torch.bool).index_fill_(
                0, active.cols[f_values.detach() > 0], True)
        else:
            f = _Jump.apply(pre.to(theta.dtype), theta, eps)
            with matmul_autocast(x.device, ctx.mm_dtype):
                x_hat = torch.addmm(sae.b_dec, f, sae.W_dec).to(x.dtype)
            l0 = _Step.apply(pre.to(theta.dtype), theta, eps).sum() / batch
            fired = (f.detach() > 0).any(0)
        mse = loss.mse(x, x_hat)
        total = mse + self.coefficient_at(ctx.step) * self.sparsity(l0)
        total.backward()
        unit_norm.remove_parallel_gradient(sae.W_dec)
        return StepStats(total.detach(), {"mse": mse.detach(), "l0": l0.detach()}, fired)

    def after_step(self, sae: SAE) -> None:
        unit_norm.renormalise(sae.W_dec)
        with torch.no_grad():  # below 0 the gate would pass negative pre-activations
            sae.get_parameter("threshold").clamp_(min=0.0)

    def held_out_terms(self, sae: SAE, f: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def held_out_loss(self, metrics: dict[str, float]) -> float:
        """MSE plus the penalty at the final λ, from the held-out L0."""
        return metrics["mse"] + self.l0_coefficient * float(
            self.sparsity(torch.tensor(metrics["l0"])))
