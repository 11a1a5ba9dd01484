"""Branched step schedules (issue 5): grouping, compute, and a fork that reproduces an
independent run, on the small synthetic cache."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_core.branching import (
    branched_compute_flops,
    families,
    independent_compute_flops,
    with_shared_warmup,
)
from sae_core.config import RunConfig
from sae_core.run import run_from_cache


def _cfg(cache: Path | str, **overrides: object) -> RunConfig:
    base = dict(cache_dir=str(cache), d_in=32, n_features=64, n_steps=200, lr=3e-3,
                batch_size_tokens=256, eval_n_tokens=4080, num_threads=1)
    return RunConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_grid_groups_into_families_with_the_issue_compute_fraction() -> None:
    grid = [_cfg("c", n_features=f, n_steps=s) for f in (64, 128) for s in (250, 500, 1000, 2000)]
    fams = families(grid)
    assert len(fams) == 2
    for fam in fams:
        assert fam.trunk.n_steps == 2000
        assert [(b.cfg.n_steps, b.fork_step) for b in fam.branches] == [
            (250, 200), (500, 400), (1000, 800)]
        # the shortest member's λ warm-up, round(0.05 * 250) = 12, on every member
        assert {m.l1_warmup_steps for m in fam.members} == {12}
        # trunk 2000 steps + decays 50 + 100 + 200, against 3750 steps independently
        fraction = branched_compute_flops(fam) / independent_compute_flops(fam)
        assert fraction == pytest.approx((2000 + 0.2 * (250 + 500 + 1000)) / 3750)
        assert fraction == pytest.approx(0.6267, abs=1e-4)
    members = with_shared_warmup(grid)
    assert [(m.n_features, m.n_steps) for m in members] == [(c.n_features, c.n_steps)
                                                            for c in grid]
    assert {m.run_key for m in members}.isdisjoint({c.run_key for c in grid})
    assert with_shared_warmup(members) == members  # idempotent: a re-submit finds them
    alone = _cfg("c", n_steps=300, lr=1e-3)  # no sibling: its own paper schedule
    (single,) = families([alone])
    assert single.trunk == alone and single.branches == ()


def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "sae.safetensors"))


def test_forked_branch_reproduces_an_independent_run(tmp_path: Path,
                                                     synthetic_cache: Path) -> None:
    (trunk_fam,) = families([_cfg(synthetic_cache, n_steps=n) for n in (60, 150)])
    trunk, (branch,) = trunk_fam.trunk, trunk_fam.branches
    assert branch.fork_step == 48 and trunk.l1_warmup_steps == 3

    def fork(path: Path, step: int) -> None:
        assert step == branch.fork_step
        shutil.copytree(path, tmp_path / "branch" / "checkpoint")

    run_from_cache(trunk, tmp_path / "trunk", fork_steps={branch.fork_step}, on_fork=fork)
    forked = run_from_cache(branch.cfg, tmp_path / "branch")
    independent = run_from_cache(branch.cfg, tmp_path / "independent")
    assert forked["loss"] == pytest.approx(independent["loss"], rel=1e-6)
    got, want = _weights(tmp_path / "branch"), _weights(tmp_path / "independent")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7)
    # the trunk itself ran on past the fork to its own, lower, loss
    trunk_loss = run_from_cache(trunk, tmp_path / "trunk")["loss"]  # finished: no retraining
    assert trunk_loss < forked["loss"]


def test_branched_and_paper_schedules_agree_within_seed_noise(tmp_path: Path,
                                                              synthetic_cache: Path) -> None:
    """The longest member of a {20, 200}-step family warms λ up over 1 step instead of
    the paper's 10: its final loss moves by less than the spread over 3 seeds."""
    (fam,) = families([_cfg(synthetic_cache, n_steps=n) for n in (20, 200)])
    losses: dict[str, list[float]] = {"paper": [], "branched": []}
    for seed in (0, 1, 2):
        for name, cfg in (("paper", _cfg(synthetic_cache, seed=seed)),
                          ("branched", fam.trunk.replace(seed=seed))):
            losses[name].append(run_from_cache(cfg, tmp_path / f"{name}{seed}")["loss"])
    spread = max(losses["paper"]) - min(losses["paper"])
    gap = abs(statistics.mean(losses["branched"]) - statistics.mean(losses["paper"]))
    print(f"paper {losses['paper']}, branched {losses['branched']}, "
          f"seed spread {spread:.4g}, mean gap {gap:.4g}")
    assert fam.trunk.warmup_steps == 1 and _cfg(synthetic_cache).warmup_steps == 10
    assert spread > 0 and gap < spread
