"""The sparse products of an SAE step, as autograd Functions.

Once an SAE is sparse (L0 of tens out of thousands of features; docs/METHOD.md §1
gives the paper's bar, L0 < 300 of millions), only the encoder product x W_enc has to be
dense. With the active set (b, i) of nnz = B·L0 entries, the rest of a step is

    x̂      = f W_dec           embedding_bag of W_dec rows, weighted by f     ~nnz·d
    ∂L/∂f  at active entries   sampled product (g_x̂ W_decᵀ) on f's pattern   ~nnz·d
    dW_dec = fᵀ g_x̂            embedding_bag of g_x̂ rows per feature          ~nnz·d
    dW_enc = xᵀ g_pre          embedding_bag of x rows per feature             ~nnz·d

instead of four dense products of B·F·d each. Wrapped as autograd Functions (as
openai/sparse_autoencoder and EleutherAI/sparsify wrap theirs), every architecture writes
its loss once, in plain torch over these two operations, and autograd does the rest
(sae_core/archs/). tests/test_kernels.py checks both against dense autograd.

Shapes: x [B, d]; W_enc [d, F]; b_enc [F]; W_dec [F, d]; values [nnz].
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as functional

# Above this fraction of active (token, feature) entries the dense products are faster.
# bench/step_crossover.py on a 2-core CPU (2 threads, batch 4096; docs/METHOD.md §5.4, the
# table in bench/README.md): the sparse path won up to ~12% density at d=384, F=4096 but
# only to ~6% at d=768, F=16384, where W_dec (50 MB) no longer fits in cache for the row
# gathers, so the switch sits below both. Trained SAEs are far sparser (L0 4-18 of 512 on MiniLM,
# docs/METHOD.md §5.2).
SPARSE_MAX_DENSITY = 0.05
# The density is estimated on the first rows of a batch only: rows of a cache batch are
# shuffled tokens (sae_core/cache_reader.py), and a 512-row count costs ~1/8 of a full one.
DENSITY_SAMPLE_ROWS = 512


def sparse_enough(pre: torch.Tensor, threshold: torch.Tensor | float = 0.0) -> bool:
    """Whether the entries of pre [B, F] above threshold (a scalar or [F]) are few enough
    for the sparse path, judged on the first DENSITY_SAMPLE_ROWS rows."""
    sample = pre[:DENSITY_SAMPLE_ROWS]
    return torch.count_nonzero(sample > threshold).item() <= SPARSE_MAX_DENSITY * max(
        sample.numel(), 1)


class ActiveSet:
    """The active (token, feature) entries of a batch, in row-major (CSR) order.

    rows, cols: [nnz] int64; token_ptr: [B + 1]. The same entries grouped by feature (the
    CSC view both weight gradients need) are sorted once, on first use, and shared.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_tokens: int,
                 n_features: int) -> None:
        self.rows, self.cols = rows.contiguous(), cols.contiguous()
        self.n_tokens, self.n_features = n_tokens, n_features
        self.token_ptr = _pointers(self.rows, n_tokens)
        self._by_feature: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def where(cls, mask: torch.Tensor) -> ActiveSet:
        """The True entries of mask [B, F]."""
        active = mask.nonzero()  # [nnz, 2], row-major
        return cls(active[:, 0], active[:, 1], mask.shape[0], mask.shape[1])

    @classmethod
    def of_indices(cls, indices: torch.Tensor, keep: torch.Tensor, n_features: int) -> ActiveSet:
        """Per-token feature indices [B, k] (e.g. a top-k), the entries where keep [B, k]."""
        cols, order = indices.sort(dim=1)  # CSR wants ascending columns within a row
        keep = keep.gather(1, order)
        rows = torch.arange(indices.shape[0], device=indices.device).unsqueeze(1).expand_as(cols)
        return cls(rows[keep], cols[keep], indices.shape[0], n_features)

    @property
    def nnz(self) -> int:
        return self.rows.numel()

    def fired(self) -> torch.Tensor:
        """[F] bool: features active on at least one token."""
        out = torch.zeros(self.n_features, dtype=torch.bool, device=self.cols.device)
        out[self.cols] = True
        return out

    def by_feature(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order [nnz], tokens_by_feature [nnz], feature_ptr [F + 1]): entries sorted by
        feature, stably. int32 keys: torch's stable CPU sort of 262k int32 took 3 ms, of
        int64 29 ms (docs/METHOD.md §5.4)."""
        if self._by_feature is None:
            cols_sorted, order = torch.sort(self.cols.int(), stable=True)
            self._by_feature = (order, self.rows[order], _pointers(cols_sorted, self.n_features))
        return self._by_feature


def _pointers(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointers [n + 1] from sorted row ids [nnz]."""
    ptr = torch.zeros(n + 1, dtype=torch.long, device=sorted_ids.device)
    torch.cumsum(torch.bincount(sorted_ids, minlength=n), 0, out=ptr[1:])
    return ptr


