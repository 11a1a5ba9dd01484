"""Which runs make one law: runs are fitted together only when their configs agree on
everything but the axes the protocol varies (docs/METHOD.md §2.3).

The axes within a law are the sizes (n_features, n_steps), the learning rate (stage 2's
axis), the seed (replicates) and the λ warm-up a branched design sets per width. Every
other RunConfig field a runs table carries (l1_coefficient, arch, batch_size_tokens, ...)
splits the runs into groups, one law each: runs that differ in λ are never one law.
Fields that say where or how fast a run executed (device, threads) never split.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pandas as pd

from sae_core import recipes
from sae_core.config import EXECUTION_FIELDS, RunConfig
from sae_core.errors import UserError

LAW_AXES = ("n_features", "n_steps", "lr", "seed", "l1_warmup_steps")
GROUP_FIELDS = tuple(f.name for f in fields(RunConfig)
                     if f.name not in LAW_AXES and f.name not in EXECUTION_FIELDS)


def group_runs(runs: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """[(the config the group's runs share on their differing fields, its runs)], in a
    stable order. One group, with an empty config, when no such field differs."""
    differing = [c for c in GROUP_FIELDS if c in runs.columns
                 and runs[c].map(str).nunique() > 1]
    if not differing:
        return [({}, runs)]
    keys = runs[differing].map(str).agg("\x1f".join, axis=1)
    out = []
    for key in sorted(keys.unique(), key=_natural):
        members = runs[keys == key]
        out.append(({c: _plain(members[c].iloc[0]) for c in differing}, members))
    return out


def label(config: dict[str, Any], d_in: int | None = None) -> str:
    """A group's name for files and printouts: `arch=topk,k=16` ('' if one): the
    architecture, its sparsity control, and what else was chosen. Fields the group's runs
    do not have (k of a ReLU SAE) and others at their recipe's default are left out."""
    arch = config.get("arch") or "relu"
    known = arch in recipes.ARCHITECTURES
    recipe = recipes.defaults(arch, d_in or 0, 1) if known else {}
    control = recipes.SPARSITY_CONTROL[arch] if known else ()
    shown = {k: v for k, v in config.items() if v is not None and (
        k == "arch" or k in control or k not in recipe or recipe[k] != v)}
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in shown.items())


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, and a missing value (NaN) as None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _natural(key: str) -> tuple[tuple[int, float, str], ...]:
    """Numbers by value, text alphabetically (so λ = 2 sorts before λ = 10)."""
    parts = []
    for text in key.split("\x1f"):
        try:
            parts.append((0, float(text), ""))
        except ValueError:
            parts.append((1, 0.0, text))
    return tuple(parts)


def choose_metric(runs: pd.DataFrame, asked: str | None) -> tuple[str, str]:
    """(metric, why): the one asked for; else the paper's loss when every run is a ReLU
    SAE, and normalised MSE (1 − explained variance) otherwise, which means the same for
    every architecture at a given L0 (the ReLU SAE's loss adds its λ-weighted penalty)."""
    if asked:
        return asked, "asked for"
    archs = set(runs["arch"].map(str)) if "arch" in runs.columns else {"relu"}
    if archs <= {"relu", "nan", "None"}:
        return "loss", "the paper's loss (MSE + λ·penalty), every run a ReLU SAE"
    return "normalized_mse", (f"normalised MSE, the same measure for {', '.join(sorted(archs))}"
                              " (their losses differ in kind)")


def with_metric(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The runs with `metric` as the loss the laws are fitted to (the table's own loss kept
    as loss_reported). normalized_mse of runs that predate it is 1 − explained_variance."""
    if metric == "loss":
        return runs
    values = runs[metric] if metric in runs.columns else None
    if values is None and metric == "normalized_mse" and "explained_variance" in runs.columns:
        values = 1.0 - runs["explained_variance"]
    if values is None:
        numeric = sorted(c for c in runs.columns if pd.api.types.is_numeric_dtype(runs[c]))
        raise UserError(f"no metric {metric!r} among the runs' columns (numeric ones: "
                        f"{', '.join(numeric)})")
    return runs.assign(loss_reported=runs.get("loss"), loss=pd.to_numeric(values,
                                                                           errors="coerce"))
