"""The trainer on planted data: features recovered, schedules, checkpoints, resume, NaN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_core import checkpoint
from sae_core.archs.relu import ReLU
from sae_core.cache import ActivationCache
from sae_core.config import RunConfig
from sae_core.run import run_from_cache
from sae_core.schedule import lr_factor, warmup_factor
from sae_core.synthetic import PlantedDictionary, build_synthetic_cache
from sae_core.trainer import DivergedError, train

PLANTED = PlantedDictionary(d_in=32, n_true_features=64, l0=3.0, zipf_exponent=0.5,
                            noise_std=0.01, seed=0)


@pytest.fixture(scope="module")
def planted_cache(tmp_path_factory: pytest.TempPathFactory) -> ActivationCache:
    torch.set_num_threads(1)  # tiny shapes: one thread is fastest and immune to busy cores
    return build_synthetic_cache(tmp_path_factory.mktemp("planted") / "cache", PLANTED, 300_000)


def _cfg(cache: ActivationCache, **overrides: object) -> RunConfig:
    base = dict(cache_dir=str(cache.path), d_in=cache.d_in, n_features=128, n_steps=1500,
                lr=3e-3, batch_size_tokens=1024, num_threads=1)
    return RunConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_planted_features_recovered_at_planted_l0(
    planted_cache: ActivationCache, tmp_path: Path
) -> None:
    """The paper's recipe (λ = 5, its schedules and init) finds the planted dictionary."""
    metrics = run_from_cache(_cfg(planted_cache), tmp_path)
    W_dec = load_file(str(tmp_path / "sae_weights.safetensors"))["W_dec"]  # [F, d]
    truth = planted_cache.true_dictionary()  # [n_true, d], unit rows
    cos = truth @ torch.nn.functional.normalize(W_dec, dim=1).T
    recovery = cos.max(dim=1).values.mean().item()
    assert recovery >= 0.9, recovery
    planted_l0 = planted_cache.meta["source"]["measured_l0"]
    assert abs(metrics["l0"] - planted_l0) < 1.0, (metrics["l0"], planted_l0)
    assert metrics["dead_fraction"] < 0.5
    cfg_json = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg_json["monoscale"]["norm_scale"] == pytest.approx(planted_cache.norm_scale)
    assert cfg_json["d_sae"] == 128 and not (tmp_path / "checkpoint").exists()


def test_schedules_have_the_papers_shape() -> None:
    cfg = RunConfig(cache_dir="-", d_in=8, n_features=8, n_steps=1000)
    lam = [warmup_factor(s, cfg.warmup_steps) for s in range(cfg.n_steps)]
    lr = [lr_factor(s, cfg.n_steps, cfg.decay_start_step) for s in range(cfg.n_steps)]
    assert cfg.warmup_steps == 50 and cfg.decay_start_step == 800
    assert lam[0] == 0.0 and lam[25] == pytest.approx(0.5) and min(lam[50:]) == 1.0
    assert all(b > a for a, b in zip(lam[:50], lam[1:51], strict=True))  # linear rise
    assert lr[:800] == [1.0] * 800
    steps = [lr[s] - lr[s + 1] for s in range(800, 999)]
    assert max(steps) == pytest.approx(min(steps))  # linear decay...
    assert lr[999] == pytest.approx(1 / 200)  # ...reaching 0 at step n_steps


