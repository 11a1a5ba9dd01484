"""One SAE gradient computation with a hand-written backward, dense or sparse per step.

Autograd would keep f·‖W_dec‖ and the ReLU mask as extra [B, F] tensors and run the
gradient with respect to x, which nobody needs. Here the backward is written out, and
after the λ warm-up it exploits that a ReLU SAE is sparse (L0 of tens out of thousands of
features, ECOSYSTEM.md; the paper's bar is L0 < 300 of millions): only the encoder
product x W_enc has to be dense. With the active set (b, i) where f_bi > 0, nnz = B·L0:

    x̂      = f W_dec           embedding_bag of W_dec rows, weighted by f     ~nnz·d
    ∂L/∂f  at active entries   sampled product (g_x̂ W_decᵀ) on f's pattern   ~nnz·d
    dW_dec = fᵀ g_x̂            embedding_bag of g_x̂ rows per feature          ~nnz·d
    dW_enc = xᵀ g_pre          embedding_bag of x rows per feature             ~nnz·d

instead of four dense products of B·F·d each. Early in training (λ ≈ 0, half the features
active) the dense path below runs, so each step picks its path by the measured density.
`tests/test_step.py` checks both paths against autograd on `loss.sae_loss`.

Shapes: x [B, d]; W_enc [d, F]; b_enc [F]; W_dec [F, d]; b_dec [d].
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as functional

from sae_core.model import SAE

# Above this fraction of active (token, feature) entries the dense path is faster.
# bench/step_crossover.py on this CPU (2 threads, batch 4096, both paths interleaved on a
# busy machine; bench/README.md has the table), seconds dense / sparse:
#   d=384, F=4096:   density 0.016: 5.3 / 3.0;  0.062: 4.1 / 2.6;  0.12: 3.8 / 3.2;  0.24: 3.2 / 4.1
#   d=768, F=16384:  density 0.062: 22.0 / 19.5;  0.12: 21.4 / 40.0
# The crossover is earlier at the large shape (its W_dec, 50 MB, no longer fits in cache
# for the row gathers), so the switch sits below it. After warm-up densities are far lower
# (L0 4-18 of 512 on MiniLM, ECOSYSTEM.md; L0 < 300 of F in the paper).
SPARSE_MAX_DENSITY = 0.05
# The density is estimated on the first rows of the batch only: rows of a cache batch are
# shuffled tokens (cache_reader.py), and a 512-row count costs ~1/8 of a full one.
DENSITY_SAMPLE_ROWS = 512


class StepStats(NamedTuple):
    loss: torch.Tensor  # [] mse + λ·penalty at the λ of this step
    mse: torch.Tensor  # []
    l1_penalty: torch.Tensor  # []
    fired: torch.Tensor  # [F] bool: feature active on at least one token of the batch
    f_sum: torch.Tensor  # [F] Σ_b f_bi


@torch.no_grad()
def compute_gradients(
    sae: SAE,
    x: torch.Tensor,
    l1: float,
    mm_dtype: torch.dtype | None = None,
    *,
    path: str = "auto",
) -> StepStats:
    """Set `.grad` of every parameter of `sae` to ∇(mse + l1·penalty) on batch x [B, d].

    mm_dtype: run the dense matrix products in this dtype (bf16 on GPUs), with fp32
    accumulation of everything else; None keeps the parameters' dtype throughout.
    path: "auto" picks "sparse" when the active fraction of f is at most
    SPARSE_MAX_DENSITY, else "dense"; both give the same gradients.
    """
    if path not in ("auto", "dense", "sparse"):
        raise ValueError(f"path must be 'auto', 'dense' or 'sparse', got {path!r}")
    if mm_dtype is None:  # addmm adds the bias inside the product: one [B, F] pass fewer
        pre = torch.addmm(sae.b_enc, x, sae.W_enc)  # [B, F] pre-activations
    else:
        pre = _mm(x, sae.W_enc, mm_dtype).add_(sae.b_enc)
    if path == "auto":
        path = "sparse" if active_fraction(pre) <= SPARSE_MAX_DENSITY else "dense"
    if path == "sparse":
        return _sparse_backward(sae, x, pre, l1)
    return _dense_backward(sae, x, pre.relu_(), l1, mm_dtype)


def active_fraction(pre: torch.Tensor) -> float:
    """Fraction of entries > 0 in the first DENSITY_SAMPLE_ROWS rows of pre [B, F]."""
    sample = pre[:DENSITY_SAMPLE_ROWS]
    return torch.count_nonzero(sample > 0).item() / max(sample.numel(), 1)


def _mm(a: torch.Tensor, b: torch.Tensor, mm_dtype: torch.dtype | None) -> torch.Tensor:
    if mm_dtype is None:
        return a @ b
    return (a.to(mm_dtype) @ b.to(mm_dtype)).to(a.dtype)


def _loss_terms(err: torch.Tensor, f_sum: torch.Tensor, dec_norms: torch.Tensor,
                l1: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mse, penalty) from err = x̂ - x [B, d] and f_sum [F]."""
    batch = err.shape[0]
    mse = err.pow(2).sum() / batch
    l1_penalty = f_sum @ dec_norms / batch
    return mse + l1 * l1_penalty, mse, l1_penalty


