"""YAML and JSON files a user writes (sweep specs, run configs, plans), read one way.

Safe YAML only (no `!!python` tags), `1e-3` read as a number, and in both formats a key
given twice in one mapping is an error: PyYAML and `json` keep the last value silently,
so `base: {lr: 1e-2, lr: 3e-3}` trained at 3e-3 without a word. Errors are one line
naming the file and the line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from sae_core.errors import UserError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string (its float pattern needs a dot); specs are full of
    such rates, so numbers in exponent form are floats here."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, str] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
                if not isinstance(key, str | int | float | bool):
                    continue  # unhashable or odd keys: PyYAML's own checks apply
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice, first at {first[key]}",
                        key_node.start_mark)
                mark = key_node.start_mark
                first[key] = f"line {mark.line + 1}, column {mark.column + 1}"
        return super().construct_mapping(node, deep)  # type: ignore[arg-type]


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: Path) -> Any:
    """The YAML document in `path`; UserError (one line: file, line, problem) if it is
    unreadable, not YAML, or gives a key twice."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = err.problem or err.context or "unreadable"
        raise UserError(f"{path} is not valid YAML ({where}{problem})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} given twice in one object")
        out[key] = value
    return out


def load_json(path: Path) -> Any:
    """The JSON document in `path`; UserError (one line) if it is unreadable, not JSON, or
    gives a key twice in one object."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not JSON (line {err.lineno}: {err.msg})") from None
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None
