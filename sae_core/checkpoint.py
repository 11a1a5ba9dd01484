"""Trainer state on disk: the weights, Adam's state, the step and the dead-feature
counters (the finished SAE: sae_core/sae_files.py).

A checkpoint is a directory written whole or not at all (written beside, then renamed),
so a run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from sae_core.errors import UserError
from sae_core.model import SAE

_STATE = "trainer_state.pt"
_WEIGHTS = "sae.safetensors"


class TrainerState(NamedTuple):
    step: int  # steps completed
    tokens_since_fired: torch.Tensor  # [F] int64


class CheckpointMismatch(UserError):
    """A checkpoint that another run wrote: resuming from it would train something else."""


def exists(directory: Path) -> bool:
    """A complete checkpoint at `directory`; one that a kill mid-save left as `.old`
    (between its two renames) is put back first."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not _complete(directory) and _complete(old):
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(old, directory)
    return _complete(directory)


def _complete(directory: Path) -> bool:
    return (directory / _STATE).is_file() and (directory / _WEIGHTS).is_file()


def save(
    directory: Path,
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    step: int,
    tokens_since_fired: torch.Tensor,
    resume_key: str,
) -> None:
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(tmp / _WEIGHTS, sae)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "tokens_since_fired": tokens_since_fired.cpu(),
            "resume_key": resume_key,
        },
        tmp / _STATE,
    )
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load(
    directory: Path,
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    resume_key: str,
    map_location: torch.device | str = "cpu",
) -> TrainerState:
    """Restore sae and optimizer in place; return the step and dead-feature counters.
    Raises CheckpointMismatch when the checkpoint is another run's (resume_key differs)."""
    state = torch.load(Path(directory) / _STATE, map_location=map_location, weights_only=True)
    if state.get("resume_key", resume_key) != resume_key:  # older checkpoints have none
        raise CheckpointMismatch(
            f"{directory} holds a checkpoint of another run (resume key {state['resume_key']}, "
            f"this run's {resume_key}): remove it, or train into another directory")
    load_weights(Path(directory) / _WEIGHTS, sae)
    optimizer.load_state_dict(state["optimizer"])
    return TrainerState(int(state["step"]), state["tokens_since_fired"])


def save_weights(path: Path, sae: SAE) -> None:
    """Every parameter and buffer of the SAE (its threshold too), fp32, in the normalised
    space the trainer works in."""
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in sae.state_dict().items()}
    save_file(tensors, str(path))


def load_weights(path: Path, sae: SAE) -> None:
    sae.load_state_dict(load_file(str(path)))
