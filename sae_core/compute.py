"""A run's training compute and the steps a budget buys (docs/METHOD.md §2.1).

    C = 6 · (2 d F) · T,   T = steps × batch tokens

(forward 4dF and backward 8dF FLOPs per token), so at fixed d and batch C = k F S with
k = 12 d batch: the paper's allocation question is how to split C between F and S. Every
part of monoscale that needs C or S(C) calls these two functions, with k from the one
below (or, for a table of runs from elsewhere, a k inferred from it).
"""

from __future__ import annotations


def flops_per_feature_step(d_in: int, batch_size_tokens: int) -> float:
    """k in C = k F S: 12 d batch."""
    return 12.0 * d_in * batch_size_tokens


def compute_flops(n_features: float, n_steps: float, k: float) -> float:
    """C = k F S."""
    return k * n_features * n_steps


def steps_for_budget(budget_flops: float, n_features: float, k: float) -> float:
    """The steps that spend `budget_flops` at width F: C / (k F). Callers that train it
    round to whole steps."""
    return budget_flops / (k * n_features)


def training_memory_bytes(d_in: int, n_features: int, batch_size_tokens: int) -> int:
    """A lower bound on the memory one SAE's training holds: its 2dF + F + d parameters
    four times in fp32 (weights, gradients, Adam's two moments) and one [batch, F] fp32
    activation. Real runs hold more (sae_core/trainer.py keeps a few [batch, F] tensors);
    a run over this bound cannot run on the device, whatever else happens."""
    n_params = 2 * d_in * n_features + n_features + d_in
    return 4 * (4 * n_params + batch_size_tokens * n_features)
