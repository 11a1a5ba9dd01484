"""SAE architectures: what differs between one recipe and another, behind one interface.

An architecture is built from a RunConfig (`build`) and owns everything specific to its
recipe: the parameters it adds and their init, the encoder nonlinearity, the loss and
its gradients (written once, in torch over sae_core/kernels.py where it is sparse), the
schedule of its sparsity control, and any constraint applied after an optimizer step.
The trainer, evaluation, checkpoints and branching know only this interface.

    relu    the April-2024 recipe of "Scaling Monosemanticity" (docs/METHOD.md section 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:  # torch only at run time of the architectures: RunConfig imports NAMES
    import torch

    from sae_core.config import RunConfig
    from sae_core.model import SAE

NAMES = ("relu",)


class StepContext(NamedTuple):
    step: int  # 0-based index of the step about to be taken
    dead: torch.Tensor  # [F] bool: features silent over the dead window
    mm_dtype: torch.dtype | None  # dtype of the dense matrix products (None: the weights')


class StepStats(NamedTuple):
    loss: torch.Tensor  # [] the training objective at this step
    terms: dict[str, torch.Tensor]  # [] each: named parts of it (mse, l1_penalty, ...)
    fired: torch.Tensor  # [F] bool: feature active on at least one token of the batch


class Architecture(Protocol):
    name: str  # the RunConfig `arch` value
    saelens_architecture: str  # the `architecture` SAELens's cfg.json names it by

    def init(self, d_in: int, n_features: int, generator: torch.Generator) -> SAE:
        """A new SAE at step 0 of its recipe."""
        ...

    def gradients(self, sae: SAE, x: torch.Tensor, ctx: StepContext) -> StepStats:
        """Set `.grad` of every parameter to the gradient of the loss on batch x [B, d]."""
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
        """The recipe's loss from per-token means of mse and held_out_terms."""
        ...

    def schedule(self, step: int) -> dict[str, float]:
        """The scheduled coefficients at `step`, for the logs."""
        ...


def build(cfg: RunConfig) -> Architecture:
    """The architecture cfg.arch names, with cfg's settings."""
    from sae_core.archs.relu import ReLU

    if cfg.arch == "relu":
        return ReLU(cfg.l1_coefficient, cfg.warmup_steps, cfg.init_decoder_norm)
    raise ValueError(f"unknown arch {cfg.arch!r}")  # RunConfig refuses it before this