def _dense_backward(sae: SAE, x: torch.Tensor, f: torch.Tensor, l1: float,
                    mm_dtype: torch.dtype | None) -> StepStats:
    """Four more dense products (decoder forward, dW_dec, ∂L/∂f, dW_enc; no dx).
    f [B, F] = ReLU(pre), overwritten."""
    W_dec, b_dec = sae.W_dec, sae.b_dec
    batch = x.shape[0]
    if mm_dtype is None:
        x_hat = torch.addmm(b_dec, f, W_dec)  # [B, d]
    else:
        x_hat = _mm(f, W_dec, mm_dtype).add_(b_dec)
    err = x_hat.sub_(x)  # [B, d]; x_hat is not needed any more
    dec_norms = W_dec.norm(dim=1)  # [F]
    f_sum = f.sum(0)  # [F]
    loss, mse, l1_penalty = _loss_terms(err, f_sum, dec_norms, l1)

    # Backward. g_xhat = ∂loss/∂x̂ = 2·err/B.
    g_xhat = err.mul_(2.0 / batch)  # [B, d]
    b_dec.grad = g_xhat.sum(0)
    # ∂penalty/∂W_dec[i] = λ · (Σ_b f_bi / B) · W_dec[i] / ‖W_dec[i]‖
    dW_dec = _mm(f.T, g_xhat, mm_dtype)  # [F, d]
    dW_dec.addcmul_(W_dec, (l1 / batch * f_sum / dec_norms).unsqueeze(1))
    W_dec.grad = dW_dec
    # ∂loss/∂f = g_xhat W_decᵀ + λ‖W_dec[i]‖/B, passed through the ReLU where f > 0:
    # threshold_backward masks in one pass without a [B, F] bool temporary.
    g_f = _mm(g_xhat, W_dec.T, mm_dtype).add_(dec_norms, alpha=l1 / batch)  # [B, F]
    g_pre = torch.ops.aten.threshold_backward(g_f, f, 0)
    del g_f
    sae.b_enc.grad = g_pre.sum(0)
    sae.W_enc.grad = _mm(x.T, g_pre, mm_dtype)  # [d, F]
    return StepStats(loss, mse, l1_penalty, f_sum > 0, f_sum)


def _sparse_backward(sae: SAE, x: torch.Tensor, pre: torch.Tensor, l1: float) -> StepStats:
    """The step on the active set of pre [B, F] only; every product is O(nnz·d).

    Runs in the parameters' dtype: these products are cheap, so bf16 would buy nothing.
    """
    W_dec, b_dec = sae.W_dec, sae.b_dec
    batch, n_features = pre.shape
    active = pre.gt(0).nonzero()  # [nnz, 2], row-major order: a CSR pattern by token
    rows, cols = active[:, 0].contiguous(), active[:, 1].contiguous()
    f_vals = pre[rows, cols].to(W_dec.dtype)  # [nnz]
    del pre, active
    token_ptr = _pointers(rows, batch)  # [B + 1]

    x_hat = functional.embedding_bag(cols, W_dec, token_ptr, mode="sum",
                                     per_sample_weights=f_vals, include_last_offset=True)
    err = x_hat.add_(b_dec).sub_(x)  # [B, d]
    dec_norms = W_dec.norm(dim=1)  # [F]
    f_sum = torch.zeros(n_features, dtype=W_dec.dtype, device=W_dec.device)
    f_sum.index_add_(0, cols, f_vals)
    loss, mse, l1_penalty = _loss_terms(err, f_sum, dec_norms, l1)

    g_xhat = err.mul_(2.0 / batch)  # [B, d]
    b_dec.grad = g_xhat.sum(0)
    # ∂loss/∂pre at the active entries (the ReLU passes exactly these):
    # (g_xhat W_decᵀ)_bi + λ‖W_dec[i]‖/B, the product sampled on f's pattern only.
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta" (torch 2.13)
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(token_ptr, cols, f_vals, (batch, n_features))
    g_vals = torch.sparse.sampled_addmm(pattern, g_xhat, W_dec.T, beta=0.0).values()
    g_vals = g_vals.add_(dec_norms[cols], alpha=l1 / batch)  # [nnz]
    b_enc_grad = torch.zeros_like(f_sum)
    sae.b_enc.grad = b_enc_grad.index_add_(0, cols, g_vals)

    # The same pattern grouped by feature (a CSC view) for the two weight gradients.
    # int32 keys: torch's stable CPU sort of 262k int32 took 3 ms, of int64 29 ms (measured).
    cols_sorted, order = torch.sort(cols.int(), stable=True)
    tokens_by_feature = rows[order]
    feature_ptr = _pointers(cols_sorted, n_features)  # [F + 1]
    dW_dec = functional.embedding_bag(tokens_by_feature, g_xhat, feature_ptr, mode="sum",
                                      per_sample_weights=f_vals[order],
                                      include_last_offset=True)  # [F, d]
    dW_dec.addcmul_(W_dec, (l1 / batch * f_sum / dec_norms).unsqueeze(1))
    W_dec.grad = dW_dec
    dW_enc_t = functional.embedding_bag(tokens_by_feature, x.to(W_dec.dtype), feature_ptr,
                                        mode="sum", per_sample_weights=g_vals[order],
                                        include_last_offset=True)  # [F, d]
    sae.W_enc.grad = dW_enc_t.T.contiguous()  # [d, F], the parameter's layout
    return StepStats(loss, mse, l1_penalty, f_sum > 0, f_sum)


def _pointers(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointers [n + 1] from sorted row ids [nnz]."""
    ptr = torch.zeros(n + 1, dtype=torch.long, device=sorted_ids.device)
    torch.cumsum(torch.bincount(sorted_ids, minlength=n), 0, out=ptr[1:])
    return ptr
