"""Does SAELens load what monoscale saves, and encode raw activations as we do? One JSON line.

    python bench/saelens_layout.py [--cache caches/minilm] [--n-steps 200]

Trains one SAE of each architecture on the cache (F=1024), saves it as every run is saved
(sae_core/sae_files.py), has SAELens 6.54 in its own virtualenv load each directory with
`SAE.load_from_disk` (bench/_saelens_load.py) and encode and decode the cache's held-out
activations in raw model units, and compares with monoscale's own encode of the same rows
(scaled by norm_scale, as in training) and its reconstruction (unscaled). Reported per
architecture: the class SAELens chose, the largest absolute difference of the features
and of the reconstructions, the largest activation, and whether the active sets agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _saelens_client import SAELENS_PYTHON
from safetensors.torch import load_file, save_file

from sae_core.cache import ActivationCache
from sae_core.config import RunConfig
from sae_core.run import run_from_cache
from sae_core.sae_files import load_sae

ARCHS = {"relu": {}, "topk": {"k": 32}, "batchtopk": {"k": 32},
         "matryoshka_batchtopk": {"k": 32}, "jumprelu": {"target_l0": 32.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="caches/minilm")
    parser.add_argument("--n-features", type=int, default=1024)
    parser.add_argument("--n-steps", type=int, default=200)
    parser.add_argument("--n-tokens", type=int, default=2048, help="held-out rows compared")
    args = parser.parse_args()
    started = time.perf_counter()
    cache = ActivationCache.open(args.cache)
    x_norm = cache.eval_tokens(args.n_tokens)
    x_raw = x_norm / cache.norm_scale
    report: dict[str, object] = {"bench": "saelens_layout", "cache": str(cache.path),
                                 "d_in": cache.d_in, "norm_scale": cache.norm_scale,
                                 "n_tokens": x_raw.shape[0]}
    with tempfile.TemporaryDirectory(prefix="monoscale-layout-") as tmp:
        runs = {}
        for arch, settings in ARCHS.items():
            cfg = RunConfig(cache_dir=str(cache.path), d_in=cache.d_in,
                            n_features=args.n_features, n_steps=args.n_steps,
                            batch_size_tokens=1024, arch=arch, lr=1e-3, **settings)
            print(f"training {arch}", file=sys.stderr, flush=True)
            run_from_cache(cfg, Path(tmp) / arch)
            runs[arch] = Path(tmp) / arch
        acts = Path(tmp) / "acts.safetensors"
        save_file({"x": x_raw.contiguous()}, str(acts))
        out = subprocess.run([str(SAELENS_PYTHON), str(Path(__file__).with_name(
            "_saelens_load.py")), str(acts), *map(str, runs.values())],
            capture_output=True, text=True, check=True)
        theirs = json.loads(out.stdout.strip().splitlines()[-1])
        report["sae_lens"] = theirs.pop("sae_lens")
        for arch, run_dir in runs.items():
            got = theirs[str(run_dir)]
            if "error" in got:
                report[arch] = got
                continue
            loaded = load_file(str(run_dir / "saelens_out.safetensors"))
            ours, _ = load_sae(run_dir)  # raw units, as saved
            with torch.no_grad():
                f_train = ours.arch.encode(_trained(run_dir), x_norm)  # the trained SAE
                f_ours = ours.encode(x_raw)
                x_hat_ours = ours.decode(f_ours)
            report[arch] = {
                **got,
                "max_abs_diff_features": float((loaded["f"] - f_train).abs().max()),
                "max_abs_diff_features_raw_encode": float((loaded["f"] - f_ours).abs().max()),
                "max_abs_diff_reconstruction": float((loaded["x_hat"] - x_hat_ours).abs().max()),
                "max_activation": float(f_train.abs().max()),
                "max_abs_raw_activation_input": float(x_raw.abs().max()),
                "same_active_set": bool(torch.equal(loaded["f"] > 0, f_train > 0)),
                "l0": float((f_train > 0).sum(1).float().mean()),
            }
    report["all_load"] = all("error" not in report[a] for a in ARCHS)  # type: ignore[operator]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


def _trained(run_dir: Path):  # type: ignore[no-untyped-def]
    """The SAE as training left it, in normalised units: the saved one, unfolded."""
    sae, _ = load_sae(run_dir)
    scale = json.loads((run_dir / "cfg.json").read_text())["monoscale"]["norm_scale"]
    with torch.no_grad():
        sae.W_enc.div_(scale)
        sae.W_dec.mul_(scale)
        sae.b_dec.mul_(scale)
    return sae


if __name__ == "__main__":
    main()
