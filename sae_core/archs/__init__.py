"""SAE architectures: what differs between one recipe and another, each in one file.

An architecture owns everything specific to its recipe: the parameters it adds and their
init, the encoder nonlinearity, the loss and its gradients (written once, in torch over
sae_core/kernels.py where it is sparse), the schedule of its sparsity control, and any
constraint restored after an optimizer step. The interface is `Architecture` in
sae_core/model.py; the trainer, evaluation, checkpoints and branching know only it.

    relu    the April-2024 recipe of "Scaling Monosemanticity" (docs/METHOD.md section 1)
"""

from __future__ import annotations

from sae_core.config import RunConfig
from sae_core.model import Architecture


def build(cfg: RunConfig) -> Architecture:
    """The architecture cfg.arch names (one of config.ARCHITECTURES), with cfg's settings."""
    from sae_core.archs.relu import ReLU

    if cfg.arch == "relu":
        return ReLU(cfg.l1_coefficient, cfg.warmup_steps, cfg.init_decoder_norm)
    raise ValueError(f"unknown arch {cfg.arch!r}")  # RunConfig refuses it before this
