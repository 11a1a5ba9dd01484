"""Every architecture (sae_core/archs/): its step's gradients are autograd's on its loss
written densely here (fp64), it recovers a planted dictionary at its natural sparsity,
and its sparsity control does what it says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_core import archs
from sae_core.archs import unit_norm
from sae_core.archs.jumprelu import JumpReLU
from sae_core.archs.topk import TopK, batch_topk, per_token_topk
from sae_core.config import RunConfig
from sae_core.model import SAE, StepContext
from sae_core.run import run_from_cache
from sae_core.sae_files import load_sae

D, F, B = 12, 40, 64


def _sae(arch_name: str, seed: int = 0, **settings: object) -> SAE:
    cfg = RunConfig(cache_dir="-", d_in=D, n_features=F, n_steps=100, arch=arch_name,
                    **settings)  # type: ignore[arg-type]
    sae = archs.build(cfg).init(D, F, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # biases away from 0 so that their gradients are tested too
        sae.b_enc.normal_(0.0, 0.3, generator=g)
        sae.b_dec.normal_(0.0, 0.3, generator=g)
    return sae.double()


def _grads(sae: SAE) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


def _project(W_dec: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    rows = W_dec / W_dec.norm(dim=1, keepdim=True)
    return grad - (grad * rows).sum(1, keepdim=True) * rows


def topk_reference(sae: SAE, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """The TopK family's loss on dense tensors: selection masks, products, prefixes."""
    arch: TopK = sae.arch  # type: ignore[assignment]
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if arch.batch:
        chosen = pre.detach().flatten().topk(arch.k * len(x)).indices
        mask = torch.zeros(pre.numel(), dtype=torch.bool).index_fill_(0, chosen, True)
        mask = mask.view_as(pre)
    else:
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter_(
            1, pre.detach().topk(arch.k, dim=1).indices, True)
    f = pre * (mask & (pre > 0))
    if arch.group_sizes is None:
        x_hat = f @ sae.W_dec + sae.b_dec
        mse = (x - x_hat).pow(2).sum(1).mean()
    else:
        ends = torch.tensor(arch.group_sizes).cumsum(0)
        prefixes = [f[:, :end] @ sae.W_dec[:end] + sae.b_dec for end in ends]
        x_hat = prefixes[-1]
        mse = torch.stack([(x - p).pow(2).sum(1).mean() for p in prefixes]).mean()
    aux = torch.zeros((), dtype=x.dtype)
    if dead.any():
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        top = dead_pre.detach().topk(min(arch.aux_k, int(dead.sum())), dim=1).indices
        aux_mask = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, top, True)
        e = (x - x_hat).detach()
        e_hat = (pre * (aux_mask & (dead_pre > 0))) @ sae.W_dec
        aux = (e - e_hat).pow(2).sum(1).mean() / (e - e.mean(0)).pow(2).sum(1).mean()
    return mse + arch.aux_coefficient * aux


