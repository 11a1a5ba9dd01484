"""The sparse autoencoder: f = ReLU(x W_enc + b_enc), x̂ = f W_dec + b_dec.

Tensor layout follows SAELens (W_enc [d, F], W_dec [F, d]) so its users can load our
`sae.safetensors`. No decoder-bias subtraction before the encoder and no unit-norm
constraint on W_dec (METHOD.md section 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # [B, d] reconstruction
    f: torch.Tensor  # [B, F] feature activations, >= 0


class SAE(nn.Module):
    def __init__(self, d_in: int, n_features: int) -> None:
        super().__init__()
        self.d_in = d_in
        self.n_features = n_features
        self.W_enc = nn.Parameter(torch.empty(d_in, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @classmethod
    def init(
        cls, d_in: int, n_features: int, decoder_norm: float, generator: torch.Generator
    ) -> SAE:
        """Decoder rows in random directions with L2 norm `decoder_norm` (0.1 (lib));
        W_enc = W_decᵀ at init only; both biases 0 (April-2024 update)."""
        sae = cls(d_in, n_features)
        with torch.no_grad():
            w = torch.randn(n_features, d_in, generator=generator)
            w *= decoder_norm / w.norm(dim=1, keepdim=True)
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
        return sae

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, F]"""
        return torch.addmm(self.b_enc, x, self.W_enc).relu_()

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [B, d]"""
        return torch.addmm(self.b_dec, f, self.W_dec)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        f = self.encode(x)
        return SAEOutput(self.decode(f), f)
