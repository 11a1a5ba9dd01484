"""RunConfig: everything one SAE training run receives, and nothing else.

Defaults are the April-2024 recipe that "Scaling Monosemanticity" trains with
(docs/METHOD.md section 1); values marked (lib) come from the public replications
where the paper gives none. Derived values are properties, never stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from sae_core.compute import compute_flops, flops_per_feature_step
from sae_core.errors import UserError

# Fields that say *where* or *how fast* a run executes, not *what* it computes: they
# stay out of the run key, so the same grid point on another machine is the same run.
EXECUTION_FIELDS = frozenset(
    {"device", "autocast", "num_threads", "checkpoint_every_steps", "eval_every_steps", "cache_dir"}
)
# The SAE recipes a run can train (sae_core/archs/).
ARCHITECTURES = ("relu",)
# Fields added after run keys were first issued, with the value every earlier run had:
# left out of the key at that value, so a re-submit finds the runs an older monoscale made.
_KEY_DEFAULTS: dict[str, Any] = {"arch": "relu"}


class ConfigError(UserError, ValueError):
    """A config that cannot run. The message names the field."""


@dataclass(frozen=True)
class RunConfig:
    cache_dir: str
    d_in: int  # residual width; must match the cache's meta.json
    n_features: int
    n_steps: int
    arch: str = "relu"  # sae_core/archs/: relu
    lr: float = 5e-5  # (lib) small-scale value; swept in stage 2
    batch_size_tokens: int = 4096  # (lib)
    l1_coefficient: float = 5.0  # the paper's λ
    l1_warmup_frac: float = 0.05  # λ rises linearly from 0 over the first 5% of steps
    lr_decay_frac: float = 0.2  # LR decays linearly to 0 over the last 20% of steps
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip_norm: float = 1.0
    init_decoder_norm: float = 0.1  # (lib); the April update gives a range 0.05-1
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
    # spin-waits; docs/METHOD.md section 5).
    num_threads: int = 0

    def __post_init__(self) -> None:
        for name in ("d_in", "n_features", "n_steps", "batch_size_tokens", "eval_n_tokens",
                     "dead_window_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("seed", "eval_every_steps", "checkpoint_every_steps", "num_threads",
                     "l1_warmup_steps"):
            value = getattr(self, name)
            if value is None and name == "l1_warmup_steps":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "grad_clip_norm", "init_decoder_norm"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not self.l1_coefficient >= 0:
            raise ConfigError(f"l1_coefficient must be >= 0, got {self.l1_coefficient!r}")
        for name in ("l1_warmup_frac", "lr_decay_frac"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {value!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ConfigError(f"autocast must be auto, bf16 or off, got {self.autocast!r}")

    # ---- derived values ------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        """Training tokens: T = steps x batch."""
        return self.n_steps * self.batch_size_tokens

    @property
    def warmup_steps(self) -> int:
        """Steps over which λ rises linearly from 0 to l1_coefficient."""
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
