"""The two schedules of the April-2024 recipe (METHOD.md section 1), as pure functions.

Both take the 0-based step about to be taken and return a multiplier in [0, 1].
"""

from __future__ import annotations


def l1_factor(step: int, warmup_steps: int) -> float:
    """λ rises linearly from 0 to its final value over the first `warmup_steps` steps."""
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
