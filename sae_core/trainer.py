"""The training loop: a plain function, linear top to bottom.

It takes a RunConfig, a factory of batch iterators and a logger, and does not know where
batches come from. A run killed at any point resumes from its checkpoint to the same
result: the data order is a function of (seed, step) and the checkpoint holds the
weights, Adam's state, the step and the dead-feature counters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from sae_core import archs, checkpoint
from sae_core.config import RunConfig
from sae_core.device import autocast_dtype, resolve_device
from sae_core.errors import UserError
from sae_core.evaluate import evaluate, final_evaluation
from sae_core.host_memory import keep_freed_memory
from sae_core.model import SAE, StepContext
from sae_core.schedule import lr_factor

BatchFactory = Callable[[int], Iterator[torch.Tensor]]  # start step -> batches [B, d]


class MetricsLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...


class DivergedError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainResult(NamedTuple):
    sae: SAE
    metrics: dict[str, float]  # final held-out metrics, see evaluate() / final_evaluation()
    feature_density: torch.Tensor | None = None  # [F], with norm_scale: see final_evaluation()


def train(
    cfg: RunConfig,
    make_batches: BatchFactory,
    eval_x: torch.Tensor,
    logger: MetricsLogger | None = None,
    checkpoint_dir: Path | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    fork_steps: Collection[int] = (),
    on_fork: Callable[[Path, int], None] | None = None,
    norm_scale: float | None = None,
) -> TrainResult:
    """Train one SAE for cfg.n_steps steps; eval_x [N, d] is held-out, normalised data.
    With the cache's `norm_scale`, the final metrics add the standard reconstruction set
    in model units (evaluate.final_evaluation) and the result its feature density.

    After each step count in `fork_steps` (below n_steps) the state is checkpointed and
    `on_fork(checkpoint_dir, step)` called: branched step schedules (sae_core/branching.py)
    copy it to where a shorter run resumes its own LR decay.
    """
    if fork_steps and checkpoint_dir is None:
        raise ValueError("fork_steps need a checkpoint_dir to save the forks in")
    device = resolve_device(cfg.device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cpu":  # every step reuses the last one's memory (host_memory.py)
        keep_freed_memory()
    mm_dtype = autocast_dtype(cfg.autocast, device)
    arch = archs.build(cfg)
    assert cfg.lr is not None and cfg.adam_beta1 is not None  # RunConfig fills them in
    sae = arch.init(cfg.d_in, cfg.n_features, torch.Generator().manual_seed(cfg.seed)).to(device)
    # fused: one kernel for all of Adam's updates; at d=768, F=16384 on a 2-core CPU 81 ms
    # a step against 555 ms for the default (docs/METHOD.md §5.4).
    optimizer = torch.optim.Adam(
        sae.parameters(),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=0.0,
        fused=True,
    )
    # Tokens since each feature last fired: dead = silent for the whole window
    # (10^7 tokens in the paper), or for every token seen when fewer.
    tokens_since_fired = torch.zeros(cfg.n_features, dtype=torch.int64, device=device)
    start_step = 0
    if checkpoint_dir is not None and checkpoint.exists(checkpoint_dir):
        state = checkpoint.load(checkpoint_dir, sae, optimizer, cfg.resume_key, map_location=device)
        start_step = state.step
        tokens_since_fired = state.tokens_since_fired.to(device)

    eval_every = cfg.eval_every_steps or max(1, cfg.n_steps // 10)
    checkpoint_every_s = 60.0
    last_checkpoint_t = time.perf_counter()
    train_time_s = 0.0
    batches = make_batches(start_step)
    for step in range(start_step, cfg.n_steps):
        t0 = time.perf_counter()
        x = next(batches).to(device, non_blocking=True)
        if step == 0:
            arch.fit_to_data(sae, x)
        lr = cfg.lr * lr_factor(step, cfg.n_steps, cfg.decay_start_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        dead = tokens_since_fired >= cfg.dead_window_tokens
        stats = arch.gradients(sae, x, StepContext(step, dead, mm_dtype))
        loss = stats.loss.item()
        if not math.isfinite(loss):
            saved = checkpoint_dir is not None and checkpoint.exists(checkpoint_dir)
            scheduled = ", ".join(f"{k}={v:.3g}" for k, v in arch.schedule(step).items())
            raise DivergedError(
                f"loss became {loss} at step {step} (lr={lr:.3g}"
                + (f", {scheduled}" if scheduled else "") + "); "
                + (f"last good checkpoint kept in {checkpoint_dir}" if saved
                   else "no checkpoint was saved before it")
            )
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        arch.after_step(sae)
        tokens_since_fired += x.shape[0]
        tokens_since_fired.masked_fill_(stats.fired, 0)
        train_time_s += time.perf_counter() - t0

        done = step + 1
        if logger is not None and (done % eval_every == 0 or done == cfg.n_steps):
            # Held-out metrics on one batch of eval tokens: about a third of a step.
            held_out = evaluate(sae, eval_x[: cfg.batch_size_tokens], mm_dtype)
            logger.log(
                {
                    "train/loss": loss,
                    **{f"train/{name}": value.item() for name, value in stats.terms.items()},
                    "train/dead_fraction": _dead_fraction(tokens_since_fired, cfg, done),
                    **{f"eval/{name}": value for name, value in held_out.items()},
                    "lr": lr,
                    **arch.schedule(step),
                    "compute_flops": done / cfg.n_steps * cfg.compute_flops,
                },
                step=done,
            )
        if checkpoint_dir is None or done == cfg.n_steps:
            continue
        due = cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0
        timely = not cfg.checkpoint_every_steps and time.perf_counter() - last_checkpoint_t > checkpoint_every_s
        fork = done in fork_steps
        if due or timely or fork:  # one save serves both a periodic checkpoint and a fork
            checkpoint.save(checkpoint_dir, sae, optimizer, done, tokens_since_fired, cfg.resume_key)
        if due or timely:
            last_checkpoint_t = time.perf_counter()
            if on_checkpoint is not None:
                on_checkpoint(checkpoint_dir, done)
        if fork and on_fork is not None:
            on_fork(checkpoint_dir, done)

    density = None
    if norm_scale is None:
        metrics = evaluate(sae, eval_x, mm_dtype)
    else:
        metrics, density = final_evaluation(sae, eval_x, norm_scale, mm_dtype)
    metrics["dead_fraction"] = _dead_fraction(tokens_since_fired, cfg, cfg.n_steps)
    metrics["compute_flops"] = cfg.compute_flops
    metrics["n_tokens"] = float(cfg.n_tokens)
    steps_run = cfg.n_steps - start_step
    metrics["tokens_per_s"] = steps_run * cfg.batch_size_tokens / max(train_time_s, 1e-9)
    metrics["step"] = float(cfg.n_steps)
    if logger is not None:
        logger.log(metrics, step=cfg.n_steps)
    return TrainResult(sae, metrics, density)


def _dead_fraction(tokens_since_fired: torch.Tensor, cfg: RunConfig, steps_done: int) -> float:
    """Features silent over the window (10^7 tokens), or over every token seen when fewer."""
    window = min(cfg.dead_window_tokens, steps_done * cfg.batch_size_tokens)
    return (tokens_since_fired >= window).float().mean().item()
