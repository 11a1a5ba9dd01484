"""Which runs make one law: runs are fitted together only when their configs agree on
everything but the axes the protocol varies (docs/METHOD.md section 2).

The axes within a law are the sizes (n_features, n_steps), the learning rate (stage 2's
axis), the seed (replicates) and the λ warm-up a branched design sets per width. Every
other RunConfig field a runs table carries (l1_coefficient, arch, batch_size_tokens, ...)
splits the runs into groups, one law each: runs that differ in λ are never one law.
Fields that say where or how fast a run executed (device, threads) never split.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pandas as pd

from sae_core.config import EXECUTION_FIELDS, RunConfig

LAW_AXES = ("n_features", "n_steps", "lr", "seed", "l1_warmup_steps")
GROUP_FIELDS = tuple(f.name for f in fields(RunConfig)
                     if f.name not in LAW_AXES and f.name not in EXECUTION_FIELDS)


def group_runs(runs: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """[(the config the group's runs share on their differing fields, its runs)], in a
    stable order. One group, with an empty config, when no such field differs."""
    differing = [c for c in GROUP_FIELDS if c in runs.columns
                 and runs[c].astype(str).nunique(dropna=False) > 1]
    if not differing:
        return [({}, runs)]
    keys = runs[differing].astype(str).agg("\x1f".join, axis=1)
    out = []
    for key in sorted(keys.unique(), key=_natural):
        members = runs[keys == key]
        out.append(({c: _plain(members[c].iloc[0]) for c in differing}, members))
    return out


def label(config: dict[str, Any]) -> str:
    """A group's name for files and printouts: `l1_coefficient=2,arch=relu` ('' if one)."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in config.items())


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _natural(key: str) -> tuple[tuple[int, float, str], ...]:
    """Numbers by value, text alphabetically (so λ = 2 sorts before λ = 10)."""
    parts = []
    for text in key.split("\x1f"):
        try:
            parts.append((0, float(text), ""))
        except ValueError:
            parts.append((1, 0.0, text))
    return tuple(parts)
