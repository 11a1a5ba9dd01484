"""Power laws in compute: y = k C^c, and the frontier loss L(C) = E + A C^c with E kept.

docs/METHOD.md §2.3: the frontier loss falls as a power law in compute, F_opt and steps_opt
grow as power laws, LR_opt falls as one; keep the irreducible term E (docs/METHOD.md §2.6;
Epoch AI 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from sae_core.errors import UserError


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x^exponent."""

    coefficient: float
    exponent: float

    def predict(self, x: ArrayLike) -> np.ndarray:
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


@dataclass(frozen=True)
class OffsetPowerLaw:
    """y = irreducible + coefficient * x^exponent (exponent < 0 for a falling loss)."""

    irreducible: float
    coefficient: float
    exponent: float

    def predict(self, x: ArrayLike) -> np.ndarray:
        return self.irreducible + self.coefficient * np.asarray(x, dtype=float) ** self.exponent


def _check(x: np.ndarray, y: np.ndarray, min_points: int, what: str) -> None:
    if len(x) < min_points:
        raise UserError(f"{what} needs at least {min_points} points, got {len(x)}")
    if not (np.all(x > 0) and np.all(y > 0) and np.isfinite(x).all() and np.isfinite(y).all()):
        raise UserError(f"{what} needs positive, finite values")
    if len(np.unique(x)) < 2:
        raise UserError(f"{what} needs at least 2 distinct compute budgets")


def fit_power_law(x: ArrayLike, y: ArrayLike, what: str = "power-law fit") -> PowerLaw:
    """Least squares of log y on log x. x, y: [n] positive."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    _check(xa, ya, 2, what)
    slope, intercept = np.polyfit(np.log(xa), np.log(ya), 1)
    return PowerLaw(coefficient=float(np.exp(intercept)), exponent=float(slope))


def fit_offset_power_law(
    x: ArrayLike, y: ArrayLike, what: str = "loss-vs-compute fit", n_grid: int = 400
) -> OffsetPowerLaw:
    """Least squares in log y of y = E + A x^c, 0 <= E < min y. x, y: [n], n >= 3.

    E is profiled: for each E on a grid in [0, min y) the best (A, c) is a linear fit
    of log(y - E) on log x; the grid runs densest near min y, where E usually lies.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    _check(xa, ya, 3, what)
    log_x, log_y = np.log(xa), np.log(ya)
    e_grid = ya.min() * (1 - np.geomspace(1, 1e-4, n_grid))  # [0, 0.9999 min y]
    # Vectorised linear fits of log(y - E) on log x for every E: [n_grid, n].
    z = np.log(ya[None, :] - e_grid[:, None])
    xc = log_x - log_x.mean()
    slope = (z - z.mean(1, keepdims=True)) @ xc / (xc @ xc)
    intercept = z.mean(1) - slope * log_x.mean()
    pred = np.log(e_grid[:, None] + np.exp(intercept[:, None] + slope[:, None] * log_x))
    sse = ((pred - log_y) ** 2).sum(1)
    best = int(np.argmin(sse))
    return OffsetPowerLaw(float(e_grid[best]), float(np.exp(intercept[best])), float(slope[best]))
