"""RunConfig: everything one SAE training run receives, and nothing else.

The architecture (`arch`) picks a recipe; a field left at None takes that recipe's
default (sae_core/recipes.py, with sources), filled in at construction so that a config
always says what it trains. The default arch is the April-2024 ReLU recipe that
"Scaling Monosemanticity" trains with (docs/METHOD.md §1). Derived values are
properties, never stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from sae_core import recipes
from sae_core.compute import compute_flops, flops_per_feature_step
from sae_core.errors import UserError

# Fields that say *where* or *how fast* a run executes, not *what* it computes: they
# stay out of the run key, so the same grid point on another machine is the same run.
EXECUTION_FIELDS = frozenset(
    {"device", "autocast", "num_threads", "checkpoint_every_steps", "eval_every_steps", "cache_dir"}
)
# Fields added after run keys were first issued, with the value every earlier run had:
# left out of the key at that value, so a re-submit finds the runs an older monoscale made.
_KEY_DEFAULTS: dict[str, Any] = {"arch": "relu", **{name: None for name in recipes.OWNED
                                                    if name != "l1_coefficient"}}


class ConfigError(UserError, ValueError):
    """A config that cannot run. The message names the field."""


@dataclass(frozen=True)
class RunConfig:
    cache_dir: str
    d_in: int  # residual width; must match the cache's meta.json
    n_features: int
    n_steps: int
    arch: str = "relu"  # recipes.ARCHITECTURES
    lr: float | None = None  # the recipe's; swept in stage 2
    batch_size_tokens: int = 4096  # (lib)
    # relu: λ of its L1 penalty
    l1_coefficient: float | None = None
    # The sparsity coefficient's warm-up (relu's λ, jumprelu's L0 coefficient): it rises
    # linearly from 0 over the first 5% of steps (the April update's).
    l1_warmup_frac: float = 0.05
    lr_decay_frac: float = 0.2  # LR decays linearly to 0 over the last 20% of steps
    adam_beta1: float | None = None
    adam_beta2: float = 0.999
    grad_clip_norm: float = 1.0
    init_decoder_norm: float | None = None  # the norm of W_dec's rows at init
    # topk, batchtopk, matryoshka_batchtopk: active latents per token (on average over a
    # batch for the batch ones), and the AuxK loss that revives dead latents
    k: int | None = None
    aux_k: int | None = None
    aux_coefficient: float | None = None
    threshold_rate: float | None = None  # batch ones: EMA rate of the inference threshold
    # matryoshka_batchtopk: nested groups, as fractions of F summing to 1 or sizes summing to F
    matryoshka_groups: tuple[float, ...] | None = None
    # jumprelu: loss MSE + l0_coefficient · L0, or with target_l0 the quadratic
    # l0_coefficient · (L0 / target_l0 - 1)^2 around it (SAEBench's trainer)
    l0_coefficient: float | None = None
    target_l0: float | None = None
    jumprelu_bandwidth: float | None = None
    jumprelu_init_threshold: float | None = None
    seed: int = 0
    dead_window_tokens: int = 10_000_000  # "not active over a sample of 10^7 tokens"
    eval_n_tokens: int = 65_536  # held-out tokens for the final metrics
    # Branched step schedules (sae_core/branching.py): the runs of one family share the λ
    # warm-up of its shortest member, given here in steps. None: l1_warmup_frac * n_steps.
    l1_warmup_steps: int | None = None
    # Execution only (not in the run key):
    eval_every_steps: int = 0  # 0: ten evaluations per run
    checkpoint_every_steps: int = 0  # 0: about every 60 s of training
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    autocast: str = "auto"  # "auto" (bf16 on GPUs that support it) | "bf16" | "off"
    # CPU threads for torch; 0 leaves torch's default. A Ray trial sets it to its CPU
    # share: on 2 busy cores (load ~7) a d=32, F=128 gradient took 6-12 ms with 2 threads
    # against 1.2-1.4 ms with one, and a 2,000-step run 130 s against 6.8 s (OpenMP
    # spin-waits; docs/METHOD.md §5.4).
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.arch not in recipes.ARCHITECTURES:
            raise ConfigError(f"arch must be one of {', '.join(recipes.ARCHITECTURES)}, got "
                              f"{self.arch!r}")
        for name, owners in recipes.OWNED.items():
            if getattr(self, name) is not None and self.arch not in owners:
                control = " or ".join(recipes.SPARSITY_CONTROL[self.arch])
                raise ConfigError(f"{name} does not apply to arch {self.arch} (its sparsity "
                                  f"control is {control})")
        if isinstance(self.matryoshka_groups, list):  # from JSON
            object.__setattr__(self, "matryoshka_groups", tuple(self.matryoshka_groups))
        for name in ("d_in", "n_features", "n_steps", "batch_size_tokens", "eval_n_tokens",
                     "dead_window_tokens"):
            _check_int(name, getattr(self, name), 1)
        for name, value in recipes.defaults(self.arch, self.d_in, self.n_features).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("seed", "eval_every_steps", "checkpoint_every_steps", "num_threads"):
            _check_int(name, getattr(self, name), 0)
        for name in ("l1_warmup_steps", "aux_k"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0 if name == "l1_warmup_steps" else 1)
        for name in ("lr", "grad_clip_norm", "init_decoder_norm", "jumprelu_bandwidth",
                     "target_l0", "threshold_rate"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int | float) or not value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        for name in ("l1_coefficient", "aux_coefficient", "l0_coefficient",
                     "jumprelu_init_threshold"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("l1_warmup_frac", "lr_decay_frac", "threshold_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {value!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.k is not None:
            _check_int("k", self.k, 1)
            if self.k >= self.n_features:
                raise ConfigError(f"k must be below n_features={self.n_features}, got {self.k}")
        if self.target_l0 is not None and self.target_l0 >= self.n_features:
            raise ConfigError(f"target_l0 must be below n_features={self.n_features}, got "
                              f"{self.target_l0}")
        if self.matryoshka_groups is not None:
            self._check_groups()
        if self.autocast not in ("auto", "bf16", "off"):
            raise ConfigError(f"autocast must be auto, bf16 or off, got {self.autocast!r}")

    def _check_groups(self) -> None:
        groups = self.matryoshka_groups or ()
        if not groups or not all(isinstance(g, int | float) and not isinstance(g, bool)
                                 and g > 0 for g in groups):
            raise ConfigError(f"matryoshka_groups must be positive numbers, got {groups!r}")
        sizes = recipes.group_sizes(groups, self.n_features)
        as_sizes = sizes == tuple(groups)  # not fractions of F
        if (as_sizes and not all(float(g).is_integer() for g in groups)) or sum(
                sizes) != self.n_features or min(sizes) < 1:
            raise ConfigError(f"matryoshka_groups {list(groups)} must be sizes summing to "
                              f"n_features={self.n_features} or fractions summing to 1, "
                              "each group at least one feature")

    # ---- derived values ------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        """Training tokens: T = steps x batch."""
        return self.n_steps * self.batch_size_tokens

    @property
    def warmup_steps(self) -> int:
        """Steps over which the sparsity coefficient rises linearly from 0."""
        if self.l1_warmup_steps is not None:
            return self.l1_warmup_steps
        return round(self.l1_warmup_frac * self.n_steps)

    @property
    def decay_start_step(self) -> int:
        """First step of the linear LR decay to 0 (the last lr_decay_frac of the run)."""
        return self.n_steps - round(self.lr_decay_frac * self.n_steps)

    @property
    def compute_flops(self) -> float:
        """C = 6 * (2 d F) * T (sae_core/compute.py)."""
        return compute_flops(self.n_features, self.n_steps,
                             flops_per_feature_step(self.d_in, self.batch_size_tokens))

    @property
    def run_key(self) -> str:
        """Stable id of the grid point: a hash of what the run computes."""
        return self._digest(EXECUTION_FIELDS)

    @property
    def resume_key(self) -> str:
        """What a checkpoint must share with a run to resume it: the run key without
        n_steps, so that a branch resumes from its trunk's fork (sae_core/branching.py)."""
        return self._digest(EXECUTION_FIELDS | {"n_steps"})

    def _digest(self, left_out: frozenset[str]) -> str:
        payload = {k: v for k, v in self.to_dict().items() if k not in left_out
                   and not (k in _KEY_DEFAULTS and v == _KEY_DEFAULTS[k])}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    # ---- JSON round trip -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        missing = sorted(
            f.name
            for f in fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"missing config key(s): {', '.join(missing)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        what = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
