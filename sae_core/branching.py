"""Branched step schedules: runs that differ only in n_steps share their trunk.

The recipe's LR is constant until `decay_start_step`, then decays linearly to 0 over
the last 20% (docs/METHOD.md §1). Runs of one family (the same config but n_steps)
are therefore identical up to the decay start of the shorter one, provided they share
the λ warm-up and the data order (a function of seed and step only). So the longest
member (the trunk) is trained once, and at each shorter member's `decay_start_step` a
fork checkpoint is saved from which that member (a branch) runs its own decay.

The shared λ warm-up is the shortest member's (`l1_warmup_steps` on every member): the
members are then other runs than the paper-schedule ones, and their run keys say so.
Everything here is pure: configs in, configs out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from sae_core.config import RunConfig


@dataclass(frozen=True)
class Branch:
    cfg: RunConfig
    fork_step: int  # the trunk's step count at the fork: cfg.decay_start_step

    @property
    def decay_compute_flops(self) -> float:
        """What the branch costs beyond the trunk: its decay steps only."""
        return (self.cfg.n_steps - self.fork_step) / self.cfg.n_steps * self.cfg.compute_flops


@dataclass(frozen=True)
class Family:
    trunk: RunConfig  # the longest member, trained in full
    branches: tuple[Branch, ...]  # the shorter members, by fork step

    @property
    def members(self) -> tuple[RunConfig, ...]:
        return (self.trunk, *(b.cfg for b in self.branches))


def _family_key(cfg: RunConfig) -> str:
    """Everything but the step count and the λ warm-up, which the family sets."""
    data = cfg.to_dict()
    del data["n_steps"], data["l1_warmup_steps"]
    return json.dumps(data, sort_keys=True)


def families(configs: Iterable[RunConfig]) -> list[Family]:
    """Group configs that differ only in n_steps (and λ warm-up) into families.

    Every member of a family of two or more gets `l1_warmup_steps` = the smallest
    warm-up among them (the shortest member's); a config alone keeps its own config.
    Idempotent: grouping the members again gives the same families. Families come in
    the order of their first config; duplicate step counts are dropped.
    """
    groups: dict[str, dict[int, RunConfig]] = {}
    for cfg in configs:
        groups.setdefault(_family_key(cfg), {}).setdefault(cfg.n_steps, cfg)
    out = []
    for by_steps in groups.values():
        members = [by_steps[n] for n in sorted(by_steps, reverse=True)]
        if len(members) > 1:
            warmup_steps = min(c.warmup_steps for c in members)
            members = [c.replace(l1_warmup_steps=warmup_steps) for c in members]
        trunk, shorter = members[0], members[:0:-1]  # shorter: ascending step counts
        out.append(Family(trunk, tuple(Branch(c, c.decay_start_step) for c in shorter)))
    return out


def with_shared_warmup(configs: Iterable[RunConfig]) -> list[RunConfig]:
    """The configs as the members of their families (shared λ warm-up), in input order
    (by family key and steps)."""
    configs = list(configs)
    by_key = {(_family_key(m), m.n_steps): m for f in families(configs) for m in f.members}
    return [by_key[(_family_key(c), c.n_steps)] for c in configs]


def branched_compute_flops(family: Family) -> float:
    """The trunk in full plus each branch's decay steps."""
    return family.trunk.compute_flops + sum(b.decay_compute_flops for b in family.branches)


def independent_compute_flops(family: Family) -> float:
    return sum(m.compute_flops for m in family.members)
