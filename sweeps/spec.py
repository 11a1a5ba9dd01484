"""Sweep specs: a YAML file -> a frozen `SweepSpec` -> a list of `RunConfig`s.

    name: demo                                  # names the MLflow experiment and Tune dir
    stage: 1                                    # docs/METHOD.md §2.3 (tag only)
    cache: {path: caches/minilm, build: {...}}  # path relative to this file; build optional
    base: {lr: 1e-3, batch_size_tokens: 512}    # RunConfig fields common to every point
    grid: {n_features: [256, 512], n_steps: {logspace: [250, 2000], num: 4}, seed: [0]}
    variants: [{arch: relu, l1_coefficient: 4}, {arch: topk, k: 16}]  # settings that go
                                                # together, crossed with the grid
    points: [{n_features: 1024, n_steps: 500}]  # or: explicit (F, steps) pairs
    isoflop: {compute_flops: [1e12, 4e12], n_features: [256, 1024]}  # or: steps from budgets
    search: {axis: lr, range: [1e-4, 1e-2], n_trials: 8}   # optional Optuna TPE over log lr
    resources: {cpu: 1, gpu: 0}                 # per trial; fractional GPUs pack trials
    max_concurrent_trials: 2
    max_failures: 2                             # Tune retries of a crashed trial
    log_weights: false                          # sae_weights.safetensors as an artifact
    adaptive: {max_rounds: 3, compute_cap_flops: 1e14}   # or true; off by default: rounds of
                                                # added widths (sweeps/adaptive_spec.py)
    branching: false                            # runs differing only in steps share a trunk
    eval: {splice: true, n_tokens: 4096}        # splice evaluation after each trial; off by
                                                # default (sweeps/eval_spec.py)

Validation is strict: an unknown key, a wrong type, an empty axis or a non-positive size
or rate is a UserError naming the field path (`grid.n_features[2]`).
`expand(spec, d_in)` is pure: the same spec gives the same configs in the same order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from analysis.adaptive import AdaptiveSettings
from sae_core.branching import with_shared_warmup
from sae_core.config import ConfigError, RunConfig
from sweeps.adaptive_spec import parse_adaptive
from sweeps.eval_spec import EvalSpec, parse_eval
from sweeps.spec_sizes import SIZE_AXES, IsoflopSpec, isoflop_steps, parse_sizes, size_pairs
from sweeps.spec_values import (
    SpecError,
    check_keys,
    check_mapping,
    non_negative_int,
    parse_axis,
    parse_bool,
    parse_number,
    parse_run_field,
    positive_int,
    read_yaml,
)

# RunConfig fields a spec may not set: they come from the cache and the axes.
_RESERVED = frozenset({"cache_dir", "d_in"})
# field -> its annotation as text ("int", "float", "str", "int | None")
RUN_FIELDS = {f.name: str(f.type) for f in fields(RunConfig) if f.name not in _RESERVED}
_TOP_KEYS = ("name", "stage", "cache", "base", "grid", "variants", "points", "isoflop", "search",
             "resources", "max_concurrent_trials", "max_failures", "log_weights", "adaptive", "branching", "eval")


@dataclass(frozen=True)
class CacheSpec:
    path: Path  # absolute
    build: Mapping[str, Any] | None  # how to build it when missing (sae_core's builders)


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0  # fractional: 0.25 packs four trials on one GPU (docs/METHOD.md §5.6)


@dataclass(frozen=True)
class SearchSpec:
    """Optuna TPE over one axis on a log scale, `n_trials` samples per grid point."""

    axis: str
    low: float
    high: float
    n_trials: int


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path  # the spec file, absolute
    cache: CacheSpec
    base: Mapping[str, Any]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]  # grid axes other than the (F, steps) ones
    variants: tuple[Mapping[str, Any], ...]  # field sets crossed with the grid ({} if none)
    sizes: tuple[tuple[int, int], ...] | None  # explicit (F, steps) pairs; None with isoflop
    isoflop: IsoflopSpec | None
    search: SearchSpec | None
    resources: Resources
    stage: int = 1
    adaptive: AdaptiveSettings | None = None  # rounds of added points (sweeps/adaptive.py)
    max_concurrent_trials: int = 2
    max_failures: int = 2
    log_weights: bool = False
    # Branched step schedules (sae_core/branching.py): one trial per family trains the
    # longest member and forks the shorter ones; every member shares the λ warm-up of
    # the family's shortest one.
    branching: bool = False
    # With branching, an IsoFLOP design's smallest budget: a family's warm-up is then its
    # width's at that budget, whether that run is in the spec or not, so that members an
    # adaptive round adds later leave the earlier members' run keys as they were. Set from
    # isoflop, and kept by the adaptive rounds' derived specs (which list points).
    branch_floor_flops: float | None = None
    eval: EvalSpec | None = None  # splice evaluation at the end of each trial (eval_spec.py)

    @property
    def batch_size_tokens(self) -> int:
        return int(self.base.get("batch_size_tokens", RunConfig.batch_size_tokens))

    def size_pairs(self, d_in: int) -> list[tuple[int, int]]:
        """The (F, steps) pairs of the grid (sweeps/spec_sizes.py)."""
        return size_pairs(self.sizes, self.isoflop, d_in, self.batch_size_tokens)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file. Relative paths in it are relative to its directory."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SpecError(f"no sweep spec at {path}")
    return parse_spec(read_yaml(path), path)


def parse_spec(data: Any, path: Path) -> SweepSpec:
    check_mapping(data, "spec")
    check_keys(data, "", _TOP_KEYS, required=("name", "cache"))
    name = data["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SpecError(f"name: must be letters, digits, '_', '.', '-', got {name!r}")

    cache = data["cache"]
    check_mapping(cache, "cache")
    check_keys(cache, "cache.", ("path", "build"), required=("path",))
    if not isinstance(cache["path"], str) or not cache["path"]:
        raise SpecError(f"cache.path: must be a path, got {cache['path']!r}")
    build = cache.get("build")
    if build is not None:
        check_mapping(build, "cache.build")
    cache_spec = CacheSpec(path=(path.parent / cache["path"]).resolve(),
                           build=MappingProxyType(dict(build)) if build else None)

    base = data.get("base") or {}
    check_mapping(base, "base")
    for key, value in base.items():
        if key not in RUN_FIELDS:
            raise SpecError(f"base.{key}: not a RunConfig field "
                            f"(known: {', '.join(sorted(RUN_FIELDS))})")
        parse_run_field(key, RUN_FIELDS[key], value, f"base.{key}")
    for key in SIZE_AXES:
        if key in base:
            raise SpecError(f"base.{key}: set it on an axis (grid, points or isoflop)")

    grid = data.get("grid") or {}
    check_mapping(grid, "grid")
    axes: dict[str, tuple[Any, ...]] = {}
    for key, value in grid.items():
        if key not in RUN_FIELDS:
            raise SpecError(f"grid.{key}: not a RunConfig field")
        if key in base:
            raise SpecError(f"grid.{key}: also set in base; set it in one place")
        axes[key] = parse_axis(key, RUN_FIELDS[key], value, f"grid.{key}")

    variants = _parse_variants(data.get("variants"), base, axes)
    sizes, isoflop = parse_sizes(data, axes)
    if isoflop is not None and "batch_size_tokens" in axes:  # steps come from one batch size
        raise SpecError("grid.batch_size_tokens: not with isoflop, whose steps per budget "
                        "are set by base.batch_size_tokens")
    search = _parse_search(data.get("search"), axes)
    adaptive = parse_adaptive(data.get("adaptive"), isoflop is not None, search is not None)
    several = [k for k in axes if k not in SIZE_AXES and k != "seed"] + (
        ["variants"] if len(variants) > 1 else [])
    if adaptive is not None and several:  # each value would be its own law (analysis/groups.py)
        raise SpecError(f"adaptive: adapts the grid of one law; {several[0]} makes one law "
                        "per value: submit one spec per value")
    branching = parse_bool(data.get("branching", False), "branching")
    if branching and search is not None:
        raise SpecError("branching: not with search (each lr trial is its own run)")
    spec = SweepSpec(
        name=name, path=path, cache=cache_spec, base=MappingProxyType(dict(base)),
        axes=tuple((k, v) for k, v in axes.items() if k not in SIZE_AXES), variants=variants,
        sizes=sizes, isoflop=isoflop, search=search,
        adaptive=adaptive,
        resources=_parse_resources(data.get("resources") or {}),
        stage=positive_int(data.get("stage", 1), "stage"),
        max_concurrent_trials=positive_int(data.get("max_concurrent_trials", 2),
                                            "max_concurrent_trials"),
        max_failures=non_negative_int(data.get("max_failures", 2), "max_failures"),
        log_weights=parse_bool(data.get("log_weights", False), "log_weights"),
        branching=branching,
        eval=parse_eval(data.get("eval")),
    )
    _check_run_settings(spec)
    return spec


def _check_run_settings(spec: SweepSpec) -> None:
    """Every width with every combination of base and axes as a RunConfig, before a cache
    or a run exists: a field the arch does not read (k for relu), k >= F, Matryoshka
    groups that miss F are refused here, naming the grid point."""
    widths = sorted({f for f, _ in spec.sizes} if spec.sizes else set(
        spec.isoflop.n_features if spec.isoflop else ()))
    names = [name for name, _ in spec.axes]
    for n_features, variant in itertools.product(widths, spec.variants):
        for values in itertools.product(*(v for _, v in spec.axes)):
            point = {**variant, **dict(zip(names, values, strict=True))}
            try:  # d_in is the cache's, not known yet: any width serves these checks
                RunConfig(cache_dir="-", d_in=64, n_features=n_features, n_steps=1,
                          **{**spec.base, **point})
            except ConfigError as err:
                at = ", ".join(f"{k}={v}" for k, v in {"n_features": n_features, **point}.items())
                raise SpecError(f"base/grid at {at}: {err}") from None


def _parse_variants(value: Any, base: Mapping[str, Any], axes: dict[str, tuple[Any, ...]]
                    ) -> tuple[Mapping[str, Any], ...]:
    """Sets of RunConfig fields that go together (an architecture with its sparsity
    control), each crossed with the grid."""
    if value is None:
        return (MappingProxyType({}),)
    if not isinstance(value, list) or not value:
        raise SpecError("variants: must be a non-empty list of mappings of RunConfig fields")
    out = []
    for i, variant in enumerate(value):
        check_mapping(variant, f"variants[{i}]")
        fields: dict[str, Any] = {}
        for key, given in variant.items():
            where = f"variants[{i}].{key}"
            if key not in RUN_FIELDS or key in SIZE_AXES:
                raise SpecError(f"{where}: not a RunConfig field a variant may set")
            if key in base or key in axes:
                raise SpecError(f"{where}: also set in {'base' if key in base else 'grid'}; "
                                "set it in one place")
            fields[key] = parse_run_field(key, RUN_FIELDS[key], given, where)
        out.append(MappingProxyType(fields))
    return tuple(out)


def _parse_search(search: Any, axes: dict[str, tuple[Any, ...]]) -> SearchSpec | None:
    if search is None:
        return None
    check_mapping(search, "search")
    check_keys(search, "search.", ("axis", "range", "n_trials"), required=("range", "n_trials"))
    axis = search.get("axis", "lr")
    if axis != "lr":  # TPE over log LR: the one search stage 2 needs (docs/METHOD.md §2.3)
        raise SpecError(f"search.axis: only 'lr' can be searched, got {axis!r}")
    if axis in axes:
        raise SpecError(f"search.axis: {axis} is also a grid axis; remove grid.{axis}")
    bounds = search["range"]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise SpecError(f"search.range: must be [low, high], got {bounds!r}")
    low = parse_number(bounds[0], "search.range[0]")
    high = parse_number(bounds[1], "search.range[1]")
    if not low < high:
        raise SpecError(f"search.range: low must be below high, got {bounds!r}")
    return SearchSpec(axis, low, high, positive_int(search["n_trials"], "search.n_trials"))


def _parse_resources(res: Any) -> Resources:
    check_mapping(res, "resources")
    check_keys(res, "resources.", ("cpu", "gpu"))
    cpu = parse_number(res.get("cpu", 1), "resources.cpu")
    gpu = res.get("gpu", 0)
    if not isinstance(gpu, int | float) or isinstance(gpu, bool) or gpu < 0:
        raise SpecError(f"resources.gpu: must be a number >= 0, got {gpu!r}")
    if gpu > 1 and gpu != int(gpu):
        raise SpecError(f"resources.gpu: above 1 it must be whole, got {gpu!r}")
    return Resources(cpu=float(cpu), gpu=float(gpu))


def expand(spec: SweepSpec, d_in: int) -> list[RunConfig]:
    """Every grid point as a RunConfig, in a stable order, duplicates (same run_key) dropped.

    (F, steps) pairs outermost, then the variants, then the other axes in the order the
    spec lists them.
    With `search`, each point carries base lr; the runner samples lr per trial. With
    `branching`, the members of a family share its shortest member's λ warm-up (IsoFLOP:
    its width's at the smallest budget).
    """
    if d_in <= 0:
        raise SpecError(f"d_in must be positive, got {d_in}")
    names = [name for name, _ in spec.axes]
    configs: dict[str, RunConfig] = {}
    for (n_features, n_steps), variant in itertools.product(spec.size_pairs(d_in), spec.variants):
        for values in itertools.product(*(v for _, v in spec.axes)):
            fields = {**spec.base, **variant, **dict(zip(names, values, strict=True))}
            cfg = RunConfig(cache_dir=str(spec.cache.path), d_in=d_in, n_features=n_features,
                            n_steps=n_steps, **fields)
            configs.setdefault(cfg.run_key, cfg)
    if spec.branching:
        members = [_design_warmup(c, spec) for c in configs.values()]
        return list({c.run_key: c for c in with_shared_warmup(members)}.values())
    return list(configs.values())


def _design_warmup(cfg: RunConfig, spec: SweepSpec) -> RunConfig:
    """cfg with its width's λ warm-up at the design's smallest budget (IsoFLOP designs)."""
    floor = spec.branch_floor_flops or (min(spec.isoflop.compute_flops) if spec.isoflop
                                        else None)
    if floor is None or cfg.l1_warmup_steps is not None:  # no design, or the user chose
        return cfg
    shortest = max(1, isoflop_steps(floor, cfg.d_in, cfg.n_features, cfg.batch_size_tokens))
    return cfg.replace(l1_warmup_steps=min(cfg.warmup_steps,
                                           round(cfg.l1_warmup_frac * shortest)))