@pytest.mark.parametrize("arch_name", ["topk", "batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("n_dead", [0, 13])
def test_topk_family_gradients_match_autograd_in_double(arch_name: str, n_dead: int) -> None:
    settings = {"k": 4, "aux_k": 5}
    if arch_name == "matryoshka_batchtopk":
        settings["matryoshka_groups"] = (8, 12, 20)  # type: ignore[assignment]
    sae = _sae(arch_name, **settings)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dead = torch.zeros(F, dtype=torch.bool)
    dead[torch.randperm(F, generator=torch.Generator().manual_seed(3))[:n_dead]] = True
    sae.zero_grad()
    expected_loss = topk_reference(sae, x, dead)
    expected_loss.backward()
    expected = _grads(sae)
    expected["W_dec"] = _project(sae.W_dec.detach(), expected["W_dec"])
    stats = sae.arch.gradients(sae, x, StepContext(5, dead, None))
    torch.testing.assert_close(stats.loss, expected_loss.detach())
    assert (stats.terms["auxk_loss"] > 0) == (n_dead > 0)
    for name, grad in _grads(sae).items():
        torch.testing.assert_close(grad, expected[name], msg=name)


class _RefJump(torch.autograd.Function):
    """JumpReLU with the paper's pseudo-derivative (eq. 11), written out again here."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < ctx.eps / 2).to(z.dtype)
        return g * (z > theta), (-(theta / ctx.eps) * kernel * g).sum(0), None


class _RefStep(torch.autograd.Function):
    """H(z - θ) with the paper's pseudo-derivative in θ (eq. 12)."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < ctx.eps / 2).to(z.dtype)
        return None, (-(1 / ctx.eps) * kernel * g).sum(0), None


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("target_l0", [None, 3.0])
def test_jumprelu_gradients_match_autograd_in_double(path: str, target_l0: float | None) -> None:
    eps = 0.05  # wide enough that some pre-activations sit in the band around θ
    sae = _sae("jumprelu", jumprelu_bandwidth=eps, jumprelu_init_threshold=0.6,
               target_l0=target_l0, l0_coefficient=0.7)
    sae.arch = JumpReLU(0.7, target_l0, eps, 0.6, 0, path=path)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    theta = sae.get_parameter("threshold")
    sae.zero_grad()
    pre = x @ sae.W_enc + sae.b_enc
    x_hat = _RefJump.apply(pre, theta, eps) @ sae.W_dec + sae.b_dec
    l0 = _RefStep.apply(pre, theta, eps).sum(1).mean()
    sparsity = l0 if target_l0 is None else (l0 / target_l0 - 1) ** 2
    expected_loss = (x - x_hat).pow(2).sum(1).mean() + 0.7 * sparsity
    expected_loss.backward()
    expected = _grads(sae)
    expected["W_dec"] = _project(sae.W_dec.detach(), expected["W_dec"])
    in_band = ((pre - theta).abs() < eps / 2).sum().item()
    assert in_band > 0 and expected["threshold"].abs().sum() > 0
    stats = sae.arch.gradients(sae, x, StepContext(50, torch.zeros(F, dtype=torch.bool), None))
    torch.testing.assert_close(stats.loss, expected_loss.detach())
    for name, grad in _grads(sae).items():
        torch.testing.assert_close(grad, expected[name], msg=name)


def test_topk_keeps_exactly_k_per_token_and_batchtopk_k_on_average() -> None:
    pre = torch.randn(256, 300, generator=torch.Generator().manual_seed(5)) + 2.0  # all > 0
    per_token = per_token_topk(pre, 7)
    assert torch.equal(torch.bincount(per_token.rows, minlength=256), torch.full((256,), 7))
    batch = batch_topk(pre, 7 * 256)
    counts = torch.bincount(batch.rows, minlength=256)
    assert counts.sum() == 7 * 256 and counts.min() < 7 < counts.max()  # varies per token
    cutoff = pre.flatten().sort(descending=True).values[7 * 256 - 1]
    assert bool((pre[batch.rows, batch.cols] >= cutoff).all())  # the batch's largest
    skewed = pre.clone()
    skewed[0] += 100.0  # one token holds more than its candidates: the exact search runs
    assert torch.bincount(batch_topk(skewed, 7 * 256).rows, minlength=256)[0] == 300


PLANTED_RECIPES = {
    "relu": {"lr": 3e-3},
    "topk": {"k": 3, "lr": 3e-3},
    "batchtopk": {"k": 3, "lr": 3e-3},
    "matryoshka_batchtopk": {"k": 3, "lr": 3e-3},
    "jumprelu": {"target_l0": 3.0, "lr": 3e-3},
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sae_core.synthetic import PlantedDictionary, build_synthetic_cache

    torch.set_num_threads(1)
    return build_synthetic_cache(tmp_path_factory.mktemp("planted") / "cache",
                                 PlantedDictionary(d_in=32, n_true_features=64, l0=3.0,
                                                   noise_std=0.01, seed=0), 300_000).path


@pytest.mark.parametrize("arch_name", list(PLANTED_RECIPES))
def test_each_architecture_recovers_the_planted_dictionary(arch_name: str, planted: Path,
                                                           tmp_path: Path) -> None:
    """Planted: 64 unit directions in d=32, L0 3. At their natural sparsity (k = 3, a
    target L0 of 3, λ = 5) every architecture finds them: mean best cosine >= 0.9."""
    from sae_core.cache import ActivationCache

    cache = ActivationCache.open(planted)
    cfg = RunConfig(cache_dir=str(planted), d_in=32, n_features=128, n_steps=1500,
                    batch_size_tokens=1024, num_threads=1, arch=arch_name,
                    **PLANTED_RECIPES[arch_name])  # type: ignore[arg-type]
    init = archs.build(cfg).init(32, 128, torch.Generator().manual_seed(0))
    metrics = run_from_cache(cfg, tmp_path)
    sae, loaded = load_sae(tmp_path)
    assert loaded == cfg
    truth = cache.true_dictionary()
    assert truth is not None
    cos = truth @ torch.nn.functional.normalize(sae.W_dec.detach(), dim=1).T
    assert cos.max(dim=1).values.mean().item() >= 0.9
    assert 2.0 < metrics["l0"] < 5.0
    if arch_name == "jumprelu":  # the thresholds learn (frozen, they would stay at 0.001)
        moved = sae.get_parameter("threshold") - init.get_parameter("threshold")
        assert moved.abs().mean() > 0.05
    if arch_name in ("batchtopk", "matryoshka_batchtopk"):  # saved for inference
        assert sae.get_buffer("threshold").min() > 0


def test_a_frozen_threshold_fails_the_movement_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is not vacuous: with θ's gradient cut, θ stays where it started."""
    import sae_core.archs.jumprelu as jumprelu

    sae = _sae("jumprelu").float()
    before = sae.get_parameter("threshold").detach().clone()
    real = jumprelu._Jump.apply
    monkeypatch.setattr(jumprelu._Jump, "apply", lambda z, t, e: real(z, t.detach(), e))
    monkeypatch.setattr(jumprelu._Step, "apply", lambda z, t, e: (z > t).to(z.dtype))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(B, D)
    for step in range(20):
        sae.arch.gradients(sae, x, StepContext(step + 100, torch.zeros(F, dtype=torch.bool), None))
        opt.step()
    assert torch.equal(sae.get_parameter("threshold"), before)


def test_unit_norm_decoder_stays_unit_norm() -> None:
    w = torch.nn.Parameter(unit_norm.random_rows(5, 3, 1.0, torch.Generator().manual_seed(0)))
    w.grad = torch.randn(5, 3)
    unit_norm.remove_parallel_gradient(w)
    assert (w.grad * w).sum(1).abs().max() < 1e-6  # no component along the rows
    with torch.no_grad():
        w.mul_(3.0)
    unit_norm.renormalise(w)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(5))


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("arch_name", list(PLANTED_RECIPES))
def test_each_architecture_resumes_from_its_checkpoint_to_the_same_run(
        arch_name: str, planted: Path, tmp_path: Path) -> None:
    """Stopped after a checkpoint and trained again: the same weights as a straight run
    (every parameter and buffer, the batch ones' threshold too, is in the checkpoint)."""
    cfg = RunConfig(cache_dir=str(planted), d_in=32, n_features=64, n_steps=60,
                    batch_size_tokens=256, num_threads=1, arch=arch_name,
                    checkpoint_every_steps=20, eval_every_steps=10,
                    **PLANTED_RECIPES[arch_name])  # type: ignore[arg-type]
    run_from_cache(cfg, tmp_path / "straight")

    class StopAt40:
        def log(self, metrics: dict[str, float], step: int) -> None:
            if step == 50:  # after the checkpoint at 40
                raise _Interrupt

    class Steps:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def log(self, metrics: dict[str, float], step: int) -> None:
            self.seen.append(step)

    with pytest.raises(_Interrupt):
        run_from_cache(cfg, tmp_path / "stopped", logger=StopAt40())
    resumed = Steps()
    run_from_cache(cfg, tmp_path / "stopped", logger=resumed)
    assert resumed.seen[0] == 50  # it went on from step 40, not from 0
    a, _ = load_sae(tmp_path / "straight")
    b, _ = load_sae(tmp_path / "stopped")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
