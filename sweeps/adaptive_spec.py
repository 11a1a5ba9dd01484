"""The `adaptive:` key of a sweep spec: off by default.

    adaptive: true                     # the defaults of analysis/adaptive.py
    adaptive:
      max_rounds: 3                    # rounds of added points after the first pass
      compute_cap_flops: 1e14          # total over the sweep, first pass included: never exceeded
      min_shrink: 0.1                  # stop when the exponent intervals narrow by < 10%
      max_gap_dex: 0.35                # widths around the vertex further apart: add between
      max_curvature_rel_se: 0.5        # parabola curvature known worse than this: add between
      n_draws: 100                     # bootstrap draws of each round's fit

Needs an `isoflop:` design (the rounds add widths at its budgets) and no `search:`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from analysis.adaptive import AdaptiveSettings
from sweeps.spec_values import SpecError, check_keys, check_mapping, parse_number, positive_int

_INT_KEYS = ("max_rounds", "n_draws")
_KEYS = tuple(f.name for f in fields(AdaptiveSettings))


def parse_adaptive(value: Any, has_isoflop: bool, has_search: bool) -> AdaptiveSettings | None:
    """None when absent or false; else the settings, every field checked."""
    if value is None or value is False:
        return None
    if value is True:
        settings: dict[str, Any] = {}
    else:
        check_mapping(value, "adaptive")
        check_keys(value, "adaptive.", _KEYS)
        settings = {}
        for key, given in value.items():
            where = f"adaptive.{key}"
            if key in _INT_KEYS:
                settings[key] = positive_int(given, where)
            else:
                settings[key] = parse_number(given, where)
    if not has_isoflop:
        raise SpecError("adaptive: needs an isoflop: design (the rounds add widths at its budgets)")
    if has_search:
        raise SpecError("adaptive: not with search (the rounds add (F, steps) points)")
    return AdaptiveSettings(**settings)
