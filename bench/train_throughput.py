"""Training-step throughput: ours vs SAELens vs the matmul floor, one JSON line on stdout.

    python bench/train_throughput.py [--quick] [--device cuda] [--reps 3] [--l0 64]

For each (d, F) in {384, 768} x {4096, 16384} at batch 4096 tokens:
- ours: one trainer step as sae_core/trainer.py runs it (the architecture's gradients,
  grad-norm clip 1.0, Adam), on a sparse state (L0 ≈ --l0, measured and reported) and on the
  step-0 state (L0 ≈ F/2, the dense regime of the first steps);
- floor: the six matrix products of a dense step run alone (x W_enc, f W_dec, fᵀ g_x̂,
  g_x̂ W_decᵀ, xᵀ g_pre, g_pre W_encᵀ);
- saelens: SAELens's standard ReLU SAE and `SAETrainer.step` (autograd, clip, Adam) on
  the same weights and batch, in its own virtualenv (bench/_saelens_step.py), its
  process's malloc as it is.
Ours and the floor run in this process with glibc's malloc thresholds raised, as the
trainer raises them on CPU (sae_core/host_memory.py); --malloc-as-is leaves them.
The machine is shared and noisy: repetitions of the four are interleaved and the
medians reported, so the ratios compare like with like. Also reported: MiniLM activation
generation tokens/s, and the cache reader's wait per batch as a fraction of a step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _data_side import activation_generation, cache_wait
from _saelens_client import SAELENS_PYTHON, SaeLens
from _states import gradients, initial_sae, normalised_batch, sparse_sae, topk_sae
from safetensors.torch import save_file

from sae_core.host_memory import keep_freed_memory
from sae_core.model import SAE

SHAPES = [(384, 4096), (384, 16384), (768, 4096), (768, 16384)]
TOPK_SHAPES = [(384, 16384), (768, 16384)]  # k = 32
TOPK_ARCHS = ("topk", "batchtopk")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


class OurStep:
    """One step of sae_core/trainer.py's loop on a fixed batch, timed in two parts."""

    def __init__(self, sae: SAE, x: torch.Tensor, mm_dtype: torch.dtype | None) -> None:
        self.sae, self.x, self.mm_dtype = sae, x, mm_dtype
        # lr 1e-6: the weights, so the sparsity being timed, hardly move between reps.
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=1e-6, betas=(0.9, 0.999))
        self.grad_s: list[float] = []
        self.step_s: list[float] = []

    def __call__(self) -> None:
        device = self.x.device
        sync(device)
        started = time.perf_counter()
        gradients(self.sae, self.x, self.mm_dtype).item()  # the trainer checks it every step
        sync(device)
        grads_done = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.optimizer.step()
        self.sae.arch.after_step(self.sae)  # the TopK family renormalises its decoder
        sync(device)
        self.grad_s.append(grads_done - started)
        self.step_s.append(time.perf_counter() - started)

    def l0(self) -> float:
        with torch.no_grad():
            return self.sae.encode(self.x).gt(0).sum(1).float().mean().item()


def floor_products(x: torch.Tensor, sae: SAE, mm_dtype: torch.dtype | None
                   ) -> Callable[[], None]:
    """The six products of a dense step on operands of the step's shapes and dtype."""
    dtype = mm_dtype or x.dtype
    xm, w_enc, w_dec = x.to(dtype), sae.W_enc.detach().to(dtype), sae.W_dec.detach().to(dtype)
    f = torch.rand(x.shape[0], w_enc.shape[1], device=x.device, dtype=dtype)  # [B, F]
    g_xhat = torch.randn_like(xm)  # [B, d]
    g_pre = torch.rand_like(f)  # [B, F]

    def run() -> None:
        xm @ w_enc, f @ w_dec, f.T @ g_xhat, g_xhat @ w_dec.T, xm.T @ g_pre, g_pre @ w_enc.T

    return run


