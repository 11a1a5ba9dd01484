"""SAE architectures: what differs between one recipe and another, each in one file.

An architecture owns everything specific to its recipe: the parameters it adds and their
init, the encoder nonlinearity, the loss and its gradients (written once, in torch over
sae_core/kernels.py where it is sparse), the schedule of its sparsity control, and any
constraint restored after an optimizer step. The interface is `Architecture` in
sae_core/model.py; the trainer, evaluation, checkpoints and branching know only it.

    relu                  the April-2024 recipe of "Scaling Monosemanticity" (relu.py)
    topk, batchtopk,      Gao et al. 2024; Bussmann et al. 2024 and 2025 (topk.py)
    matryoshka_batchtopk
    jumprelu              Rajamanoharan et al. 2024; Gemma Scope (jumprelu.py)

Their default numbers, with sources, are in sae_core/recipes.py.
"""

from __future__ import annotations

from typing import Any

from sae_core.config import RunConfig
from sae_core.model import Architecture


def build(cfg: RunConfig) -> Architecture:
    """The architecture cfg.arch names, with cfg's settings (its recipe's defaults filled
    in by RunConfig)."""
    from sae_core import recipes
    from sae_core.archs.jumprelu import JumpReLU
    from sae_core.archs.relu import ReLU
    from sae_core.archs.topk import TopK

    def need(value: float | int | None) -> Any:  # RunConfig fills every field its arch reads
        assert value is not None
        return value

    if cfg.arch == "relu":
        return ReLU(need(cfg.l1_coefficient), cfg.warmup_steps, need(cfg.init_decoder_norm))
    if cfg.arch in recipes.TOPK_FAMILY:
        groups = (recipes.group_sizes(cfg.matryoshka_groups, cfg.n_features)
                  if cfg.matryoshka_groups is not None else None)
        return TopK(cfg.arch, need(cfg.k), need(cfg.aux_k), need(cfg.aux_coefficient),
                    need(cfg.init_decoder_norm), cfg.threshold_rate or 0.0, groups)
    if cfg.arch == "jumprelu":
        return JumpReLU(need(cfg.l0_coefficient), cfg.target_l0, need(cfg.jumprelu_bandwidth),
                        need(cfg.jumprelu_init_threshold), cfg.warmup_steps,
                        need(cfg.init_decoder_norm))
    raise ValueError(f"unknown arch {cfg.arch!r}")  # RunConfig refuses it before this
