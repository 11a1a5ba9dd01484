"""Every check a sweep makes before anything exists: the same for `submit --dry-run`
and `submit`, so a spec the dry run accepts is one the submit starts.

What a trial uses is checked here, on the driver, against the cache (or what its
cache.build will make) and, for a local Ray, against this machine: a value that would
only fail inside a trial (after Ray started, with a FAILED MLflow run and a traceback in
Ray's log) or silently train something else is refused with the field it came from.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from sae_core.compute import training_memory_bytes
from sae_core.config import RunConfig
from sweeps import store
from sweeps.cache_setup import CacheFacts, check_cache
from sweeps.spec import SweepSpec, expand
from sweeps.spec_values import SpecError
from sweeps.store import check_store, check_writable_dir

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # sae_core/device.py's names
_INT64_MAX = 2**63 - 1  # the trainer counts tokens in int64 tensors


def preflight(spec: SweepSpec, tracking_uri: str, storage_dir: Path, address: str | None
              ) -> list[RunConfig]:
    """The grid points, after every check that starts and writes nothing: the tracking
    store and the storage folder (whole, writable), the Ray address, the cache against
    the spec, each trial's fields."""
    check_writable_dir(storage_dir, "--storage")
    store.check_tracking_uri(tracking_uri)
    check_store(tracking_uri, write=True)
    if address:
        from cluster.local import probe

        probe(address)
    facts = check_cache(spec)
    configs = expand(spec, facts.d_in)
    check_runs(spec, configs, facts, local=address is None)
    if spec.eval is not None and spec.eval.splice and (spec.cache.path / "meta.json").exists():
        from sae_core.cache import ActivationCache
        from sweeps.eval_trial import checked_source

        # a cache with no model to splice into, a model not installed: named here
        checked_source(ActivationCache.open(spec.cache.path, verify="size"))
    return configs


def check_runs(spec: SweepSpec, configs: list[RunConfig], facts: CacheFacts,
               local: bool) -> None:
    """Each grid point's fields against the cache and the resources its trial gets;
    `local`: this machine runs the trials (no --address), so it is checked too."""
    for cfg in configs:
        if cfg.batch_size_tokens > facts.n_train_tokens:
            raise SpecError(
                f"{_field(spec, 'batch_size_tokens')}: {cfg.batch_size_tokens} tokens per "
                f"batch, but the cache at {spec.cache.path} holds {facts.n_train_tokens} "
                "training rows: every batch would repeat rows")
        if cfg.n_tokens > _INT64_MAX:
            raise SpecError(f"{_field(spec, 'n_steps')}: {cfg.n_steps} steps of "
                            f"{cfg.batch_size_tokens} tokens overflow the trainer's 64-bit "
                            "token count: no such run can train")
        _check_device(spec, cfg.device)
    if local:  # then what this machine can give them
        _check_resources(spec)
        for cfg in configs:
            _check_memory(spec, cfg)


def _field(spec: SweepSpec, name: str) -> str:
    """Where a RunConfig field comes from in the spec, for messages."""
    if any(axis == name for axis, _ in spec.axes):
        return f"grid.{name}"
    if name in ("n_features", "n_steps"):
        return "isoflop" if spec.isoflop is not None else "points"
    return f"base.{name}"


def _check_device(spec: SweepSpec, device: str) -> None:
    where, gpus = _field(spec, "device"), spec.resources.gpu
    if not _DEVICE.fullmatch(device):
        raise SpecError(f"{where}: {device!r} is not a device (auto, cpu, cuda or cuda:N)")
    if device.startswith("cuda"):
        if gpus == 0:
            raise SpecError(f"{where}: {device!r} needs resources.gpu > 0: Ray gives a "
                            "trial without a GPU share no GPU")
        index = int(device.partition(":")[2] or 0)
        visible = max(1, math.ceil(gpus))  # Ray sets CUDA_VISIBLE_DEVICES per trial
        if index >= visible:
            raise SpecError(f"{where}: {device!r}, but a trial sees only the {visible} GPU(s) "
                            f"Ray gives it (resources.gpu {gpus:g}), numbered from cuda:0")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_resources(spec: SweepSpec) -> None:
    """A local Ray gets this machine's CPUs and GPUs (cluster/local.py): a trial asking
    for more would wait forever (Tune only warns every 60 s)."""
    n_cpus = os.cpu_count() or 1
    if spec.resources.cpu > n_cpus:
        raise SpecError(f"resources.cpu: {spec.resources.cpu:g} per trial, but this machine "
                        f"has {n_cpus} CPUs: Ray would never start a trial (or join a "
                        "larger cluster with --address)")
    if spec.resources.gpu > 0 and spec.resources.gpu > (n_gpus := _local_gpus()):
        raise SpecError(f"resources.gpu: {spec.resources.gpu:g} per trial, but this machine "
                        f"has {n_gpus} GPUs: Ray would never start a trial (or join a "
                        "cluster with GPUs with --address)")


def _check_memory(spec: SweepSpec, cfg: RunConfig) -> None:
    """A run whose weights and optimizer state alone exceed the device's memory cannot
    run: refuse it rather than fail each retry of its trial on an allocation."""
    need = training_memory_bytes(cfg.d_in, cfg.n_features, cfg.batch_size_tokens)
    import torch

    from sae_core.device import memory_bytes

    if cfg.device.startswith("cuda") or (cfg.device == "auto" and spec.resources.gpu > 0):
        have = memory_bytes(torch.device("cuda:0")) * min(1.0, spec.resources.gpu)
        what = f"the GPU share a trial gets ({have / 2**30:.3g} GiB)"
    else:
        have = memory_bytes(torch.device("cpu"))
        what = f"this machine's {have / 2**30:.3g} GiB of memory"
    if need > have:
        raise SpecError(f"{_field(spec, 'n_features')}: F={cfg.n_features} at d_in="
                        f"{cfg.d_in} needs at least {need / 2**30:.3g} GiB to train (weights, "
                        f"gradients and Adam's state in fp32, one batch of activations), "
                        f"more than {what}")