def bench_shape(d_in: int, n_features: int, batch: int, args: argparse.Namespace,
                saelens: SaeLens | None, workdir: Path) -> dict[str, object]:
    device = torch.device(args.device)
    mm_dtype = torch.bfloat16 if device.type == "cuda" else None
    gen = torch.Generator().manual_seed(0)
    # 1024 calibration tokens resolve firing rates down to 1e-3, below the rarest feature
    # that should fire on a 4096-token batch; the L0 reached on x is measured, not assumed.
    calibration = normalised_batch(1024, d_in, gen)
    x = normalised_batch(batch, d_in, gen)
    sparse = sparse_sae(d_in, n_features, args.l0, gen, calibration)
    dense = initial_sae(d_in, n_features, gen)
    ours_sparse = OurStep(sparse.to(device), x.to(device), mm_dtype)
    ours_dense = OurStep(dense.to(device), x.to(device), mm_dtype)
    floor = floor_products(x.to(device), sparse, mm_dtype)
    l0_sparse, l0_dense = ours_sparse.l0(), ours_dense.l0()

    runs: dict[str, Callable[[], float]] = {
        "ours": lambda: timed(ours_sparse, device),
        "ours_dense": lambda: timed(ours_dense, device),
        "floor": lambda: timed(floor, device),
    }
    saelens_l0 = None
    if saelens is not None:
        state_file = workdir / f"state_{d_in}_{n_features}.safetensors"
        save_file({**{k: v.detach().contiguous() for k, v in sparse.state_dict().items()},
                   "x": x}, str(state_file))
        saelens.ask({"load": str(state_file)})
        runs["saelens"] = lambda: float(saelens.ask({"n_steps": 1})["seconds"][0])  # type: ignore[index]
    for name in ("ours", "saelens"):  # warm-up: first-call allocations, thread pools; the
        if name in runs:  # dense and floor runs reuse them (and cost ~20 s each at 768x16384)
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(args.reps):  # interleaved, so that load changes hit all alike
        for name, run in runs.items():
            times[name].append(run())
        log(f"d={d_in} F={n_features} rep {rep + 1}/{args.reps}: "
            + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    if saelens is not None:
        saelens_l0 = saelens.ask({"n_steps": 1})["l0"]

    def tps(seconds: list[float]) -> float:
        return batch / statistics.median(seconds)

    ours_tps, floor_tps = tps(times["ours"]), tps(times["floor"])
    row: dict[str, object] = {
        "d_in": d_in, "n_features": n_features,
        "l0": round(l0_sparse, 1),
        "ours_tokens_per_s": round(ours_tps),
        "ours_grad_only_tokens_per_s": round(tps(ours_sparse.grad_s[1:])),
        "floor_tokens_per_s": round(floor_tps),
        "ours_over_floor": round(ours_tps / floor_tps, 2),
        "dense_l0": round(l0_dense, 1),
        "ours_dense_tokens_per_s": round(tps(times["ours_dense"])),
        "ours_dense_over_floor": round(tps(times["ours_dense"]) / floor_tps, 2),
        "ours_l0_after": round(ours_sparse.l0(), 1),
    }
    if saelens is not None:
        saelens_tps = tps(times["saelens"])
        row.update(saelens_tokens_per_s=round(saelens_tps), saelens_l0=saelens_l0,
                   ours_over_saelens=round(ours_tps / saelens_tps, 2),
                   ours_dense_over_saelens=round(tps(times["ours_dense"]) / saelens_tps, 2))
    return row


def bench_topk_shape(arch: str, d_in: int, n_features: int, batch: int,
                     args: argparse.Namespace, saelens: SaeLens | None, workdir: Path
                     ) -> dict[str, object]:
    """The TopK family's step: ours (sparse from the first step: only x W_enc is dense)
    against SAELens's TopK or BatchTopK training step on the same weights and batch, and
    against the dense floor. Its cost does not depend on training progress (k is fixed;
    AuxK runs only once latents are dead, after the 10M-token window)."""
    device = torch.device(args.device)
    mm_dtype = torch.bfloat16 if device.type == "cuda" else None
    gen = torch.Generator().manual_seed(0)
    x = normalised_batch(batch, d_in, gen)
    sae = topk_sae(arch, d_in, n_features, args.k, gen, x)
    ours = OurStep(sae.to(device), x.to(device), mm_dtype)
    floor = floor_products(x.to(device), sae, mm_dtype)
    runs: dict[str, Callable[[], float]] = {"ours": lambda: timed(ours, device),
                                            "floor": lambda: timed(floor, device)}
    if saelens is not None:
        state_file = workdir / f"state_{arch}_{d_in}_{n_features}.safetensors"
        save_file({**{k: v.detach().contiguous() for k, v in sae.named_parameters()}, "x": x},
                  str(state_file))
        saelens.ask({"load": str(state_file), "arch": arch, "k": args.k})
        runs["saelens"] = lambda: float(saelens.ask({"n_steps": 1})["seconds"][0])  # type: ignore[index]
    for name in ("ours", "saelens"):
        if name in runs:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(args.reps):
        for name, run in runs.items():
            times[name].append(run())
        log(f"{arch} d={d_in} F={n_features} rep {rep + 1}/{args.reps}: "
            + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))

    def tps(seconds: list[float]) -> float:
        return batch / statistics.median(seconds)

    ours_tps, floor_tps = tps(times["ours"]), tps(times["floor"])
    row: dict[str, object] = {"arch": arch, "d_in": d_in, "n_features": n_features,
                              "k": args.k, "ours_tokens_per_s": round(ours_tps),
                              "floor_tokens_per_s": round(floor_tps),
                              "ours_over_floor": round(ours_tps / floor_tps, 2)}
    if saelens is not None:
        saelens_tps = tps(times["saelens"])
        row.update(saelens_tokens_per_s=round(saelens_tps),
                   ours_over_saelens=round(ours_tps / saelens_tps, 2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, 1 rep (smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 products)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved timed repetitions")
    parser.add_argument("--l0", type=float, default=64.0,
                        help="target L0 of the sparse state (trained SAEs on MiniLM reached "
                             "4-18 of 512, docs/METHOD.md §5.2; the paper's bar is < 300)")
    parser.add_argument("--batch-size-tokens", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32, help="the TopK rows' k")
    parser.add_argument("--archs", nargs="+", default=["relu", *TOPK_ARCHS],
                        help="relu (the four shapes) and/or topk, batchtopk (TOPK_SHAPES)")
    parser.add_argument("--no-saelens", action="store_true")
    parser.add_argument("--malloc-as-is", action="store_true",
                        help="leave glibc's malloc thresholds as they are (the trainer raises "
                             "them on CPU: sae_core/host_memory.py)")
    parser.add_argument("--activation-tokens", type=int, default=10_000)
    args = parser.parse_args()
    shapes = [(128, 4096)] if args.quick else SHAPES
    if args.quick:
        args.reps, args.activation_tokens = 1, 2_000
    started = time.perf_counter()
    # as the trainer does on CPU, before any tensor: ours and the floor run in this process
    host_memory_kept = args.device == "cpu" and not args.malloc_as_is and keep_freed_memory()
    saelens = None
    if not args.no_saelens and args.device == "cpu":  # its venv has the CPU torch build
        if SAELENS_PYTHON.exists():
            saelens = SaeLens()
        else:
            log(f"no SAELens virtualenv at {SAELENS_PYTHON}; see bench/README.md")
    report: dict[str, object] = {
        "device": args.device, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "batch_size_tokens": args.batch_size_tokens,
        "matmul_dtype": "bfloat16" if args.device.startswith("cuda") else "float32",
        "reps": args.reps, "statistic": "median of interleaved reps",
        "ours": "arch.gradients + clip_grad_norm_(1.0) + Adam.step, at L0 = l0",
        "ours_dense": "the same at step 0 (init, biases 0), L0 = dense_l0",
        "floor": "the six dense matmuls of a step, alone",
        "host_memory_kept": host_memory_kept,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="monoscale-bench-") as tmp:
            rows = []
            for d_in, n_features in shapes if "relu" in args.archs else []:
                log(f"shape d={d_in} F={n_features}")
                rows.append(bench_shape(d_in, n_features, args.batch_size_tokens, args,
                                        saelens, Path(tmp)))
            report["shapes"] = rows
            topk_rows = []
            for arch in [a for a in args.archs if a in TOPK_ARCHS]:
                for d_in, n_features in [(128, 4096)] if args.quick else TOPK_SHAPES:
                    log(f"{arch} d={d_in} F={n_features} k={args.k}")
                    topk_rows.append(bench_topk_shape(arch, d_in, n_features,
                                                      args.batch_size_tokens, args, saelens,
                                                      Path(tmp)))
            report["topk_shapes"] = topk_rows
    finally:
        if saelens is not None:
            saelens.close()
    report["targets"] = targets(rows) if rows else None
    report["topk_targets"] = topk_targets(topk_rows) if topk_rows else None
    report["cache_reader"] = cache_reader(args)
    log("activation generation (MiniLM middle layer)")
    report["activation_generation"] = activation_generation(args.activation_tokens)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report), flush=True)


