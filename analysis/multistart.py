"""Many starts of one small smooth minimisation, run side by side as arrays.

scipy's L-BFGS-B spends ~0.2 ms of Python per iteration; over the 4500 starts of the
Chinchilla grid at ~100 iterations each that is ~3 minutes (measured here: 172 s). Run as
one batch, every start takes a quasi-Newton step per array operation, so the whole grid
costs about as much as a few hundred evaluations of the objective on [n_starts, n_runs]
arrays. The caller then polishes the best few with scipy (parametric.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS on one thread: its threads cost ~10x on these tiny problems (measured here:
    scipy L-BFGS-B on 5 parameters 3.2 ms/iteration with OpenBLAS threads on a loaded
    2-core machine, 0.27 ms with one). threadpoolctl is a dependency (pyproject.toml);
    an install without it runs BLAS as it is (set OPENBLAS_NUM_THREADS=1 then)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


BatchObjective = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def batched_bfgs(
    objective: BatchObjective, starts: np.ndarray, n_iters: int = 40, max_halvings: int = 20,
    gtol: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray]:
    """BFGS with Armijo backtracking, one independent run per row of `starts`.

    objective: theta [k, p] -> (values [k], gradients [k, p]).
    starts: [n, p]. Returns (points [n, p], values [n]) after at most n_iters steps; a
    start stops early when its gradient is below gtol or no step along its direction
    decreases the objective.
    """
    x = np.array(starts, dtype=float)
    n, p = x.shape
    eye = np.eye(p)[None]
    f, g = objective(x)
    # First step: unit length along -g, as scipy's BFGS does; later steps rescale H
    # by s.y / y.y before the first update (Nocedal & Wright eq. 6.20).
    h_inv = np.repeat(eye, n, 0) / np.maximum(np.abs(g).max(1), 1e-30)[:, None, None]
    active = np.isfinite(f)
    for it in range(n_iters):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xi, fi, gi = x[idx], f[idx], g[idx]
        d = -np.einsum("nij,nj->ni", h_inv[idx], gi)
        slope = (gi * d).sum(1)
        uphill = slope >= 0
        d[uphill], slope[uphill] = -gi[uphill], -(gi[uphill] ** 2).sum(1)
        step = np.ones(idx.size)
        new_x, new_f, new_g = xi.copy(), fi.copy(), gi.copy()
        accepted = np.zeros(idx.size, bool)
        for _ in range(max_halvings):
            todo = np.flatnonzero(~accepted)
            if todo.size == 0:
                break
            trial = xi[todo] + step[todo, None] * d[todo]
            ft, gt = objective(trial)
            ok = np.isfinite(ft) & (ft <= fi[todo] + 1e-4 * step[todo] * slope[todo])
            sel = todo[ok]
            new_x[sel], new_f[sel], new_g[sel] = trial[ok], ft[ok], gt[ok]
            accepted[sel] = True
            step[todo[~ok]] *= 0.5
        s, y = new_x - xi, new_g - gi
        sy = (s * y).sum(1)
        update = accepted & (sy > 1e-12 * np.sqrt((s * s).sum(1) * (y * y).sum(1)))
        h = h_inv[idx]
        if it == 0:
            yy = np.where(update, (y * y).sum(1), 1.0)
            h = np.where(update[:, None, None], eye * (np.where(update, sy, 1.0) / yy)[:, None, None], h)
        rho = np.where(update, 1.0 / np.where(update, sy, 1.0), 0.0)
        v = eye - rho[:, None, None] * np.einsum("ni,nj->nij", s, y)
        h_new = np.einsum("nij,njk,nlk->nil", v, h, v) + rho[:, None, None] * np.einsum("ni,nj->nij", s, s)
        h_inv[idx] = np.where(update[:, None, None], h_new, h)
        x[idx], f[idx], g[idx] = new_x, new_f, new_g
        done = ~accepted | (np.abs(new_g).max(1) < gtol)
        active[idx[done]] = False
    return x, f
