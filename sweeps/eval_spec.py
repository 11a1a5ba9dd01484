"""The `eval:` key of a sweep spec: splice evaluation at the end of each trial, off by
default (it can cost more than a small trial: bench/splice_eval.py).

    eval: {splice: true, n_tokens: 4096}   # held-out tokens (kept positions, whole contexts)

The cache must come from a model (sae_core/held_out.py); the reference passes run once
on the driver before the trials (sweeps/eval_trial.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeps.spec_values import check_keys, check_mapping, parse_bool, positive_int

DEFAULT_SPLICE_TOKENS = 4096  # SAEBench core uses ~20k (docs/METHOD.md §4.6)


@dataclass(frozen=True)
class EvalSpec:
    splice: bool = False
    n_tokens: int = DEFAULT_SPLICE_TOKENS


def parse_eval(value: Any) -> EvalSpec | None:
    """None when absent; else the settings, every field checked."""
    if value is None:
        return None
    check_mapping(value, "eval")
    check_keys(value, "eval.", ("splice", "n_tokens"))
    return EvalSpec(splice=parse_bool(value.get("splice", False), "eval.splice"),
                    n_tokens=positive_int(value.get("n_tokens", DEFAULT_SPLICE_TOKENS),
                                          "eval.n_tokens"))
