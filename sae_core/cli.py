"""`monoscale cache` and `monoscale train` (registered by sweeps/cli.py).

Heavy modules (torch, transformers) are imported inside the handlers. Every check on the
input runs before any compute; a failed one raises UserError (exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from sae_core.errors import UserError

DTYPES = ("float16", "bfloat16", "float32")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    cache = subparsers.add_parser(
        "cache", help="build an activation cache (model, synthetic or .npy/.safetensors)",
        description="Build an activation cache. Source: --model (default: minilm over the "
        "stdlib corpus), --synthetic (a planted dictionary) or --npy FILE.")
    source = cache.add_mutually_exclusive_group()
    source.add_argument("--model", help="minilm | smollm2 | local path | hub id | FILE.gguf")
    source.add_argument("--synthetic", action="store_true", help="a planted dictionary")
    source.add_argument("--npy", metavar="FILE", help="activations [n, d] (.npy/.safetensors)")
    cache.add_argument("--out", required=True, metavar="DIR")
    cache.add_argument("--n-tokens", type=int, help="rows to cache (required but for --npy)")
    cache.add_argument("--dtype", choices=DTYPES, help="storage dtype (default: float16 for "
                       "models, float32 for synthetic, the file's for --npy)")
    model = cache.add_argument_group("--model options")
    model.add_argument("--layer", type=int, help="hidden_states index (default: the middle)")
    model.add_argument("--corpus", help="stdlib (default) | text file/dir/glob | HF dataset id")
    model.add_argument("--context-tokens", type=int, help="tokens per context (128)")
    model.add_argument("--batch-contexts", type=int, help="contexts per forward pass (32)")
    model.add_argument("--device", help="auto | cpu | cuda (default: cpu)")
    synthetic = cache.add_argument_group("--synthetic options")
    synthetic.add_argument("--d-in", type=int, default=64)
    synthetic.add_argument("--n-true-features", type=int, default=256)
    synthetic.add_argument("--l0", type=float, default=4.0, help="mean active features/token")
    synthetic.add_argument("--zipf-exponent", type=float, default=0.5)
    synthetic.add_argument("--magnitude", default="uniform",
                           help="uniform (U[0.5,1.5]) | exponential | constant")
    synthetic.add_argument("--noise-std", type=float, default=0.01)
    synthetic.add_argument("--seed", type=int, default=0)
    cache.add_argument("--tensor", help="--npy with .safetensors: the tensor's name")
    cache.set_defaults(func=_cache)

    train = subparsers.add_parser(
        "train", help="train one SAE from a cache; prints its final metrics as one JSON line",
        description="Train one SAE. RUN.yaml holds RunConfig fields; flags override it.")
    train.add_argument("config", nargs="?", metavar="RUN.yaml")
    train.add_argument("--cache", dest="cache_dir", metavar="DIR")
    train.add_argument("--n-features", type=int)
    train.add_argument("--n-steps", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--batch-size-tokens", type=int)
    train.add_argument("--arch", help="relu (default) | topk | batchtopk | jumprelu | "
                       "matryoshka_batchtopk")
    train.add_argument("--k", type=int, help="active latents per token (the TopK family)")
    train.add_argument("--target-l0", type=float, help="jumprelu: the L0 its penalty aims at")
    train.add_argument("--l1-coefficient", type=float, help="relu: λ")
    train.add_argument("--seed", type=int)
    train.add_argument("--device")
    train.add_argument("--out", required=True, metavar="RUN_DIR")
    train.set_defaults(func=_train)


def _cache(args: argparse.Namespace) -> int:
    from sae_core.sources import build_from_spec

    spec: dict[str, Any] = {"n_tokens": args.n_tokens, "dtype": args.dtype}
    if args.synthetic:
        spec["synthetic"] = {
            "d_in": args.d_in, "n_true_features": args.n_true_features, "l0": args.l0,
            "zipf_exponent": args.zipf_exponent, "magnitude": args.magnitude,
            "noise_std": args.noise_std, "seed": args.seed}
    elif args.npy:
        spec.update(npy=args.npy, tensor=args.tensor)
    else:
        spec.update(model=args.model or "minilm", layer=args.layer, corpus=args.corpus,
                    context_tokens=args.context_tokens, batch_contexts=args.batch_contexts,
                    device=args.device)
    cache = build_from_spec(args.out, {k: v for k, v in spec.items() if v is not None})
    summary = {"cache": str(cache.path), "d_in": cache.d_in, "dtype": cache.dtype,
               "n_train_tokens": cache.n_train_tokens, "n_eval_tokens": cache.n_eval_tokens,
               "norm_scale": cache.norm_scale, **cache.meta.get("build", {})}
    if "activation_tokens_per_s" in cache.meta["source"]:
        summary["activation_tokens_per_s"] = cache.meta["source"]["activation_tokens_per_s"]
    print(json.dumps(summary))
    return 0


def _train(args: argparse.Namespace) -> int:
    from sae_core.cache import ActivationCache, CacheError
    from sae_core.config import RunConfig

    data = _read_yaml(Path(args.config)) if args.config else {}
    flags = ("cache_dir", "n_features", "n_steps", "lr", "batch_size_tokens", "arch", "k",
             "target_l0", "l1_coefficient", "seed", "device")
    data.update({k: getattr(args, k) for k in flags if getattr(args, k) is not None})
    known = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"unknown config key(s): {', '.join(unknown)} (RunConfig fields only)")
    for name, value in data.items():  # PyYAML reads 1e-3 (no dot) as a string
        if str(known[name].type).startswith("float") and isinstance(value, str):
            try:
                data[name] = float(value)
            except ValueError:
                raise UserError(f"{name} must be a number, got {value!r}") from None
    if "cache_dir" not in data:
        raise UserError("no cache: give --cache DIR or cache_dir in RUN.yaml")
    cache = ActivationCache.open(data["cache_dir"], verify="full")
    if data.setdefault("d_in", cache.d_in) != cache.d_in:
        raise CacheError(f"cache {data['cache_dir']} holds d={cache.d_in} activations, the "
                         f"config asks for d_in={data['d_in']}")
    cfg = RunConfig.from_dict(data)
    _check_fits(cfg, cache)
    _check_out(Path(args.out))

    from sae_core.run import run_from_cache

    metrics = run_from_cache(cfg, Path(args.out))
    print(json.dumps(metrics))
    return 0


def _check_fits(cfg: Any, cache: Any) -> None:
    """What the run would only find out while training: a batch larger than the cache,
    a device torch cannot use, weights that cannot fit on it."""
    from sae_core.compute import training_memory_bytes
    from sae_core.device import memory_bytes, resolve_device

    if cfg.batch_size_tokens > cache.n_train_tokens:
        raise UserError(f"batch_size_tokens: {cfg.batch_size_tokens} tokens per batch, but the "
                        f"cache at {cache.path} holds {cache.n_train_tokens} training rows: "
                        "every batch would repeat rows")
    device = resolve_device(cfg.device)
    need = training_memory_bytes(cfg.d_in, cfg.n_features, cfg.batch_size_tokens)
    if need > (have := memory_bytes(device)):
        raise UserError(f"n_features: F={cfg.n_features} at d_in={cfg.d_in} needs at least "
                        f"{need / 2**30:.3g} GiB to train, more than the {have / 2**30:.3g} GiB "
                        f"of {device}")


def _check_out(out: Path) -> None:
    """--out is a new or empty folder, or one holding an unfinished run (its checkpoint,
    which the run resumes from); never a file, a finished run or someone's files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: give a new folder for the run")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    finished = [n for n in ("sae.safetensors", "metrics.json", "cfg.json") if n in names]
    if finished:
        raise UserError(f"--out {out} holds a finished run ({', '.join(finished)}): give a new "
                        "folder, or remove it to train again")
    other = [n for n in names if not n.startswith("checkpoint")]
    if other:
        raise UserError(f"--out {out} holds files that are not a run's ({', '.join(other[:3])}"
                        f"{', ...' if len(other) > 3 else ''}): give a new or empty folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {existing} is not a folder this user can write into")


def _read_yaml(path: Path) -> dict[str, Any]:
    from sae_core.input_files import load_yaml

    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of RunConfig fields")
    return data
