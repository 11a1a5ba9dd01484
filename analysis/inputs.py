"""Where the analysis CLI gets its runs: a CSV file, or a sweep spec's runs in MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sae_core.errors import UserError


@dataclass(frozen=True)
class SweepInfo:
    """What the analysis needs from a sweep spec."""

    name: str
    path: Path
    raw: dict[str, Any]  # the YAML as written (carried into the stage-2 spec)
    batch_size_tokens: int | None = None
    budgets: list[float] | None = None  # the spec's isoflop budgets, when it has them


def load_sweep(path: str | Path) -> SweepInfo:
    """Read a spec with sweeps.spec.load_spec (validated), keeping its raw YAML too."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"no sweep spec at {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})") from err
    from sweeps.spec import load_spec  # validates; raises UserError on a bad spec

    spec = load_spec(path)
    budgets = list(spec.isoflop.compute_flops) if spec.isoflop is not None else None
    return SweepInfo(spec.name, path, raw, spec.batch_size_tokens, budgets)


def tracking_uri(storage: str | None, uri: str | None) -> str:
    """The sweeps' own default: sqlite:///<storage or .monoscale>/mlflow.db."""
    from sweeps.driver import Where

    return Where.resolve(storage, uri).tracking_uri


def read_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no runs CSV at {path}")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read as CSV ({err})") from err


def read_sweep_runs(sweep: SweepInfo, uri: str) -> pd.DataFrame:
    from analysis.mlflow_reader import read_runs

    return read_runs(uri, sweep.name)


def shared_value(runs: pd.DataFrame, column: str) -> int | None:
    """The one value a column holds across runs (batch_size_tokens, d_in), else None."""
    if column not in runs.columns or runs[column].isna().any() or runs[column].nunique() != 1:
        return None
    return int(runs[column].iloc[0])
