"""The sparse autograd Functions of sae_core/kernels.py give the values and gradients of
the dense products they replace (fp64), for active sets from a mask and from a top-k."""

import pytest
import torch

from sae_core.kernels import ActiveSet, encoder_values, sparse_decode


def dense_reference(x, W_enc, b_enc, b_pre, W_dec, mask, g_out):
    """Dense autograd: f = pre * mask with pre = (x - b_pre) W_enc + b_enc, y = f W_dec."""
    params = [t.detach().clone().requires_grad_(True) for t in (W_enc, b_enc, b_pre, W_dec)]
    w_enc, b_e, b_p, w_dec = params
    pre = (x - b_p) @ w_enc + b_e
    y = (pre * mask) @ w_dec
    y.backward(g_out)
    return y.detach(), [p.grad for p in params]


@pytest.mark.parametrize("source", ["mask", "topk"])
def test_encoder_and_decoder_kernels_match_dense_autograd(source: str) -> None:
    g = torch.Generator().manual_seed(0)
    B, d, F = 40, 6, 30
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    W_enc = torch.randn(d, F, generator=g, dtype=torch.float64)
    b_enc = torch.randn(F, generator=g, dtype=torch.float64)
    b_pre = torch.randn(d, generator=g, dtype=torch.float64)
    W_dec = torch.randn(F, d, generator=g, dtype=torch.float64)
    g_out = torch.randn(B, d, generator=g, dtype=torch.float64)
    pre = (x - b_pre) @ W_enc + b_enc
    if source == "mask":
        mask = pre > 0.8
        active = ActiveSet.where(mask)
    else:  # top 4 per token, then only the positive ones
        top = pre.topk(4, dim=1)
        active = ActiveSet.of_indices(top.indices, top.values > 0, F)
        mask = torch.zeros_like(pre, dtype=torch.bool)
        mask.scatter_(1, top.indices, top.values > 0)
    assert 0 < active.nnz < B * F / 2
    assert torch.equal(active.fired(), mask.any(0))

    expected, grads = dense_reference(x, W_enc, b_enc, b_pre, W_dec, mask.double(), g_out)
    params = [t.clone().requires_grad_(True) for t in (W_enc, b_enc, b_pre, W_dec)]
    w_enc, b_e, b_p, w_dec = params
    values = encoder_values(pre, x, w_enc, b_e, b_p, active)
    y = sparse_decode(values, w_dec, active)
    torch.testing.assert_close(y, expected)
    y.backward(g_out)
    for name, p, want in zip(("W_enc", "b_enc", "b_pre", "W_dec"), params, grads, strict=True):
        torch.testing.assert_close(p.grad, want, msg=name)


def test_an_empty_active_set_gives_zero_output_and_gradients() -> None:
    x = torch.randn(5, 3, dtype=torch.float64)
    W_enc = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    b_enc = torch.zeros(7, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    pre = x @ W_enc.detach() - 100
    active = ActiveSet.where(pre > 0)
    y = sparse_decode(encoder_values(pre, x, W_enc, b_enc, None, active), W_dec, active)
    assert active.nnz == 0 and torch.equal(y, torch.zeros(5, 3, dtype=torch.float64))
    y.sum().backward()
    for p in (W_enc, b_enc, W_dec):
        assert p.grad is not None and not p.grad.any()
