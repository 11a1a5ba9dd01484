"""Checking the values of a sweep spec: YAML reading, keys, scalars and axes.

Every error names the field path, e.g. `grid.n_features[2]`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sae_core.errors import UserError
from sae_core.input_files import load_yaml

# Fields that must be > 0 when given (sizes and rates); seed may be 0, l1_coefficient too.
_POSITIVE = frozenset({"n_features", "n_steps", "lr", "batch_size_tokens", "eval_n_tokens",
                       "compute_flops", "grad_clip_norm", "init_decoder_norm",
                       "dead_window_tokens"})


class SpecError(UserError, ValueError):
    """A sweep spec that cannot run. The message names the field path."""


def read_yaml(path: Path) -> Any:
    """The spec file's YAML (sae_core/input_files.py: safe, exponent floats, duplicate
    keys refused); a SpecError names the file and line."""
    try:
        return load_yaml(path)
    except UserError as err:
        raise SpecError(str(err)) from None


def check_mapping(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: must be a mapping, got {type(value).__name__}")


def check_keys(data: Mapping[str, Any], prefix: str, known: Iterable[str],
               required: Iterable[str] = ()) -> None:
    known = tuple(known)
    for key in data:
        if key not in known:
            raise SpecError(f"{prefix}{key}: unknown key (known: {', '.join(known)})")
    for key in required:
        if key not in data:
            raise SpecError(f"{prefix}{key}: missing")


def parse_number(value: Any, where: str) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}: must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise SpecError(f"{where}: must be positive, got {value!r}")
    return float(value)


def parse_run_field(name: str, type_name: str, value: Any, where: str) -> Any:
    """Check one RunConfig field value against the field's annotation ("int", "float",
    "str", "int | None") and the positivity of sizes and rates."""
    if value is None and type_name.endswith("| None"):
        return None
    base_type = type_name.split("|")[0].strip()
    if base_type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: must be an integer, got {value!r}")
        if value < 0 or (value == 0 and name in _POSITIVE):
            raise SpecError(f"{where}: must be positive, got {value!r}")
        return value
    if base_type == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{where}: must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0 or (value == 0 and name in _POSITIVE):
            raise SpecError(f"{where}: must be {'positive' if name in _POSITIVE else '>= 0'}"
                            f", got {value!r}")
        return float(value)
    if base_type == "str":
        if not isinstance(value, str):
            raise SpecError(f"{where}: must be a string, got {value!r}")
        return value
    if base_type.startswith("tuple["):  # a list of positive numbers (matryoshka_groups)
        if not isinstance(value, list | tuple) or not value:
            raise SpecError(f"{where}: must be a non-empty list of numbers, got {value!r}")
        return tuple(parse_number(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise SpecError(f"{where}: field of type {type_name} cannot be set from a spec")


def parse_axis(name: str, type_name: str, value: Any, where: str) -> tuple[Any, ...]:
    """An axis: a non-empty list, or {logspace: [lo, hi], num: n} (ints rounded, repeats
    after rounding dropped)."""
    if isinstance(value, Mapping):
        check_keys(value, f"{where}.", ("logspace", "num"), required=("logspace", "num"))
        bounds, num = value["logspace"], value["num"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise SpecError(f"{where}.logspace: must be [low, high], got {bounds!r}")
        low = parse_number(bounds[0], f"{where}.logspace[0]")
        high = parse_number(bounds[1], f"{where}.logspace[1]")
        if high < low:
            raise SpecError(f"{where}.logspace: low must not exceed high, got {bounds!r}")
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise SpecError(f"{where}.num: must be a positive integer, got {num!r}")
        ratio = (high / low) ** (1 / (num - 1)) if num > 1 else 1.0
        points = [low * ratio**i for i in range(num)]
        if type_name.startswith("int"):
            points = [round(p) for p in points]
        else:
            points = [float(f"{p:.6g}") for p in points]  # 1e-3, not 0.0010000000000000002
        return tuple(dict.fromkeys(parse_run_field(name, type_name, p, where) for p in points))
    if not isinstance(value, list):
        raise SpecError(f"{where}: must be a list or {{logspace: [low, high], num: n}}, "
                        f"got {value!r}")
    if not value:
        raise SpecError(f"{where}: empty axis, the grid would have no points")
    return tuple(parse_run_field(name, type_name, v, f"{where}[{i}]")
                 for i, v in enumerate(value))


def positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SpecError(f"{where}: must be a positive integer, got {value!r}")
    return value


def non_negative_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpecError(f"{where}: must be an integer >= 0, got {value!r}")
    return value


def parse_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{where}: must be true or false, got {value!r}")
    return value
