"""The sparse autoencoder's tensors, and the interface of the architecture that gives
them meaning (its implementations: sae_core/archs/).

    f = encode(x)    (the architecture's nonlinearity)
    x̂ = f W_dec + b_dec

Tensor layout follows SAELens (W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d]) so its
users can load our weights; an architecture may register more (a threshold, say).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import nn


class StepContext(NamedTuple):
    step: int  # 0-based index of the step about to be taken
    dead: torch.Tensor  # [F] bool: features silent over the dead window
    mm_dtype: torch.dtype | None  # dtype of the dense matrix products (None: the weights')


class StepStats(NamedTuple):
    loss: torch.Tensor  # [] the training objective at this step
    terms: dict[str, torch.Tensor]  # [] each: named parts of it (mse, l1_penalty, ...)
    fired: torch.Tensor  # [F] bool: feature active on at least one token of the batch


class Architecture(Protocol):
    @property
    def name(self) -> str:
        """The RunConfig `arch` value."""
        ...

    def init(self, d_in: int, n_features: int, generator: torch.Generator) -> SAE:
        """A new SAE at step 0 of its recipe."""
        ...

    def gradients(self, sae: SAE, x: torch.Tensor, ctx: StepContext) -> StepStats:
        """Set `.grad` of every parameter to the gradient of the loss on batch x [B, d]."""
        ...

    def saelens_config(self) -> dict[str, object]:
        """SAELens's cfg.json fields for this SAE (architecture, apply_b_dec_to_input, ...)."""
        ...

    def fit_to_data(self, sae: SAE, x: torch.Tensor) -> None:
        """Data-dependent init from the first batch x [B, d] of a run (before step 0)."""
        ...

    def after_step(self, sae: SAE) -> None:
        """Constraints the recipe restores after each optimizer step."""
        ...

    def encode(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        """Feature activations at inference: [B, d] -> [B, F]."""
        ...

    def held_out_terms(self, sae: SAE, f: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the tokens of f [B, F] of the terms held_out_loss needs: [] each."""
        ...

    def held_out_loss(self, metrics: dict[str, float]) -> float:
        """The recipe's loss from per-token means of mse, l0 and held_out_terms."""
        ...

    def schedule(self, step: int) -> dict[str, float]:
        """The scheduled coefficients at `step`, for the logs."""
        ...



class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # [B, d] reconstruction
    f: torch.Tensor  # [B, F] feature activations, >= 0


class SAE(nn.Module):
    def __init__(self, d_in: int, n_features: int, arch: Architecture) -> None:
        super().__init__()
        self.d_in, self.n_features, self.arch = d_in, n_features, arch
        self.W_enc = nn.Parameter(torch.empty(d_in, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, F], as the architecture encodes at inference."""
        return self.arch.encode(self, x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [B, d]"""
        return torch.addmm(self.b_dec, f, self.W_dec)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        f = self.encode(x)
        return SAEOutput(self.decode(f), f)
