"""The sparse autoencoder's tensors, and the architecture that gives them meaning.

    f = encode(x)    (the architecture's nonlinearity: sae_core/archs/)
    x̂ = f W_dec + b_dec

Tensor layout follows SAELens (W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d]) so its
users can load our weights; an architecture may register more (a threshold, say).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:
    from sae_core.archs import Architecture


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
