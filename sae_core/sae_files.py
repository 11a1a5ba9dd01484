"""The finished SAE on disk, in the layout SAELens reads (`sae_lens.SAE.load_from_disk`;
docs/METHOD.md §5.8; checked by bench/saelens_layout.py):

    RUN_DIR/sae_weights.safetensors  W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], and
                                     threshold [F] for jumprelu and the batch TopK ones
                                     (which SAELens saves as JumpReLU SAEs)
    RUN_DIR/cfg.json                 SAELens's fields (architecture, d_in, d_sae, dtype,
                                     device, apply_b_dec_to_input, normalize_activations,
                                     reshape_activations, k for topk, metadata) and ours
                                     under "monoscale": the RunConfig and norm_scale

The weights are in raw model units: training runs on activations scaled by the cache's
norm_scale s (E‖s x‖² = d), and s is folded in here (W_enc·s, W_dec/s, b_dec/s; b_enc and
thresholds act on pre-activations, which do not change), as SAELens's own trainer folds
its scale. Raw activations go in, the same features and a raw reconstruction come out.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae_core import archs
from sae_core.config import RunConfig
from sae_core.errors import UserError
from sae_core.model import SAE

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
# The cfg.json format: SAELens treats a cfg.json without this version as pre-6.0 and
# converts it (where a null hook_name raised TypeError, docs/METHOD.md §5.8).
SAELENS_FORMAT = "6.0.0"


def fold_scale(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Weights trained on x·scale, for x itself (fp32, contiguous, on the CPU)."""
    factor = {"W_enc": scale, "W_dec": 1 / scale, "b_dec": 1 / scale}
    return {name: (t.detach().float().cpu() * factor.get(name, 1.0)).contiguous()
            for name, t in state.items()}


def hook_name(source: dict[str, Any]) -> str | None:
    """TransformerLens's name for what the cache holds: hidden_states[L] is the output of
    block L-1, `blocks.{L-1}.hook_resid_post`."""
    layer = source.get("layer")
    return f"blocks.{layer - 1}.hook_resid_post" if isinstance(layer, int) else None


def save_sae(run_dir: Path, sae: SAE, cfg: RunConfig, norm_scale: float,
             source: dict[str, Any]) -> None:
    """sae_weights.safetensors and cfg.json, each written beside and renamed into place."""
    run_dir = Path(run_dir)
    weights = run_dir / WEIGHTS_FILE
    save_file(fold_scale(sae.state_dict(), norm_scale), str(weights) + ".tmp")
    os.replace(str(weights) + ".tmp", weights)
    write_json(run_dir / CFG_FILE, {
        **sae.arch.saelens_config(),
        "d_in": cfg.d_in, "d_sae": cfg.n_features, "dtype": "float32", "device": "cpu",
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT, "model_name": source.get("model"),
                     "hook_name": hook_name(source), "hook_layer": source.get("layer"),
                     "trained_with": "monoscale"},
        "monoscale": {"run_config": cfg.to_dict(), "norm_scale": norm_scale},
    })


def load_sae(run_dir: str | Path) -> tuple[SAE, RunConfig]:
    """A finished run's SAE, in raw model units, and its RunConfig. Also reads the layout
    of runs from before the SAELens one (`load_legacy`)."""
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS_FILE).exists() and (run_dir / LEGACY_WEIGHTS_FILE).exists():
        return load_legacy(run_dir)
    try:
        saved = read_cfg(run_dir)
        cfg = RunConfig.from_dict(saved["monoscale"]["run_config"])
        state = load_file(str(run_dir / WEIGHTS_FILE))
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{run_dir} holds no finished monoscale SAE ({CFG_FILE} and "
                        f"{WEIGHTS_FILE}): {err}") from None
    return _built(cfg, state), cfg


# Runs saved before the SAELens layout: sae.safetensors held the weights in the normalised
# space, and cfg.json the RunConfig's fields at its top level beside norm_scale and a few
# of SAELens's fields (model_name, hook_layer).
LEGACY_WEIGHTS_FILE = "sae.safetensors"


def load_legacy(run_dir: Path) -> tuple[SAE, RunConfig]:
    """An old-layout run's SAE, the scale folded in as save_sae folds it."""
    try:
        saved = read_cfg(run_dir)
        known = {f.name for f in fields(RunConfig)}
        cfg = RunConfig.from_dict({k: v for k, v in saved.items() if k in known})
        state = fold_scale(load_file(str(run_dir / LEGACY_WEIGHTS_FILE)),
                           float(saved["norm_scale"]))
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{run_dir} holds no finished monoscale SAE ({CFG_FILE} and "
                        f"{LEGACY_WEIGHTS_FILE}, the layout before SAELens's): {err}") from None
    return _built(cfg, state), cfg


def read_cfg(run_dir: Path) -> dict[str, Any]:
    """cfg.json of a run, either layout."""
    try:
        saved = json.loads((Path(run_dir) / CFG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{run_dir} holds no finished monoscale SAE: {err}") from None
    if not isinstance(saved, dict):
        raise UserError(f"{run_dir}/{CFG_FILE} is not a JSON object")
    return saved


def trained_on(saved: dict[str, Any]) -> tuple[str | None, int | None]:
    """(model, layer) a run's cfg.json names, either layout."""
    where = saved.get("metadata") if "monoscale" in saved else saved
    where = where if isinstance(where, dict) else {}
    return where.get("model_name"), where.get("hook_layer")


def _built(cfg: RunConfig, state: dict[str, torch.Tensor]) -> SAE:
    sae = archs.build(cfg).init(cfg.d_in, cfg.n_features, torch.Generator())
    sae.load_state_dict(state)
    return sae


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
