"""The parametric law L(F, S) = E + A/F^alpha + B/S^beta, fitted as Chinchilla's Approach 3.

F is the SAE's feature count and S its step count (for language models: parameters N and
tokens D). The fit minimises, over theta = (a, b, e, alpha, beta) with A = exp(a),
B = exp(b), E = exp(e),

    sum_i Huber_delta( LSE(a - alpha log F_i, b - beta log S_i, e) - log L_i ),  delta = 1e-3

by L-BFGS-B from the best starts of a grid (docs/METHOD.md §2.5; Hoffmann et al.
2022, App. D.2). The trap: scipy's L-BFGS-B stops after ~10 iterations when the objective
is small, because its relative-decrease test `ftol` fires. We minimise the sum divided by
delta^2 (values of order 1e3 rather than 1e-3), with ftol=0 and a small gtol, so it runs
until the gradient vanishes (tests/test_fit_chinchilla.py: from Hoffmann's published
values it reaches the optimum). The gradient is analytic.

Multistart: the objective is evaluated at every start in one vectorised call and only the
`n_polish` lowest go on to L-BFGS-B. On Chinchilla's 240 runs that reaches Epoch AI's
optimum (objective 0.0010183) in 0.09-0.19 s, against 2.1-3.1 s for a batched BFGS screen
of all 4500 starts before the same polish (interleaved, one session, 2 busy cores); on 15
bootstrap resamples of Chinchilla and 30 planted laws (IsoFLOP and factorial designs) both
reached the same objective to 1e-6 relative but one, 5e-5 apart.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import huber

from sae_core.errors import UserError

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, App. D.2
# The Chinchilla initialisation grid (Hoffmann et al. 2022, App. D.2; Epoch AI 2024):
# 5 x 5 x 5 x 6 x 6 = 4500 starts.
INIT_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
_OPTIONS = {"ftol": 0.0, "gtol": 1e-9, "maxiter": 1000}
_blas_depth = 0  # nesting of single_threaded_blas: only the outermost call limits threads
N_POLISH = 8  # starts polished by L-BFGS-B: the lowest of the grid's objective values


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS on one thread: its threads cost ~10x on these tiny problems (scipy
    L-BFGS-B on 5 parameters: 3.2 ms/iteration with OpenBLAS threads on a loaded 2-core
    machine, 0.27 ms with one). threadpoolctl is a dependency (pyproject.toml); an
    install without it runs BLAS as it is (set OPENBLAS_NUM_THREADS=1 then)."""
    global _blas_depth
    if _blas_depth:  # already limited: entering again reads /proc/self/maps, ~3-7 ms a call
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    _blas_depth += 1
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        _blas_depth -= 1


@dataclass(frozen=True)
class ParametricFit:
    """L(F, S) = E + A F^-alpha + B S^-beta; `objective` is the plain sum of Huber losses."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_runs: int

    def predict(self, n_features: ArrayLike, n_steps: ArrayLike) -> np.ndarray:
        """Predicted loss at (F, S); broadcasts."""
        f = np.asarray(n_features, dtype=float)
        s = np.asarray(n_steps, dtype=float)
        return self.E + self.A * f**-self.alpha + self.B * s**-self.beta

    @property
    def a(self) -> float:
        """Exponent of F_opt in compute: F_opt ∝ C^a with a = beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        """G = (alpha A / (beta B))^(1/(alpha+beta)) (Hoffmann et al. 2022, eq. 4)."""
        ratio = self.alpha * self.A / (self.beta * self.B)
        if not (ratio > 0 and self.alpha + self.beta > 0):
            return float("nan")  # a non-positive exponent: the law has no interior optimum
        return float(ratio ** (1.0 / (self.alpha + self.beta)))

    def optimal_allocation(
        self, compute_flops: ArrayLike, flops_per_feature_step: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(F_opt, S_opt) minimising L at C = k F S, k = flops_per_feature_step.

        k = 12 d batch_size_tokens for an SAE (docs/METHOD.md §2.1); k = 6 for a language model
        with F = N parameters and S = D tokens.
        """
        units = np.asarray(compute_flops, dtype=float) / flops_per_feature_step
        f_opt = self.G * units**self.a
        return f_opt, units / f_opt

    def steps_for_features(self, n_features: ArrayLike) -> np.ndarray:
        """The S at which the given F is compute-optimal (inverse of the allocation)."""
        units = (np.asarray(n_features, dtype=float) / self.G) ** (1.0 / self.a)
        return units / np.asarray(n_features, dtype=float)

    def as_vector(self) -> np.ndarray:
        """theta = (a, b, e, alpha, beta), the optimiser's coordinates."""
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])


