"""Both paths of the hand-written step compute the gradients autograd computes on
loss.sae_loss, at every density, in double, fp32 and with bf16 matrix products."""

import pytest
import torch

from sae_core.loss import sae_loss
from sae_core.model import SAE
from sae_core.step import SPARSE_MAX_DENSITY, active_fraction, compute_gradients

# Encoder bias mean -> fraction of active entries of f at d=16, F=64, decoder_norm=0.5
# (pre-activations have std ≈ 0.5): ~0.5, ~0.1, ~0.002, exactly 0.
DENSITIES = {"half": 0.0, "low": -0.6, "very_low": -1.4, "none": -100.0}


def make_sae(bias: float, seed: int = 0, d_in: int = 16, n_features: int = 64) -> SAE:
    gen = torch.Generator().manual_seed(seed)
    sae = SAE.init(d_in, n_features, decoder_norm=0.5, generator=gen)
    with torch.no_grad():  # biases away from 0 so their gradients are tested too
        sae.b_enc.normal_(bias, 0.1, generator=gen)
        sae.b_dec.normal_(0, 0.1, generator=gen)
    return sae


def autograd_reference(sae: SAE, x: torch.Tensor, l1: float
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(loss, {name: grad}, f) by autograd on the model's forward and loss.sae_loss."""
    sae.zero_grad(set_to_none=True)
    out = sae(x)
    loss = sae_loss(x, out.x_hat, out.f, sae.W_dec, l1)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    return loss.detach(), grads, out.f.detach()


@pytest.mark.parametrize("path", ["dense", "sparse", "auto"])
@pytest.mark.parametrize("density", list(DENSITIES))
@pytest.mark.parametrize("l1", [0.0, 5.0])
def test_gradients_match_autograd_in_double(path: str, density: str, l1: float) -> None:
    sae = make_sae(DENSITIES[density]).double()
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(1)).double()
    loss, expected, f = autograd_reference(sae, x, l1)

    stats = compute_gradients(sae, x, l1, path=path)
    torch.testing.assert_close(stats.loss, loss)
    torch.testing.assert_close(stats.f_sum, f.sum(0))
    assert torch.equal(stats.fired, (f > 0).any(0))
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)
        assert p.grad.is_contiguous(), name


@pytest.mark.parametrize("bias", [-1.0, -1.3])
def test_sparse_path_matches_dense_in_fp32(bias: float) -> None:
    """A larger fp32 case: L0 ≈ 25 and ≈ 5 of 1024 features (at -1.3, 52 of the 1024
    tokens have no active feature at all)."""
    sae = make_sae(bias, seed=2, d_in=64, n_features=1024)
    x = torch.randn(1024, 64, generator=torch.Generator().manual_seed(3))
    dense = compute_gradients(sae, x, 5.0, path="dense")
    dense_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sparse = compute_gradients(sae, x, 5.0, path="sparse")
    assert 0 < active_fraction(sae.encode(x)) < 0.05
    for field in ("loss", "mse", "l1_penalty", "f_sum"):
        torch.testing.assert_close(getattr(sparse, field), getattr(dense, field), msg=field)
    assert torch.equal(sparse.fired, dense.fired)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, dense_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("bias", [0.0, -0.6])
def test_bf16_matmuls_stay_close_to_the_exact_gradients(path: str, bias: float) -> None:
    sae = make_sae(bias, seed=4, d_in=32, n_features=128)
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(5))
    loss, expected, _ = autograd_reference(sae.double(), x.double(), 5.0)
    sae = sae.float()
    approx = compute_gradients(sae, x, 5.0, mm_dtype=torch.bfloat16, path=path)
    assert abs(approx.loss.item() - loss.item()) < 2e-2 * loss.item()
    for name, p in sae.named_parameters():
        cos = torch.nn.functional.cosine_similarity(
            p.grad.double().flatten(), expected[name].flatten(), 0)
        assert cos > 0.99, name


def test_auto_picks_the_path_by_measured_density(monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_core.step as step

    chosen = []
    monkeypatch.setattr(step, "_sparse_backward", lambda *a: chosen.append("sparse"))
    monkeypatch.setattr(step, "_dense_backward", lambda *a: chosen.append("dense"))
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(6))
    compute_gradients(make_sae(DENSITIES["half"]), x, 5.0)
    compute_gradients(make_sae(DENSITIES["very_low"]), x, 5.0)
    assert chosen == ["dense", "sparse"]


def test_active_fraction_counts_positive_entries() -> None:
    pre = torch.full((600, 100), -1.0)
    pre[:, :3] = 2.0  # 3 of 100 features on every token
    pre[0, 50] = 0.0  # exactly 0 is inactive, as in ReLU
    assert active_fraction(pre) == pytest.approx(0.03)
    assert 0 < SPARSE_MAX_DENSITY < 0.5


def test_unknown_path_is_rejected() -> None:
    with pytest.raises(ValueError, match="path"):
        compute_gradients(make_sae(0.0), torch.randn(8, 16), 5.0, path="fast")


def test_evaluate_decodes_sparse_f_as_the_dense_product() -> None:
    """evaluate() decodes a sparse f through its active entries (sae_core/evaluate.py):
    the metrics equal those of the dense forward pass."""
    from sae_core.evaluate import evaluate

    g = torch.Generator().manual_seed(0)
    sae = SAE.init(32, 512, 0.1, g)
    x = torch.randn(3000, 32, generator=g)
    with torch.no_grad():  # ~1% of the features fire: the sparse decode runs
        sae.b_enc.copy_(-(x @ sae.W_enc).quantile(0.99, dim=0))
        sae.b_dec.copy_(torch.randn(32, generator=g))
        out = sae(x)
    got = evaluate(sae, x, l1_coefficient=5.0, chunk_tokens=1024)
    assert 0 < got["l0"] < 0.05 * 512
    sq_err = (x - out.x_hat).pow(2).sum().item()
    penalty = (out.f.sum(0) @ sae.W_dec.norm(dim=1)).item() / len(x)
    assert got["mse"] == pytest.approx(sq_err / len(x), rel=1e-5)
    assert got["loss"] == pytest.approx(sq_err / len(x) + 5.0 * penalty, rel=1e-5)
    assert got["l0"] == pytest.approx((out.f > 0).sum().item() / len(x), rel=1e-9)