def _per_feature_sum(active: ActiveSet, rows_of: torch.Tensor, weights: torch.Tensor
                     ) -> torch.Tensor:
    """Σ over each feature's entries of weights_j · rows_of[token_j]: [F, d]."""
    order, tokens, feature_ptr = active.by_feature()
    return functional.embedding_bag(tokens, rows_of, feature_ptr, mode="sum",
                                    per_sample_weights=weights[order], include_last_offset=True)


class _EncoderValues(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, x: torch.Tensor, W_enc: torch.Tensor,
                b_enc: torch.Tensor, b_pre: torch.Tensor | None, active: ActiveSet
                ) -> torch.Tensor:
        ctx.active = active
        ctx.save_for_backward(x, W_enc, b_pre if b_pre is not None else torch.empty(0))
        ctx.has_b_pre = b_pre is not None
        return pre[active.rows, active.cols]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, W_enc, b_pre = ctx.saved_tensors
        active: ActiveSet = ctx.active
        db_enc = torch.zeros(active.n_features, dtype=g.dtype, device=g.device)
        db_enc.index_add_(0, active.cols, g)
        dW_enc_t = _per_feature_sum(active, x.to(g.dtype), g)  # [F, d]
        db_pre = None
        if ctx.has_b_pre:  # pre = (x - b_pre) W_enc + b_enc
            dW_enc_t.sub_(db_enc.unsqueeze(1) * b_pre.unsqueeze(0))
            db_pre = -(W_enc @ db_enc) if ctx.needs_input_grad[4] else None
        dW_enc = dW_enc_t.T.contiguous() if ctx.needs_input_grad[2] else None  # [d, F]
        return None, None, dW_enc, db_enc if ctx.needs_input_grad[3] else None, db_pre, None


def encoder_values(pre: torch.Tensor, x: torch.Tensor, W_enc: torch.Tensor,
                   b_enc: torch.Tensor, b_pre: torch.Tensor | None, active: ActiveSet
                   ) -> torch.Tensor:
    """The pre-activations at the active entries, pre[rows, cols]: [nnz].

    pre [B, F] = (x - b_pre) W_enc + b_enc, computed densely without autograd by the
    caller (it chose the active set from it); gradients reach W_enc, b_enc and b_pre
    (None: no input centring) through the active entries only. x needs no gradient.
    """
    return _EncoderValues.apply(pre, x, W_enc, b_enc, b_pre, active)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, W_dec: torch.Tensor, active: ActiveSet
                ) -> torch.Tensor:
        ctx.active = active
        ctx.save_for_backward(values, W_dec)
        return functional.embedding_bag(active.cols, W_dec, active.token_ptr, mode="sum",
                                        per_sample_weights=values, include_last_offset=True)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        values, W_dec = ctx.saved_tensors
        active: ActiveSet = ctx.active
        g_values = dW_dec = None
        if ctx.needs_input_grad[0]:  # (g W_decᵀ) sampled on the active entries only
            with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(active.token_ptr, active.cols, values,
                                                  (active.n_tokens, active.n_features))
            g_values = torch.sparse.sampled_addmm(pattern, g, W_dec.T, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            dW_dec = _per_feature_sum(active, g, values)
        return g_values, dW_dec, None


def sparse_decode(values: torch.Tensor, W_dec: torch.Tensor, active: ActiveSet) -> torch.Tensor:
    """f W_dec for f holding `values` at the active entries and 0 elsewhere: [B, d]
    (no decoder bias). Gradients reach values and W_dec."""
    return _SparseDecode.apply(values, W_dec, active)
