"""Our side of the layout SAELens reads (sae_core/sae_files.py; SAELens itself loads these
files in bench/saelens_layout.py): file and tensor names, cfg.json's fields per
architecture, and the normalisation folded in, so raw activations give the features
that training on scaled ones learned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_core import archs
from sae_core.config import RunConfig
from sae_core.sae_files import load_sae, save_sae

D, F, SCALE = 16, 48, 2.5
SAELENS = {  # arch -> (architecture, apply_b_dec_to_input, extra tensors)
    "relu": ("standard", False, set()),
    "topk": ("topk", True, set()),
    "batchtopk": ("jumprelu", True, {"threshold"}),
    "matryoshka_batchtopk": ("jumprelu", True, {"threshold"}),
    "jumprelu": ("jumprelu", False, {"threshold"}),
}


@pytest.mark.parametrize("arch_name", list(SAELENS))
def test_saved_sae_is_in_saelens_layout_and_raw_units(arch_name: str, tmp_path: Path) -> None:
    cfg = RunConfig(cache_dir="-", d_in=D, n_features=F, n_steps=10, arch=arch_name)
    trained = archs.build(cfg).init(D, F, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for buffer in trained.buffers():  # a threshold learned in training
            buffer.fill_(0.05)
    source = {"model": "minilm", "layer": 3}
    save_sae(tmp_path, trained, cfg, SCALE, source)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    saved = json.loads((tmp_path / "cfg.json").read_text())
    architecture, b_dec_in, extra = SAELENS[arch_name]
    assert saved["architecture"] == architecture
    assert saved["apply_b_dec_to_input"] is b_dec_in
    assert (saved["d_in"], saved["d_sae"], saved["dtype"], saved["device"]) == (D, F, "float32", "cpu")
    assert saved["normalize_activations"] == "none" and saved["reshape_activations"] == "none"
    assert saved["metadata"]["sae_lens_version"] == "6.0.0"  # read without pre-6 conversion
    assert saved["metadata"]["hook_name"] == "blocks.2.hook_resid_post"  # hidden_states[3]
    assert saved["metadata"]["model_name"] == "minilm"
    assert saved["monoscale"]["norm_scale"] == SCALE
    assert RunConfig.from_dict(saved["monoscale"]["run_config"]) == cfg
    if arch_name == "topk":
        assert saved["k"] == cfg.k and saved["rescale_acts_by_decoder_norm"] is False
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    shapes = {"W_enc": (D, F), "b_enc": (F,), "W_dec": (F, D), "b_dec": (D,), "threshold": (F,)}
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_dec"} | extra
    assert all(tuple(t.shape) == shapes[n] and t.dtype == torch.float32 for n, t in tensors.items())

    loaded, loaded_cfg = load_sae(tmp_path)
    assert loaded_cfg == cfg
    x_raw = torch.randn(200, D, generator=g) * 3.0
    with torch.no_grad():
        f_trained = trained.encode(x_raw * SCALE)  # what training saw: scaled activations
        f_raw = loaded.encode(x_raw)
        torch.testing.assert_close(f_raw, f_trained, rtol=1e-5, atol=1e-5)
        assert f_raw.count_nonzero() > 0
        torch.testing.assert_close(loaded.decode(f_raw), trained.decode(f_trained) / SCALE,
                                   rtol=1e-5, atol=1e-5)


def test_load_names_what_is_missing(tmp_path: Path) -> None:
    from sae_core.errors import UserError

    with pytest.raises(UserError, match="holds no finished monoscale SAE"):
        load_sae(tmp_path)


def test_old_layout_loads_in_raw_units(tmp_path: Path) -> None:
    """Runs saved before the SAELens layout (the demo's stage-1 store): sae.safetensors in
    the normalised space, the RunConfig's fields at the top of cfg.json beside norm_scale."""
    from safetensors.torch import save_file

    from sae_core.sae_files import read_cfg, trained_on

    cfg = RunConfig(cache_dir="-", d_in=D, n_features=F, n_steps=10)
    trained = archs.build(cfg).init(D, F, torch.Generator().manual_seed(0))
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()},
              str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        **cfg.to_dict(), "architecture": "standard", "d_sae": F, "norm_scale": SCALE,
        "model_name": "minilm", "hook_layer": 3, "hook_name": None}))
    loaded, loaded_cfg = load_sae(tmp_path)
    assert loaded_cfg == cfg and loaded_cfg.run_key == cfg.run_key
    assert trained_on(read_cfg(tmp_path)) == ("minilm", 3)
    x_raw = torch.randn(100, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x_raw), trained.encode(x_raw * SCALE))
        torch.testing.assert_close(loaded(x_raw).x_hat, trained(x_raw * SCALE).x_hat / SCALE,
                                   rtol=1e-5, atol=1e-5)
