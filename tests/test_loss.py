"""The loss terms' hand-written backward passes (sae_core/loss.py) against autograd on
the plain formulas, in double: values and gradients of both inputs, a zero decoder row
included (autograd gives its norm a zero gradient there)."""

import torch

from sae_core import loss


def test_mse_matches_the_formula_and_its_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    x_hat = torch.randn(32, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss.mse, (x, x_hat))
    ours = loss.mse(x, x_hat)
    expected = (x - x_hat).pow(2).sum(1).mean()
    torch.testing.assert_close(ours, expected)
    g_ours = torch.autograd.grad(ours, (x, x_hat))
    g_expected = torch.autograd.grad(expected, (x, x_hat))
    for a, b in zip(g_ours, g_expected, strict=True):
        torch.testing.assert_close(a, b)


def test_l1_penalty_matches_the_formula_and_its_gradients() -> None:
    gen = torch.Generator().manual_seed(1)
    f_sum = torch.rand(16, generator=gen, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    W_dec[3] = 0.0
    W_dec.requires_grad_(True)
    ours = loss.l1_penalty(f_sum, W_dec, 4)
    expected = f_sum @ W_dec.norm(dim=1) / 4
    torch.testing.assert_close(ours, expected)
    g_ours = torch.autograd.grad(ours, (f_sum, W_dec))
    g_expected = torch.autograd.grad(expected, (f_sum, W_dec))
    for a, b in zip(g_ours, g_expected, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.equal(g_ours[1][3], torch.zeros(8, dtype=torch.float64))
    W_dec_nonzero = torch.randn(16, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, w: loss.l1_penalty(s, w, 4), (f_sum, W_dec_nonzero))
