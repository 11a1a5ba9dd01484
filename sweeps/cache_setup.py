"""The sweep's activation cache: built from `cache.build` when missing, then verified.

    cache: {path: caches/smoke, build: {synthetic: {d_in: 64, n_true_features: 256,
                                                     n_tokens: 200000}}}
    cache: {path: ../caches/minilm, build: {model: {model: minilm, corpus: stdlib,
                                                     n_tokens: 2500000}}}

`synthetic:` takes sae_core.synthetic.PlantedDictionary's fields plus n_tokens and dtype;
`model:` takes sae_core.activations.build_model_cache's arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Mapping
from typing import Any

from sae_core.cache import ActivationCache
from sweeps.spec import SweepSpec
from sweeps.spec_values import SpecError, check_keys, check_mapping

# Caches this process has checksummed whole: (path, meta.json's mtime). A driver that
# submits several sweeps on one cache (adaptive rounds, the demo's stages) checks it once:
# 4.6 s for the demo's 1.8 GB MiniLM cache, measured here.
_CHECKSUMMED: set[tuple[str, int]] = set()


def prepare_cache(spec: SweepSpec, build: bool = True, verify: str = "full"
                  ) -> ActivationCache:
    """Open the spec's cache with a full checksum (once per driver process; trials then
    check sizes only), building it first when it is missing and the spec says how."""
    path = spec.cache.path
    if not (path / "meta.json").exists():
        if spec.cache.build is None:
            raise SpecError(f"cache.path: no activation cache at {path}, and the spec has no "
                            "cache.build to make one (build it with `monoscale cache`)")
        if not build:
            raise SpecError(f"cache.path: no activation cache at {path} yet (submit builds it)")
        print(f"[{spec.name}] building the activation cache at {path}", file=sys.stderr)
        _build(spec.cache.build, spec)
    key = (str(path.resolve()), (path / "meta.json").stat().st_mtime_ns)
    if verify == "full" and key in _CHECKSUMMED:
        verify = "size"
    cache = ActivationCache.open(path, verify=verify)
    if verify == "full":
        _CHECKSUMMED.add(key)
    return cache


def planned_d_in(spec: SweepSpec) -> int:
    """d_in without building anything (for --dry-run): from the cache's meta.json, else
    from the build instructions."""
    from sae_core.cache import read_meta

    if (spec.cache.path / "meta.json").exists():
        return int(read_meta(spec.cache.path)["d_in"])
    if spec.cache.build:
        kind, params = _build_source(spec.cache.build)
        if kind == "synthetic":
            from sae_core.synthetic import PlantedDictionary

            return int(params.get("d_in", PlantedDictionary.d_in))
        from sae_core.activations import model_d_in

        return int(model_d_in(params.get("model", "minilm")))
    raise SpecError(f"cache.path: no activation cache at {spec.cache.path} yet, so its d_in "
                    "is unknown: build it first (`monoscale submit` or `monoscale cache`)")


def _build_source(build: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """cache.build's one source (synthetic or model) and its parameters, shape-checked."""
    check_keys(build, "cache.build.", ("synthetic", "model"))
    if len(build) != 1:
        raise SpecError("cache.build: give exactly one of synthetic, model")
    (kind, params), = build.items()
    check_mapping(params, f"cache.build.{kind}")
    return kind, params


def _build(build: Mapping[str, Any], spec: SweepSpec) -> None:
    kind, params = _build_source(build)
    if kind == "synthetic":
        from sae_core.synthetic import PlantedDictionary, build_synthetic_cache

        known = [f.name for f in dataclasses.fields(PlantedDictionary)] + ["n_tokens", "dtype"]
        check_keys(params, "cache.build.synthetic.", known, required=("n_tokens",))
        kwargs = dict(params)
        n_tokens, dtype = kwargs.pop("n_tokens"), kwargs.pop("dtype", "float32")
        build_synthetic_cache(spec.cache.path, PlantedDictionary(**kwargs), n_tokens, dtype)
    else:
        from sae_core.activations import build_model_cache

        known = [p for p in inspect.signature(build_model_cache).parameters if p != "out_dir"]
        check_keys(params, "cache.build.model.", known)
        build_model_cache(spec.cache.path, **params)
