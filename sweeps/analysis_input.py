"""Where `analyze`, `plan` and `plan-lr` get their runs: a sweep spec's runs in MLflow
(sweeps/tracking.py), or a runs table as CSV (docs/CONTRACTS.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sae_core.errors import UserError
from sweeps import tracking
from sweeps.driver import Where
from sweeps.spec import load_spec
from sweeps.spec_values import read_yaml


@dataclass(frozen=True)
class SweepInfo:
    """What the analysis needs from a sweep spec."""

    name: str
    path: Path
    raw: dict[str, Any]  # the YAML as written, read as specs are (carried into stage 2)
    batch_size_tokens: int | None = None
    budgets: list[float] | None = None  # the spec's isoflop budgets, when it has them


def load_sweep(path: str | Path) -> SweepInfo:
    """A spec, validated (sweeps/spec.py), with its YAML as written."""
    spec = load_spec(path)  # a UserError names what is wrong with it
    raw = read_yaml(spec.path)  # the spec's reader: `2e0` is a number, as in the spec
    budgets = list(spec.isoflop.compute_flops) if spec.isoflop is not None else None
    return SweepInfo(spec.name, spec.path, raw, spec.batch_size_tokens, budgets)


def tracking_uri(storage: str | None, uri: str | None) -> str:
    """The sweeps' own default: sqlite:///<storage or .monoscale>/mlflow.db."""
    return Where.resolve(storage, uri).tracking_uri


def read_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no runs CSV at {path}")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read as CSV ({err})") from err


def read_sweep_runs(name: str, uri: str) -> pd.DataFrame:
    """The runs table of a sweep's finished runs, newest per grid point."""
    records = tracking.finished_runs(uri, name)
    if not records:
        raise UserError(f"no finished runs of sweep '{name}' in {uri}: submit it first")
    return tracking.runs_table(records)


def shared_value(runs: pd.DataFrame, column: str) -> int | None:
    """The one value a column holds across runs (batch_size_tokens, d_in), else None."""
    if column not in runs.columns or runs[column].isna().any() or runs[column].nunique() != 1:
        return None
    return int(runs[column].iloc[0])


def distinct_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: rows that repeat an earlier row exactly, or name a run (run_id)
    or grid point (run_key) an earlier row names, are dropped with a note on stderr. The
    bootstrap resamples rows, so a run counted twice narrowed every interval (F_opt's
    95% interval from [0.35, 0.92] to [0.57, 0.68] on one duplicated CSV)."""
    import sys

    keep = ~runs.duplicated(keep="first")
    why = [f"{int((~keep).sum())} rows repeat an earlier row"] if not keep.all() else []
    for column, what in (("run_id", "run"), ("run_key", "grid point")):
        if column in runs.columns:
            named = runs[column].notna()
            again = keep & named & runs[column].where(keep).duplicated(keep="first")
            if again.any():
                why.append(f"{int(again.sum())} rows name a {what} ({column}) an earlier row "
                           "names")
                keep &= ~again
    if why:
        print(f"note: {' and '.join(why)}: each run counted once ({int(keep.sum())} of "
              f"{len(runs)} rows)", file=sys.stderr)
    return runs[keep].reset_index(drop=True)
