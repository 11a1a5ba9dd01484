"""How a spec gives its (F, steps) pairs: a grid's cross product, explicit `points`, or
`isoflop` budgets with widths, whose steps follow from the budget (sae_core/compute.py)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sae_core.compute import flops_per_feature_step, steps_for_budget
from sweeps.spec_values import SpecError, check_keys, check_mapping, parse_axis, parse_run_field

SIZE_AXES = ("n_features", "n_steps")


@dataclass(frozen=True)
class IsoflopSpec:
    compute_flops: tuple[float, ...]
    n_features: tuple[int, ...]


def parse_sizes(data: Mapping[str, Any], axes: dict[str, tuple[Any, ...]]
                ) -> tuple[tuple[tuple[int, int], ...] | None, IsoflopSpec | None]:
    """The (F, steps) pairs: a cross product, explicit points, or IsoFLOP budgets."""
    given = [k for k in ("points", "isoflop") if k in data]
    on_grid = [k for k in SIZE_AXES if k in axes]
    if len(given) > 1 or (given and on_grid):
        raise SpecError(f"{' and '.join(given + ['grid.' + k for k in on_grid])}: give the "
                        "sizes one way only (grid axes, points or isoflop)")
    if "points" in data:
        points = data["points"]
        if not isinstance(points, list) or not points:
            raise SpecError("points: must be a non-empty list of {n_features, n_steps}")
        pairs = []
        for i, point in enumerate(points):
            check_mapping(point, f"points[{i}]")
            check_keys(point, f"points[{i}].", SIZE_AXES, required=SIZE_AXES)
            pairs.append(tuple(parse_run_field(k, "int", point[k], f"points[{i}].{k}")
                               for k in SIZE_AXES))
        return tuple(pairs), None  # type: ignore[arg-type]
    if "isoflop" in data:
        iso = data["isoflop"]
        check_mapping(iso, "isoflop")
        keys = ("compute_flops", "n_features")
        check_keys(iso, "isoflop.", keys, required=keys)
        return None, IsoflopSpec(
            compute_flops=parse_axis("compute_flops", "float", iso["compute_flops"],
                                     "isoflop.compute_flops"),
            n_features=parse_axis("n_features", "int", iso["n_features"],
                                  "isoflop.n_features"))
    missing = [k for k in SIZE_AXES if k not in axes]
    if missing:
        raise SpecError(f"grid.{missing[0]}: missing (or give points: or isoflop:)")
    return tuple(itertools.product(axes["n_features"], axes["n_steps"])), None


def isoflop_steps(budget: float, d_in: int, n_features: int, batch_size_tokens: int) -> int:
    """The steps that spend `budget` at width F."""
    return round(steps_for_budget(budget, n_features,
                                  flops_per_feature_step(d_in, batch_size_tokens)))


def size_pairs(sizes: tuple[tuple[int, int], ...] | None, isoflop: IsoflopSpec | None,
               d_in: int, batch_size_tokens: int) -> list[tuple[int, int]]:
    """The (F, steps) pairs: the explicit ones, or each IsoFLOP budget's widths with the
    steps that spend it."""
    if sizes is not None:
        return list(sizes)
    assert isoflop is not None
    pairs = []
    for budget in isoflop.compute_flops:
        for n_features in isoflop.n_features:
            n_steps = isoflop_steps(budget, d_in, n_features, batch_size_tokens)
            if n_steps < 1:
                raise SpecError(f"isoflop: budget {budget:.3g} FLOPs at n_features="
                                f"{n_features} (d_in={d_in}) gives under one step")
            pairs.append((n_features, n_steps))
    return pairs