def targets(rows: list[dict[str, object]]) -> dict[str, object]:
    """The bars: ours ≥ 1.5x SAELens and ≥ 0.8x the matmul floor, on every shape."""
    def worst(key: str) -> float | None:
        values = [float(r[key]) for r in rows if key in r]  # type: ignore[arg-type]
        return min(values) if values else None

    over_floor, over_saelens = worst("ours_over_floor"), worst("ours_over_saelens")
    return {"min_ours_over_floor": over_floor, "min_ours_over_saelens": over_saelens,
            "min_ours_dense_over_floor": worst("ours_dense_over_floor"),
            "min_ours_dense_over_saelens": worst("ours_dense_over_saelens"),
            "met": over_floor is not None and over_floor >= 0.8
            and over_saelens is not None and over_saelens >= 1.5}


def topk_targets(rows: list[dict[str, object]]) -> dict[str, object]:
    """The TopK family's bars: ours >= 2x SAELens and >= 1.5x the dense floor, every row."""
    over_floor = min(float(r["ours_over_floor"]) for r in rows)  # type: ignore[arg-type]
    vs = [float(r["ours_over_saelens"]) for r in rows if "ours_over_saelens" in r]  # type: ignore[arg-type]
    over_saelens = min(vs) if vs else None
    return {"min_ours_over_floor": over_floor, "min_ours_over_saelens": over_saelens,
            "met": over_floor >= 1.5 and over_saelens is not None and over_saelens >= 2.0}


def cache_reader(args: argparse.Namespace) -> dict[str, object]:
    """The reader against the shortest step benchmarked (the strictest case)."""
    d_in, n_features = min(SHAPES if not args.quick else [(128, 4096)],
                           key=lambda s: s[0] * s[1])
    log(f"cache reader wait at d={d_in} F={n_features}")
    gen = torch.Generator().manual_seed(1)
    batch = args.batch_size_tokens
    sae = sparse_sae(d_in, n_features, args.l0, gen, normalised_batch(batch, d_in, gen))
    device = torch.device(args.device)
    mm_dtype = torch.bfloat16 if device.type == "cuda" else None
    optimizer = torch.optim.Adam(sae.to(device).parameters(), lr=1e-6)

    def step(x: torch.Tensor) -> None:
        gradients(sae, x.to(device), mm_dtype).item()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()

    return cache_wait(step, d_in, batch, n_steps=3 if args.quick else 8)


if __name__ == "__main__":
    main()