def huber_objective(
    theta: np.ndarray, log_f: np.ndarray, log_s: np.ndarray, log_loss: np.ndarray,
    delta: float = HUBER_DELTA,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of Huber losses of log-loss residuals, and its gradient, for a batch of thetas.

    theta: [k, 5] rows of (a, b, e, alpha, beta); log_f, log_s, log_loss: [n_runs].
    Returns (objective [k], gradient [k, 5]).
    """
    a, b, e, alpha, beta = (col[:, None] for col in np.atleast_2d(theta).T)
    t_f = a - alpha * log_f  # [k, n]
    t_s = b - beta * log_s
    t_e = np.broadcast_to(e, t_f.shape)
    top = np.maximum(np.maximum(t_f, t_s), t_e)
    w_f, w_s, w_e = np.exp(t_f - top), np.exp(t_s - top), np.exp(t_e - top)
    total = w_f + w_s + w_e
    residual = top + np.log(total) - log_loss
    # d Huber/d residual, times the softmax weights d LSE/d term:
    slope = np.clip(residual, -delta, delta) / total
    d_f, d_s, d_e = w_f * slope, w_s * slope, w_e * slope
    grad = np.stack([d_f.sum(1), d_s.sum(1), d_e.sum(1), -(d_f @ log_f), -(d_s @ log_s)], 1)
    return huber(delta, residual).sum(1), grad


def residuals(fit: ParametricFit, n_features: ArrayLike, n_steps: ArrayLike, loss: ArrayLike) -> np.ndarray:
    """log L_pred - log L_observed per run: [n_runs]."""
    return np.log(fit.predict(n_features, n_steps)) - np.log(np.asarray(loss, dtype=float))


def init_grid(grid: dict[str, tuple[float, ...]] | None = None) -> np.ndarray:
    """Starts as rows of theta = (a, b, e, alpha, beta): [n_starts, 5]."""
    g = grid or INIT_GRID
    return np.array(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])))


def fit_parametric(
    n_features: ArrayLike,
    n_steps: ArrayLike,
    loss: ArrayLike,
    starts: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
    n_polish: int = N_POLISH,
) -> ParametricFit:
    """Fit L(F, S) from the best starts (default grid: the 4500-start Chinchilla grid).

    n_features, n_steps, loss: [n_runs]. starts: [n_starts, 5] rows of (a, b, e, alpha, beta).
    The objective is evaluated at every start and the n_polish lowest go on to scipy
    L-BFGS-B with ftol=0; with n_polish or fewer (a bootstrap warm start), scipy runs from
    each directly.
    """
    log_f, log_s, log_loss = (np.log(np.asarray(x, dtype=float)) for x in (n_features, n_steps, loss))
    if not (np.isfinite(log_f).all() and np.isfinite(log_s).all() and np.isfinite(log_loss).all()):
        raise UserError("parametric fit needs positive, finite n_features, n_steps and loss")
    if len(log_loss) < 6:
        raise UserError(f"parametric fit needs at least 6 runs for 5 parameters, got {len(log_loss)}")
    if len(np.unique(log_f)) < 2 or len(np.unique(log_s)) < 2:
        raise UserError("parametric fit needs at least 2 distinct n_features and 2 distinct n_steps")
    starts = init_grid() if starts is None else np.atleast_2d(np.asarray(starts, dtype=float))
    scale = 1.0 / delta**2  # keeps the objective far above 1: see the module docstring

    def single(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = huber_objective(theta[None], log_f, log_s, log_loss, delta)
        return float(value[0]) * scale, grad[0] * scale

    if len(starts) > n_polish:  # the lowest starts of the grid, in one vectorised call
        with np.errstate(over="ignore", invalid="ignore"):  # far-off starts overflow: inf
            values, _ = huber_objective(starts, log_f, log_s, log_loss, delta)
        starts = starts[np.argsort(np.where(np.isfinite(values), values, np.inf))[:n_polish]]
    with single_threaded_blas():
        return _polish(single, starts, scale, len(log_loss))


def _polish(
    single: Callable[[np.ndarray], tuple[float, np.ndarray]], starts: np.ndarray, scale: float,
    n_runs: int,
) -> ParametricFit:
    """scipy L-BFGS-B to convergence from each start; the lowest end point wins."""
    best_value, best_theta = np.inf, starts[0]
    for start in starts:
        result = minimize(single, start, jac=True, method="L-BFGS-B", options=_OPTIONS)
        if np.isfinite(result.fun) and result.fun < best_value:
            best_value, best_theta = float(result.fun), result.x
    a, b, e, alpha, beta = best_theta
    return ParametricFit(
        E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
        beta=float(beta), objective=best_value / scale, n_runs=n_runs,
    )
