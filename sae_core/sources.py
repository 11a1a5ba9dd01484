"""One entry point to build a cache from a plain dict: what `monoscale cache` uses (a sweep
spec's `cache: {build: ...}` goes through sweeps/cache_setup.py). Keys are its flags:

    {"synthetic": {"d_in": 32, "n_true_features": 64, "l0": 4}, "n_tokens": 200000}
    {"npy": "acts.npy"}                     (also .safetensors; "tensor", "n_tokens", "dtype")
    {"model": "minilm", "layer": 3, "corpus": "stdlib", "n_tokens": 1000000}

The heavy source modules (transformers) are imported only for the source asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_core.cache import ActivationCache
from sae_core.errors import UserError

_COMMON = {"n_tokens", "dtype"}
_KEYS = {
    "synthetic": _COMMON,
    "npy": _COMMON | {"tensor"},
    "model": _COMMON | {"layer", "corpus", "context_tokens", "batch_contexts", "device"},
}


def build_from_spec(out_dir: str | Path, spec: dict[str, Any]) -> ActivationCache:
    """Build (or reuse) the cache at `out_dir` that `spec` describes."""
    kinds = [k for k in _KEYS if k in spec]
    if len(kinds) != 1:
        raise UserError(f"a cache build names exactly one source of {sorted(_KEYS)}, got "
                        f"{sorted(spec)}")
    kind = kinds[0]
    unknown = sorted(set(spec) - _KEYS[kind] - {kind})
    if unknown:
        raise UserError(f"unknown key(s) in a {kind} cache build: {', '.join(unknown)}")
    n_tokens = None if spec.get("n_tokens") is None else _positive_int(spec["n_tokens"],
                                                                        "n_tokens")
    if kind == "npy":
        from sae_core.array_files import build_array_cache

        return build_array_cache(out_dir, spec["npy"], spec.get("tensor"), n_tokens,
                                 spec.get("dtype"))
    if n_tokens is None:
        raise UserError(f"a {kind} cache build needs n_tokens")
    if kind == "synthetic":
        from sae_core.synthetic import PlantedDictionary, build_synthetic_cache

        params = spec["synthetic"] or {}
        try:
            planted = PlantedDictionary(**params)
        except TypeError as err:
            raise UserError(f"synthetic cache: {err}") from None
        return build_synthetic_cache(out_dir, planted, n_tokens, spec.get("dtype") or "float32")
    from sae_core.activations import build_model_cache

    options = {k: spec[k] for k in ("layer", "corpus", "context_tokens", "batch_contexts",
                                    "device") if spec.get(k) is not None}
    return build_model_cache(out_dir, spec["model"] or "minilm", n_tokens=n_tokens,
                             dtype=spec.get("dtype") or "float16", **options)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1e6 in YAML
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value