def test_a_kill_between_the_checkpoints_two_renames_keeps_the_previous_one(
        tmp_path: Path) -> None:
    sae = ReLU(5.0, 0, 0.1).init(8, 16, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    directory = tmp_path / "ckpt"
    checkpoint.save(directory, sae, opt, 7, torch.zeros(16, dtype=torch.int64), "k")
    os.replace(directory, tmp_path / "ckpt.old")  # save() moved it aside, then was killed
    assert checkpoint.exists(directory)
    assert checkpoint.load(directory, sae, opt, "k").step == 7


def test_checkpoint_round_trips(tmp_path: Path) -> None:
    sae = ReLU(5.0, 0, 0.1).init(8, 16, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.W_enc.grad = torch.ones_like(sae.W_enc)
    opt.step()
    counters = torch.arange(16)
    checkpoint.save(tmp_path / "ckpt", sae, opt, 7, counters, resume_key="run-a")

    other = ReLU(5.0, 0, 0.1).init(8, 16, torch.Generator().manual_seed(1))
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    with pytest.raises(checkpoint.CheckpointMismatch, match="another run"):
        checkpoint.load(tmp_path / "ckpt", other, other_opt, resume_key="run-b")
    assert not torch.equal(other.W_enc, sae.W_enc)  # a refused checkpoint changes nothing
    state = checkpoint.load(tmp_path / "ckpt", other, other_opt, resume_key="run-a")
    assert state.step == 7 and torch.equal(state.tokens_since_fired, counters)
    for a, b in zip(sae.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], exp_avg)


_CHILD = """
import sys, time
from pathlib import Path
from sae_core.config import RunConfig
from sae_core.run import run_from_cache
class Slow:
    def log(self, metrics, step):
        time.sleep(0.05)
cfg = RunConfig.from_json(Path(sys.argv[1]).read_text())
run_from_cache(cfg, Path(sys.argv[2]), logger=Slow())
"""


def test_run_killed_with_sigkill_resumes_to_the_same_result(
    planted_cache: ActivationCache, tmp_path: Path
) -> None:
    cfg = _cfg(planted_cache, n_steps=300, checkpoint_every_steps=20, eval_every_steps=1)
    reference = run_from_cache(cfg, tmp_path / "straight")

    (tmp_path / "cfg.json").write_text(cfg.to_json())
    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "cfg.json"), str(killed)])
    deadline = time.monotonic() + 60
    while not checkpoint.exists(killed / "checkpoint") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.6)  # let it run past its checkpoint, mid-way between two
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (killed / "sae_weights.safetensors").exists(), "the child finished before the kill"
    resumed_from = torch.load(killed / "checkpoint" / "trainer_state.pt")["step"]
    assert 0 < resumed_from < cfg.n_steps

    with pytest.raises(checkpoint.CheckpointMismatch):  # another lr: not this checkpoint's run
        run_from_cache(cfg.replace(lr=cfg.lr * 2), killed)

    class FirstStep:
        first: int | None = None

        def log(self, metrics: dict[str, float], step: int) -> None:
            self.first = step if self.first is None else self.first

    logger = FirstStep()
    resumed = run_from_cache(cfg, killed, logger=logger)
    assert logger.first == resumed_from + 1  # it went on from the checkpoint, not from 0
    assert resumed["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert resumed["dead_fraction"] == reference["dead_fraction"]
    a = load_file(str(tmp_path / "straight" / "sae_weights.safetensors"))
    b = load_file(str(killed / "sae_weights.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    planted_cache: ActivationCache, tmp_path: Path
) -> None:
    cfg = _cfg(planted_cache, n_steps=100, checkpoint_every_steps=10)

    def poisoned_at(bad_step: int):
        def batches(start_step: int):
            good = planted_cache.train_batches(cfg.batch_size_tokens, cfg.seed, start_step)
            for step in range(start_step, cfg.n_steps):
                batch = next(good)
                yield batch * float("nan") if step == bad_step else batch
        return batches

    eval_x = planted_cache.eval_tokens(1024)
    with pytest.raises(DivergedError, match="step 5.*no checkpoint was saved"):
        train(cfg, poisoned_at(5), eval_x, checkpoint_dir=tmp_path / "early")
    with pytest.raises(DivergedError, match="step 45.*last good checkpoint kept in"):
        train(cfg, poisoned_at(45), eval_x, checkpoint_dir=tmp_path / "ckpt")
    state = torch.load(tmp_path / "ckpt" / "trainer_state.pt")
    assert state["step"] == 40
    weights = load_file(str(tmp_path / "ckpt" / "sae.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
