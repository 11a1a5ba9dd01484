"""Each architecture's published recipe: its default numbers with their sources, and the
RunConfig fields only it reads (docs/METHOD.md §1 and §3).

A RunConfig field left at None takes its architecture's default here; a field that
another architecture owns (`k` for relu, `l1_coefficient` for topk) is refused by name.
(lib) marks values the public reference code uses where the paper gives none; (sec) a
value from a secondary transcription, to check against the paper before relying on it.
"""

from __future__ import annotations

import math
from typing import Any

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")
BATCH_TOPK = ("batchtopk", "matryoshka_batchtopk")  # batch-level selection, a saved threshold

# field -> the architectures that read it
OWNED: dict[str, tuple[str, ...]] = {
    "l1_coefficient": ("relu",),
    "k": TOPK_FAMILY,
    "aux_k": TOPK_FAMILY,
    "aux_coefficient": TOPK_FAMILY,
    "threshold_rate": BATCH_TOPK,
    "matryoshka_groups": ("matryoshka_batchtopk",),
    "l0_coefficient": ("jumprelu",),
    "target_l0": ("jumprelu",),
    "jumprelu_bandwidth": ("jumprelu",),
    "jumprelu_init_threshold": ("jumprelu",),
}
# The fields that set each one's sparsity.
SPARSITY_CONTROL = {"relu": ("l1_coefficient",), "topk": ("k",), "batchtopk": ("k",),
                    "matryoshka_batchtopk": ("k",), "jumprelu": ("target_l0", "l0_coefficient")}


def defaults(arch: str, d_in: int, n_features: int) -> dict[str, Any]:
    """The recipe's value of every field it reads that a RunConfig may leave at None."""
    if arch == "relu":  # Templeton et al. 2024 (April update)
        return {"lr": 5e-5,  # (lib) small-scale value; swept in stage 2
                "adam_beta1": 0.9,
                "init_decoder_norm": 0.1,  # (lib); the update gives a range 0.05-1
                "l1_coefficient": 5.0}  # the paper's λ
    if arch in TOPK_FAMILY:  # Gao et al. 2024; Bussmann et al. 2024 and 2025
        out: dict[str, Any] = {"lr": 2e-4 / math.sqrt(n_features / 2**14),  # Gao Fig. 3, as
               # dictionary_learning and sparsify use it: LR_opt ∝ 1/√F
               "adam_beta1": 0.9,
               "init_decoder_norm": 1.0,  # unit-norm decoder rows, kept so
               "k": 32,  # Gao et al.'s main setting (sec)
               "aux_k": d_in // 2,  # Gao App. B.1 heuristic, as the reference code
               "aux_coefficient": 1 / 32}  # Gao App. A.2
        if arch in BATCH_TOPK:
            out["threshold_rate"] = 0.01  # (lib) SAELens's topk_threshold_lr
        if arch == "matryoshka_batchtopk":
            # (lib, sec) nested prefixes at 1/32, 3/32, 7/32, 15/32 and all of F
            out["matryoshka_groups"] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 17 / 32)
        return out
    if arch == "jumprelu":  # Rajamanoharan et al. 2024; Gemma Scope (arXiv 2408.05147)
        return {"lr": 7e-5,  # Gemma Scope (sec)
                "adam_beta1": 0.0,  # Gemma Scope: β = (0, 0.999) (sec)
                "init_decoder_norm": 1.0,
                "l0_coefficient": 1.0,  # (lib) SAELens's default; no single λ is right
                "jumprelu_bandwidth": 1e-3,  # ε, Gemma Scope (sec)
                "jumprelu_init_threshold": 1e-3}  # θ at init (sec)
    raise KeyError(arch)


def group_sizes(groups: tuple[float, ...], n_features: int) -> tuple[int, ...]:
    """Matryoshka group sizes: fractions of F when they sum to 1 (all but the last rounded
    down, the last taking the rest, as dictionary_learning does), else sizes as given."""
    if not math.isclose(sum(groups), 1.0, rel_tol=0, abs_tol=1e-9):
        return tuple(int(g) for g in groups)
    sizes = [int(g * n_features) for g in groups[:-1]]
    return (*sizes, n_features - sum(sizes))
