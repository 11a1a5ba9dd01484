"""The sweep's activation cache: checked against the spec, built when missing, verified.

    cache: {path: caches/smoke, build: {synthetic: {d_in: 64, n_true_features: 256,
                                                     n_tokens: 200000}}}
    cache: {path: ../caches/minilm, build: {model: {model: minilm, corpus: stdlib,
                                                     n_tokens: 2500000}}}

`synthetic:` takes sae_core.synthetic.PlantedDictionary's fields plus n_tokens and dtype;
`model:` takes sae_core.activations.build_model_cache's arguments. With `build:`, an
existing cache must be the one those settings build (its fingerprint, as `monoscale
cache` checks it): a cache built from other settings is refused, never trained on.
`check_cache` builds nothing and is what `--dry-run` and `submit` both run first.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sae_core.cache import STORAGE_DTYPES, ActivationCache, CacheError
from sae_core.cache_writer import CacheMissing, split_sizes
from sae_core.errors import UserError
from sweeps.spec import SweepSpec
from sweeps.spec_values import SpecError, check_keys, check_mapping, positive_int

# Caches this process has checksummed whole: (path, meta.json's mtime). A driver that
# submits several sweeps on one cache (adaptive rounds, the demo's stages) checks it once:
# 4.6 s for the demo's 1.8 GB MiniLM cache (docs/METHOD.md §5.1).
_CHECKSUMMED: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class CacheFacts:
    """What the trials will read: the cache's sizes, or those its cache.build will give
    (an upper bound for a model source, which may run out of text)."""

    d_in: int
    n_train_tokens: int
    n_eval_tokens: int
    exists: bool


def check_cache(spec: SweepSpec) -> CacheFacts:
    """Every check of the spec's cache that builds nothing: cache.build well formed and
    valid (the builder's own checks, up to loading a model's weights), and an existing
    cache readable (sizes) and built from exactly that cache.build."""
    path = spec.cache.path
    if spec.cache.build is None:
        if not (path / "meta.json").exists():
            raise SpecError(f"cache.path: no activation cache at {path}, and the spec has no "
                            "cache.build to make one (build it with `monoscale cache`)")
        return cache_facts(ActivationCache.open(path, verify="size"))
    try:
        return cache_facts(_build(spec, reuse_only=True))
    except CacheMissing:
        kind, params = _build_source(spec.cache.build)
        n_train, n_eval = split_sizes(params["n_tokens"])
        return CacheFacts(_planned_d_in(kind, params), n_train, n_eval, exists=False)


def prepare_cache(spec: SweepSpec, build: bool = True, verify: str = "full"
                  ) -> ActivationCache:
    """Open the spec's cache with a full checksum (once per driver process; trials then
    check sizes only), building it first when it is missing and the spec says how."""
    path = spec.cache.path
    if not check_cache(spec).exists:
        if not build:
            raise SpecError(f"cache.path: no activation cache at {path} yet (submit builds it)")
        print(f"[{spec.name}] building the activation cache at {path}", file=sys.stderr)
        _build(spec, reuse_only=False)
    key = (str(path.resolve()), (path / "meta.json").stat().st_mtime_ns)
    if verify == "full" and key in _CHECKSUMMED:
        verify = "size"
    cache = ActivationCache.open(path, verify=verify)
    if verify == "full":
        _CHECKSUMMED.add(key)
    return cache


def planned_d_in(spec: SweepSpec) -> int:
    """d_in without building anything: from the cache's meta.json, else from cache.build."""
    return check_cache(spec).d_in


def cache_facts(cache: ActivationCache) -> CacheFacts:
    """The sizes of a cache that exists."""
    return CacheFacts(cache.d_in, cache.n_train_tokens, cache.n_eval_tokens, exists=True)


def _planned_d_in(kind: str, params: Mapping[str, Any]) -> int:
    if kind == "synthetic":
        return int(params["d_in"])
    from sae_core.activations import model_d_in

    return int(model_d_in(params["model"]))


def _build_source(build: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """cache.build's one source (synthetic or model) and its parameters with the builder's
    defaults filled in, keys and shapes checked."""
    check_keys(build, "cache.build.", ("synthetic", "model"))
    if len(build) != 1:
        raise SpecError("cache.build: give exactly one of synthetic, model")
    (kind, params), = build.items()
    check_mapping(params, f"cache.build.{kind}")
    where = f"cache.build.{kind}"
    if kind == "synthetic":
        from sae_core.synthetic import PlantedDictionary

        fields = {f.name: f for f in dataclasses.fields(PlantedDictionary)}
        check_keys(params, f"{where}.", [*fields, "n_tokens", "dtype"], required=("n_tokens",))
        full: dict[str, Any] = {"dtype": "float32", **{
            name: f.default for name, f in fields.items()}, **params}
        for name, f in fields.items():  # `l0: 4` and `--l0 4.0` are one request
            if f.type == "float" and isinstance(full[name], int) \
                    and not isinstance(full[name], bool):
                full[name] = float(full[name])
    else:
        from sae_core.activations import build_model_cache

        signature = inspect.signature(build_model_cache).parameters
        known = [p for p in signature if p not in ("out_dir", "reuse_only")]
        check_keys(params, f"{where}.", known)
        full = {p: signature[p].default for p in known} | dict(params)
    full["n_tokens"] = positive_int(full["n_tokens"], f"{where}.n_tokens")
    if full["dtype"] not in STORAGE_DTYPES:
        raise SpecError(f"{where}.dtype: must be one of {', '.join(STORAGE_DTYPES)}, got "
                        f"{full['dtype']!r}")
    return kind, full


def _build(spec: SweepSpec, reuse_only: bool) -> ActivationCache:
    """Build the spec's cache (or, reuse_only, open the one its cache.build made); the
    builder's errors name the cache.build field."""
    assert spec.cache.build is not None
    kind, params = _build_source(spec.cache.build)
    try:
        if kind == "synthetic":
            from sae_core.synthetic import PlantedDictionary, build_synthetic_cache

            planted = {k: v for k, v in params.items() if k not in ("n_tokens", "dtype")}
            return build_synthetic_cache(spec.cache.path, PlantedDictionary(**planted),
                                         params["n_tokens"], params["dtype"], reuse_only)
        from sae_core.activations import build_model_cache

        return build_model_cache(spec.cache.path, **params, reuse_only=reuse_only)
    except CacheMissing:
        raise
    except CacheError as err:
        raise SpecError(f"cache.path: {err}") from None
    except UserError as err:
        raise SpecError(f"cache.build.{kind}: {err}") from None
