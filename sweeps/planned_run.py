"""Stage 3 (docs/METHOD.md §2.3): the sweep that trains the run `monoscale plan`
planned.

`monoscale submit SPEC --plan PLAN.json` keeps SPEC's cache, base and resources and
replaces its grid with the planned (F, steps, lr); the sweep is named `<name>-plan`, and
the prediction is tagged on its parent run (to read in the MLflow UI); `monoscale analyze
--plan PLAN.json` sets it against the achieved loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sae_core.errors import UserError
from sae_core.input_files import load_json
from sweeps.cache_setup import planned_d_in
from sweeps.descriptions import plan_text
from sweeps.spec import RUN_FIELDS, SIZE_AXES, SweepSpec
from sweeps.spec_values import SpecError, check_mapping, parse_run_field
from sweeps.tracking import TAG_NOTE_PART, plan_tags


def with_plan(spec: SweepSpec, plan: Mapping[str, Any]) -> SweepSpec:
    """The spec narrowed to the planned run (`monoscale plan --out` JSON, or its
    run_config), as sweep `<name>-plan`, stage 3."""
    run = plan.get("run_config", plan)
    check_mapping(run, "plan.run_config")
    known = {"n_features", "n_steps", "lr", "batch_size_tokens", "d_in"}
    unknown = sorted(set(run) - known - set(RUN_FIELDS)) if "run_config" in plan else []
    if unknown:
        raise SpecError(f"plan.run_config.{unknown[0]}: not a RunConfig field")
    for key in SIZE_AXES:
        if key not in run:
            raise SpecError(f"plan.{key}: missing")
    pair = tuple(parse_run_field(k, "int", run[k], f"plan.{k}") for k in SIZE_AXES)
    base = dict(spec.base)
    for key in set(run) & (set(RUN_FIELDS) - set(SIZE_AXES)):
        if run[key] is None:  # e.g. no LR law fitted: keep the spec's lr
            continue
        base[key] = parse_run_field(key, RUN_FIELDS[key], run[key], f"plan.{key}")
    return dataclasses.replace(
        spec, name=f"{spec.name}-plan", stage=3, base=MappingProxyType(base), axes=(),
        sizes=(pair,), isoflop=None, search=None)  # type: ignore[arg-type]


def planned_sweep(spec: SweepSpec, path: Path) -> tuple[SweepSpec, dict[str, str]]:
    """The spec narrowed to the planned run, and the prediction as tags for its parent run."""
    try:
        plan = load_json(path)
    except UserError as err:
        raise UserError(f"--plan: {err}") from None
    if not isinstance(plan, dict):
        raise UserError(f"--plan {path}: not a JSON object")
    planned = with_plan(spec, plan)
    d_in = plan.get("run_config", plan).get("d_in")
    if d_in is not None and d_in != planned_d_in(spec):
        raise UserError(f"--plan {path}: planned for d_in={d_in}, the cache has "
                        f"d_in={planned_d_in(spec)}")
    return planned, {**plan_tags(plan), f"{TAG_NOTE_PART}.plan": plan_text(plan)}

