"""What a trial takes from the resources Ray gave it: torch threads, a GPU share's memory
cap, and which GPU it may ask for.

CUDA cannot run on CI's CPU machine; torch.cuda is replaced by recorders so that the
decisions (which trials cap, at what fraction; which ordinals exist) are checked here.
"""

from __future__ import annotations

import pytest
import torch

from sae_core.config import RunConfig
from sweeps.tracking import TrackingTarget
from sweeps.trial import TrialContext, with_trial_resources

TARGET = TrackingTarget(uri="sqlite:///unused.db", experiment_id="0", parent_run_id="p",
                        sweep="s", stage=1)


def context(cpus: float, gpus: float) -> TrialContext:
    return TrialContext(target=TARGET, configs={}, runs_dir="unused", cpus_per_trial=cpus,
                        gpus_per_trial=gpus)


def config(num_threads: int) -> RunConfig:
    return RunConfig(cache_dir="unused", d_in=8, n_features=16, n_steps=10,
                     num_threads=num_threads)


@pytest.mark.parametrize(("threads", "cpus", "expected"), [(0, 1, 1), (0, 3, 3), (0, 2.5, 2),
                                                          (0, 0.5, 1), (4, 1, 4)])
def test_threads_follow_the_cpus_ray_gave_unless_set(threads: int, cpus: float,
                                                      expected: int) -> None:
    assert with_trial_resources(config(threads), context(cpus, 0)).num_threads == expected


@pytest.mark.parametrize(("gpus", "cuda", "capped_at"), [(0.25, True, 0.25), (0.5, True, 0.5),
                                                        (1.0, True, None), (0.0, True, None),
                                                        (0.25, False, None)])
def test_a_gpu_share_caps_the_trials_gpu_memory(monkeypatch: pytest.MonkeyPatch, gpus: float,
                                                cuda: bool, capped_at: float | None) -> None:
    calls: list[float] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: calls.append(fraction))
    with_trial_resources(config(1), context(1, gpus))
    assert calls == ([] if capped_at is None else [capped_at])


def test_a_cuda_ordinal_beyond_the_gpus_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_core.device import resolve_device
    from sae_core.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="'cuda:7' asked for, but torch sees 1 CUDA device"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
