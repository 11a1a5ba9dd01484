"""The hand-written step computes the gradients autograd computes on loss.sae_loss."""

import pytest
import torch

from sae_core.loss import sae_loss
from sae_core.model import SAE
from sae_core.step import compute_gradients


@pytest.mark.parametrize("l1", [0.0, 5.0])
def test_manual_gradients_match_autograd(l1: float) -> None:
    gen = torch.Generator().manual_seed(0)
    sae = SAE.init(16, 64, decoder_norm=0.5, generator=gen)
    with torch.no_grad():  # biases away from 0 so their gradients are tested too
        sae.b_enc.normal_(0, 0.1, generator=gen)
        sae.b_dec.normal_(0, 0.1, generator=gen)
    x = torch.randn(128, 16, generator=gen).double()
    sae = sae.double()

    out = sae(x)
    reference = sae_loss(x, out.x_hat, out.f, sae.W_dec, l1)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)

    stats = compute_gradients(sae, x, l1)
    torch.testing.assert_close(stats.loss, reference.detach())
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)
    assert torch.equal(stats.fired, (out.f > 0).any(0))


def test_bf16_matmuls_stay_close_to_fp32() -> None:
    gen = torch.Generator().manual_seed(1)
    sae = SAE.init(32, 128, decoder_norm=0.1, generator=gen)
    x = torch.randn(256, 32, generator=gen)
    exact = compute_gradients(sae, x, 5.0)
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    approx = compute_gradients(sae, x, 5.0, mm_dtype=torch.bfloat16)
    assert abs(approx.loss.item() - exact.loss.item()) < 2e-2 * exact.loss.item()
    for name, p in sae.named_parameters():
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), grads[name].flatten(), 0)
        assert cos > 0.99, name
