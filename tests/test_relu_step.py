"""The ReLU SAE's step (sae_core/archs/relu.py), dense or over the active entries, sets the
gradients autograd computes on the plain formula of its loss over the dense forward pass:
at every density, in double, fp32 and with bf16 matrix products."""

import pytest
import torch

from sae_core.archs.relu import ReLU
from sae_core.kernels import SPARSE_MAX_DENSITY, sparse_enough
from sae_core.model import SAE, StepContext, StepStats

# Encoder bias mean -> fraction of active entries of f at d=16, F=64, decoder_norm=0.5
# (pre-activations have std ≈ 0.5): ~0.5, ~0.1, ~0.002, exactly 0.
DENSITIES = {"half": 0.0, "low": -0.6, "very_low": -1.4, "none": -100.0}


def make_sae(bias: float, seed: int = 0, d_in: int = 16, n_features: int = 64,
             l1: float = 5.0, path: str = "auto") -> SAE:
    gen = torch.Generator().manual_seed(seed)
    sae = ReLU(l1, 0, 0.5, path).init(d_in, n_features, gen)
    with torch.no_grad():  # biases away from 0 so their gradients are tested too
        sae.b_enc.normal_(bias, 0.1, generator=gen)
        sae.b_dec.normal_(0, 0.1, generator=gen)
    return sae


def step(sae: SAE, x: torch.Tensor, path: str | None = None,
         mm_dtype: torch.dtype | None = None) -> StepStats:
    arch = sae.arch if path is None else ReLU(sae.arch.l1_coefficient, 0, 0.5, path)
    dead = torch.zeros(sae.n_features, dtype=torch.bool)
    return arch.gradients(sae, x, StepContext(step=10, dead=dead, mm_dtype=mm_dtype))


def autograd_reference(sae: SAE, x: torch.Tensor, l1: float
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(loss, {name: grad}, f) by autograd on the model's forward and the loss written
    plainly: ‖x − x̂‖² + λ Σ_i f_i ‖W_dec,i‖, averaged over the batch."""
    sae.zero_grad(set_to_none=True)
    out = sae(x)
    loss = ((x - out.x_hat).pow(2).sum(1) + l1 * out.f @ sae.W_dec.norm(dim=1)).mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    return loss.detach(), grads, out.f.detach()


@pytest.mark.parametrize("path", ["dense", "sparse", "auto"])
@pytest.mark.parametrize("density", list(DENSITIES))
@pytest.mark.parametrize("l1", [0.0, 5.0])
def test_gradients_match_autograd_in_double(path: str, density: str, l1: float) -> None:
    sae = make_sae(DENSITIES[density], l1=l1).double()
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(1)).double()
    loss, expected, f = autograd_reference(sae, x, l1)

    stats = step(sae, x, path)
    torch.testing.assert_close(stats.loss, loss)
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
    dense = step(sae, x, "dense")
    dense_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sparse = step(sae, x, "sparse")
    assert 0 < (sae.encode(x) > 0).float().mean() < 0.05
    torch.testing.assert_close(sparse.loss, dense.loss)
    for name in ("mse", "l1_penalty"):
        torch.testing.assert_close(sparse.terms[name], dense.terms[name], msg=name)
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
    approx = step(sae, x, path, mm_dtype=torch.bfloat16)
    assert abs(approx.loss.item() - loss.item()) < 2e-2 * loss.item()
    for name, p in sae.named_parameters():
        cos = torch.nn.functional.cosine_similarity(
            p.grad.double().flatten(), expected[name].flatten(), 0)
        assert cos > 0.99, name


def test_auto_picks_the_path_by_measured_density(monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_core.archs.relu as relu

    chosen = []
    real = relu.ActiveSet.where

    def spy(mask: torch.Tensor) -> object:
        chosen.append("sparse")
        return real(mask)

    monkeypatch.setattr(relu.ActiveSet, "where", staticmethod(spy))
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(6))
    step(make_sae(DENSITIES["half"]), x)
    assert chosen == []  # half the entries active: dense
    step(make_sae(DENSITIES["very_low"]), x)
    assert chosen == ["sparse"]


def test_the_density_test_counts_entries_above_the_threshold() -> None:
    pre = torch.full((600, 100), -1.0)
    pre[:, :5] = 2.0  # 5 of 100 features on every token: at the switch
    pre[0, 50] = 0.0  # exactly 0 is inactive, as in ReLU
    assert sparse_enough(pre) and not sparse_enough(pre.add(0.5))  # the 0 becomes 0.5 > 0
    assert sparse_enough(pre, torch.full((100,), 3.0))  # a threshold per feature
    pre[1, 60] = 1.0  # one more entry in the 512 sampled rows: over 5%
    assert not sparse_enough(pre)
    assert 0 < SPARSE_MAX_DENSITY < 0.5


def test_unknown_path_is_rejected() -> None:
    with pytest.raises(ValueError, match="path"):
        step(make_sae(0.0), torch.randn(8, 16), "fast")


def test_lambda_warms_up_and_is_logged() -> None:
    arch = ReLU(5.0, 100, 0.1)
    assert arch.schedule(0) == {"l1_coefficient": 0.0}
    assert arch.schedule(50) == {"l1_coefficient": pytest.approx(2.5)}
    assert arch.schedule(100) == arch.schedule(10_000) == {"l1_coefficient": 5.0}


def test_evaluate_decodes_sparse_f_as_the_dense_product() -> None:
    """evaluate() decodes a sparse f through its active entries (sae_core/evaluate.py):
    the metrics equal those of the dense forward pass."""
    from sae_core.evaluate import evaluate

    g = torch.Generator().manual_seed(0)
    sae = ReLU(5.0, 0, 0.1).init(32, 512, g)
    x = torch.randn(3000, 32, generator=g)
    with torch.no_grad():  # ~1% of the features fire: the sparse decode runs
        sae.b_enc.copy_(-(x @ sae.W_enc).quantile(0.99, dim=0))
        sae.b_dec.copy_(torch.randn(32, generator=g))
        out = sae(x)
    got = evaluate(sae, x, chunk_tokens=1024)
    assert 0 < got["l0"] < 0.05 * 512
    sq_err = (x - out.x_hat).pow(2).sum().item()
    penalty = (out.f.sum(0) @ sae.W_dec.norm(dim=1)).item() / len(x)
    assert got["mse"] == pytest.approx(sq_err / len(x), rel=1e-5)
    assert got["loss"] == pytest.approx(sq_err / len(x) + 5.0 * penalty, rel=1e-5)
    assert got["l0"] == pytest.approx((out.f > 0).sum().item() / len(x), rel=1e-9)
