"""What splice evaluation costs per SAE, against what a demo trial costs to train.

    python bench/splice_eval.py [--threads 1] [--reps 3] [--n-features 4096]
                                [--minilm-tokens 4096] [--smollm2-tokens 4096]
                                [--trial-cache DIR] [--no-trial]

Per model (MiniLM's sentence-embedding score, SmolLM2's CE/KL): the load, the one-off
clean + zero-ablated passes (`build`), the median seconds of one SAE's spliced pass from
the splice upwards (`per_sae_s`) and through the whole model with a hook
(`per_sae_full_model_s`), the seconds per SAE of `score_many` over 3 SAEs (the clean
logits shared), and the size and load time of the saved reference. The SAE is a random
ReLU SAE of `--n-features` (its cost, not its quality, is what is timed). Then two
trainings of the demo's stage-1 grid through `monoscale train` (F=813 at its smallest and
largest budget, batch 512, steps from sweeps.spec_sizes.isoflop_steps) on a small MiniLM
cache, with the same thread count, and the fraction of each trial's wall time that one
SAE's splice evaluation would add. One JSON line on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from sae_core import corpus  # noqa: E402
from sae_core.activations import load_model  # noqa: E402
from sae_core.splice import LMSplice  # noqa: E402
from sae_core.splice_embedding import EmbeddingSplice  # noqa: E402
from sweeps.spec_sizes import isoflop_steps  # noqa: E402

DEMO_BUDGETS = (0.6e12, 4.8e12)  # sweeps/demo.yaml: the smallest and largest
DEMO_N_FEATURES, DEMO_BATCH, MINILM_D = 813, 512, 384
N_MANY = 3


class RandomReLU:
    """f = ReLU(x W_enc + b_enc), x̂ = f W_dec + b_dec, W_enc = W_decᵀ, rows of norm 0.1."""

    def __init__(self, d: int, n_features: int) -> None:
        w = torch.randn(n_features, d, generator=torch.Generator().manual_seed(0))
        self.w_dec = 0.1 * w / w.norm(dim=1, keepdim=True)
        self.w_enc, self.b_enc, self.b_dec = self.w_dec.T.contiguous(), torch.zeros(
            n_features), torch.zeros(d)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.w_dec + self.b_dec


def log(message: str) -> None:
    print(f"[splice_eval] {message}", file=sys.stderr, flush=True)


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - started, 2)


def held_out() -> Any:
    return itertools.islice(corpus.documents("stdlib"), 100, None)


def bench_model(name: str, n_tokens: int, n_features: int, reps: int) -> dict[str, Any]:
    (net, tokenizer), load_s = timed(lambda: load_model(name, lm_head=name == "smollm2"))
    builder = LMSplice if name == "smollm2" else EmbeddingSplice
    log(f"{name}: loaded in {load_s} s; clean and zero passes over {n_tokens} tokens")
    splice, build_s = timed(lambda: builder.build(net, tokenizer, held_out(),
                                                  n_tokens=n_tokens))
    coder = RandomReLU(net.config.hidden_size, n_features)
    upper, full = [], []
    for rep in range(reps):
        metrics, seconds = timed(lambda: splice.score(coder))
        upper.append(seconds)
        full.append(timed(lambda: splice.score(coder, upper_only=False))[1])
        log(f"{name}: rep {rep}: {upper[-1]} s from the splice up, {full[-1]} s whole model")
    n_kept = metrics.get("n_tokens_kl", metrics.get("n_tokens"))
    per_sae = statistics.median(upper)
    # Several SAEs at once (`monoscale eval SPEC`): the clean logits are shared.
    many_s = timed(lambda: splice.score_many([coder] * N_MANY))[1]
    with tempfile.TemporaryDirectory() as tmp:  # what a sweep's trial would load
        path = Path(tmp) / "reference.safetensors"
        splice.save(path)
        loaded_s = timed(lambda: builder.load(path, net))[1]
        size_mb = round(path.stat().st_size / 2**20, 1)
    return {"n_tokens": n_kept, "load_s": load_s, "reference_s": build_s,
            "per_sae_s": per_sae, "per_sae_full_model_s": statistics.median(full),
            f"per_sae_in_score_many_of_{N_MANY}_s": round(many_s / N_MANY, 2),
            "per_sae_tokens_per_s": round(n_kept / per_sae), "reference_file_mb": size_mb,
            "reference_load_s": loaded_s, "layer": splice.splice.layer,
            "n_layers": net.config.num_hidden_layers}


def monoscale(*args: str, threads: int) -> tuple[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout, round(time.perf_counter() - started, 2)


def demo_trials(cache: Path | None, threads: int) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="splice-bench-"))
    if cache is None:
        cache = tmp / "minilm"
        log("building a 300k-token MiniLM cache for the demo trials")
        monoscale("cache", "--model", "minilm", "--corpus", "stdlib", "--n-tokens", "300000",
                  "--out", str(cache), threads=threads)
    trials = []
    for budget in DEMO_BUDGETS:
        n_steps = isoflop_steps(budget, MINILM_D, DEMO_N_FEATURES, DEMO_BATCH)
        out, wall_s = monoscale("train", "--cache", str(cache), "--n-features",
                                str(DEMO_N_FEATURES), "--n-steps", str(n_steps), "--lr",
                                "1e-3", "--batch-size-tokens", str(DEMO_BATCH), "--out",
                                str(tmp / f"run-{budget:.1e}"), threads=threads)
        metrics = json.loads(out.strip().splitlines()[-1])
        train_s = round(n_steps * DEMO_BATCH / metrics["tokens_per_s"], 2)
        trials.append({"compute_flops": budget, "n_features": DEMO_N_FEATURES,
                       "n_steps": n_steps, "wall_s": wall_s, "train_loop_s": train_s})
        log(f"demo trial {trials[-1]}")
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n-features", type=int, default=4096)
    parser.add_argument("--minilm-tokens", type=int, default=4096)
    parser.add_argument("--smollm2-tokens", type=int, default=4096)
    parser.add_argument("--trial-cache", type=Path)
    parser.add_argument("--no-trial", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    result: dict[str, Any] = {"torch_threads": args.threads, "n_features": args.n_features}
    for name, n_tokens in (("minilm", args.minilm_tokens), ("smollm2", args.smollm2_tokens)):
        result[name] = bench_model(name, n_tokens, args.n_features, args.reps)
    if not args.no_trial:
        trials = demo_trials(args.trial_cache, args.threads)
        result["demo_trials"] = trials
        result["fraction_of_demo_trial"] = {
            name: [round(result[name]["per_sae_s"] / t["wall_s"], 3) for t in trials]
            for name in ("minilm", "smollm2")}
    result["load_average"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
