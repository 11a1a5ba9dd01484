"""Trainer state on disk, and the finished SAE in the layout SAELens reads.

A checkpoint is a directory written whole or not at all (written beside, then renamed),
so a run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

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
    """W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], fp32, in the normalised space."""
    tensors = {name: p.detach().float().cpu().contiguous() for name, p in sae.named_parameters()}
    save_file(tensors, str(path))


def load_weights(path: Path, sae: SAE) -> None:
    tensors = load_file(str(path))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(tensors[name])


def sae_lens_cfg(run_cfg: dict[str, Any], architecture: str, norm_scale: float,
                 source: dict[str, Any]) -> dict:
    """cfg.json: our RunConfig plus the fields SAELens's config of `architecture` reads.

    Our weights live in the normalised space: multiply activations by `norm_scale`
    before encoding (and divide reconstructions by it).
    """
    return {
        **run_cfg,
        "architecture": architecture,
        "d_in": run_cfg["d_in"],
        "d_sae": run_cfg["n_features"],
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "norm_scale": norm_scale,
        "model_name": source.get("model"),
        "hook_name": source.get("hook_name"),
        "hook_layer": source.get("layer"),
    }


def write_json(path: Path, data: dict) -> None:
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
