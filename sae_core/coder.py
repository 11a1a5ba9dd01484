"""What evaluation needs of an SAE: encode and decode, in the model's own units.

Any architecture (ReLU, TopK, BatchTopK at its inference threshold, JumpReLU) is a
`SparseCoder`. Shapes: x [B, d] raw residual-stream activations; f [B, F].

The weights of a monoscale SAE live in the normalised space (x · norm_scale, with
E‖x · norm_scale‖² = d, docs/METHOD.md §1); `RawUnits` folds the scale in, so that
reconstructions are spliced back in model units, as SAELens's `fold_activation_norm_
scaling_factor` does for a saved SAE.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class SparseCoder(Protocol):
    def encode(self, x: Tensor) -> Tensor:
        """[B, d] raw activations -> [B, F] feature activations."""
        ...

    def decode(self, f: Tensor) -> Tensor:
        """[B, F] feature activations -> [B, d] reconstruction, raw units."""
        ...


class RawUnits:
    """A coder trained on x · norm_scale, seen from raw x: f = enc(x · s), x̂ = dec(f) / s."""

    def __init__(self, coder: SparseCoder, norm_scale: float) -> None:
        self.coder, self.norm_scale = coder, norm_scale

    def encode(self, x: Tensor) -> Tensor:
        return self.coder.encode(x * self.norm_scale)

    def decode(self, f: Tensor) -> Tensor:
        return self.coder.decode(f) / self.norm_scale
