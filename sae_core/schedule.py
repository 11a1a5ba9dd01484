"""The schedules of a run, as pure functions of the 0-based step about to be taken;
each returns a multiplier in [0, 1] (docs/METHOD.md §1)."""

from __future__ import annotations


def warmup_factor(step: int, warmup_steps: int) -> float:
    """A sparsity coefficient (the ReLU SAE's λ) rises linearly from 0 to its final value
    over the first `warmup_steps` steps."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return step / warmup_steps


def lr_factor(step: int, n_steps: int, decay_start_step: int) -> float:
    """Constant, then linear decay to 0 over [decay_start_step, n_steps).

    The last step trains at lr / (n_steps - decay_start_step), not at 0, so that no
    step is wasted.
    """
    if step < decay_start_step:
        return 1.0
    decay_steps = n_steps - decay_start_step
    return (n_steps - step) / decay_steps
