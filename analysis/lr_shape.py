"""One curve of loss against learning rate, shared by the swept points of the LR stage.

Near its optimum, loss against log LR is not a parabola: on MiniLM (the demo's 15
stage-2 runs, 3 budgets x 5 LRs over two decades) it rises ~0.26 |d|^1.45 below the
optimum and ~0.54 d^2.55 above it (d = log10(lr / LR_opt)), and the points' curves are one
curve shifted (0.38% rms about it). So the points share it:

    log L_i(lr) = level_i + s_i rise(log10 lr - vertex_i),
    rise(d) = c_low |d|^p_low for d < 0, c_high d^p_high for d >= 0,

3 numbers per point (the first point's scale s is 1) and 4 for the shape, fitted by
least squares to every run within SHAPE_WINDOW_DEX of its point's best sampled LR. The
scale lets budgets whose losses differ in size rise by different log amounts (one curve
for all, without it, put a planted parabola's optima up to 14% off in
tests/test_fit_laws.py). A parabola through a window of the runs (the estimator before
this one, lr_law.window_parabola) fits its three coefficients per point; its vertex
misses an asymmetric curve's minimum by a bias that depends on where the grid sits, and
its residuals hold that misfit as well as the runs' noise: on the planted protocol of
tests/test_fit_coverage.py (0.3% noise) they read ~0.9%, and the intervals drawn from
them covered 99% (the LR exponent) and 99.5% (a plan's loss) where 95% is meant. The
shared curve leaves the noise alone in its residuals.

The parabola is the shape (c, 2, c, 2), which is how lr_law reports a point fitted alone
(too few runs for the shared curve). Every LR optimum carries its curve's five numbers, so
the gap of stage 1's LR (best_lr.py), the figures and the bootstrap read one form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

# two of the demo's half-decade grid steps either side of the best sampled LR (its first
# round spans two decades): the runs the shape was measured on
SHAPE_WINDOW_DEX = 1.05
N_SHAPE = 4  # c_low, p_low, c_high, p_high
P_BOUNDS = (1.0, 4.0)  # from a kink at the optimum to a quartic
LOG_C_BOUNDS = (-12.0, 6.0)


@dataclass(frozen=True)
class Shape:
    """rise(d) = c_low |d|^p_low below the optimum (d < 0), c_high d^p_high above it."""

    c_low: float
    p_low: float
    c_high: float
    p_high: float

    @classmethod
    def parabola(cls, curvature: float) -> Shape:
        return cls(curvature, 2.0, curvature, 2.0)

    def rise(self, d: np.ndarray | float) -> np.ndarray:
        """Log-loss rise at d dex from the optimum."""
        d = np.asarray(d, dtype=float)
        return np.where(d < 0, self.c_low * np.abs(d) ** self.p_low, self.c_high * np.abs(d) ** self.p_high)


@dataclass(frozen=True)
class SharedFit:
    shapes: list[Shape]  # per point: the shared shape times its scale
    vertices: np.ndarray  # [n_points] log10 LR_opt
    levels: np.ndarray  # [n_points] log loss at the optimum
    df: int  # residual degrees of freedom


def n_parameters(n_points: int) -> int:
    """vertex, level and scale per point (the first point's scale is 1), and the shape."""
    return 3 * n_points - 1 + N_SHAPE


def fit_shared(
    log_lr: list[np.ndarray], log_loss: list[np.ndarray], start: list[tuple[float, float]],
    curvature: float,
) -> SharedFit | None:
    """The shared curve through each point's runs (log10 lr, log loss; within the window
    already), from start (vertex, level) per point and a parabola's curvature; None when
    the runs do not outnumber the parameters or the fit fails."""
    n = len(log_lr)
    sizes = [len(x) for x in log_lr]
    df = sum(sizes) - n_parameters(n)
    if n < 2 or df < 1:
        return None
    x, y = np.concatenate(log_lr), np.concatenate(log_loss)
    point = np.repeat(np.arange(n), sizes)
    lo = np.array([v.min() for v in log_lr])
    hi = np.array([v.max() for v in log_lr])

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # theta: vertices, levels, log scales of points 2..n, log c_low, p_low, log c_high, p_high
        log_scale = np.concatenate([[0.0], theta[2 * n:3 * n - 1]])
        return theta[:n], theta[n:2 * n], log_scale, theta[3 * n - 1:]

    def parts(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(d, |d| safe for logs and powers, below, rise below, rise above) per run."""
        v, _, log_scale, (lc_lo, p_lo, lc_hi, p_hi) = unpack(theta)
        d = x - v[point]
        a = np.where(d != 0, np.abs(d), 1.0)
        below = d < 0
        scale = np.exp(log_scale[point])
        g_lo = np.where(below, scale * np.exp(lc_lo) * a**p_lo, 0.0)
        g_hi = np.where(below | (d == 0), 0.0, scale * np.exp(lc_hi) * a**p_hi)
        return d, a, below, g_lo, g_hi

    def residuals(theta: np.ndarray) -> np.ndarray:
        _, level, _, _ = unpack(theta)
        _, _, _, g_lo, g_hi = parts(theta)
        return level[point] + g_lo + g_hi - y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        _, _, _, (_, p_lo, _, p_hi) = unpack(theta)
        d, a, below, g_lo, g_hi = parts(theta)
        log_a = np.log(a)
        # d rise / d vertex = -(d rise / d d): p g / |d| below the optimum, -p g / d above
        jac = np.zeros((x.size, n_parameters(n)))
        rows = np.arange(x.size)
        jac[rows, point] = np.where(below, p_lo * g_lo / a, -p_hi * g_hi / a)
        jac[rows, n + point] = 1.0
        later = point > 0
        jac[rows[later], 2 * n - 1 + point[later]] = (g_lo + g_hi)[later]
        jac[:, 3 * n - 1:] = np.column_stack([g_lo, g_lo * log_a, g_hi, g_hi * log_a])
        return jac

    log_c = float(np.clip(np.log(max(curvature, 1e-6)), *LOG_C_BOUNDS))
    v0 = np.clip([s[0] for s in start], lo, hi)
    theta0 = np.concatenate([v0, [s[1] for s in start], np.zeros(n - 1), [log_c, 2.0, log_c, 2.0]])
    scale_bounds = np.full(n - 1, LOG_C_BOUNDS[1] - LOG_C_BOUNDS[0])
    lower = np.concatenate([lo, np.full(n, -np.inf), -scale_bounds, [LOG_C_BOUNDS[0], P_BOUNDS[0]] * 2])
    upper = np.concatenate([hi, np.full(n, np.inf), scale_bounds, [LOG_C_BOUNDS[1], P_BOUNDS[1]] * 2])
    try:
        result = least_squares(residuals, theta0, jac=jacobian, bounds=(lower, upper), x_scale="jac")
    except ValueError:
        return None
    if not np.isfinite(result.x).all():
        return None
    v, level, log_scale, (lc_lo, p_lo, lc_hi, p_hi) = unpack(result.x)
    shapes = [Shape(float(np.exp(lc_lo + ls)), float(p_lo), float(np.exp(lc_hi + ls)), float(p_hi))
              for ls in log_scale]
    return SharedFit(shapes, v.copy(), level.copy(), df)
