"""Where the sparse step path starts to lose to the dense one: sets SPARSE_MAX_DENSITY.

    python bench/step_crossover.py [--shapes 384x4096 768x16384] [--l0 16 64 ...] [--reps 3]

For each shape and target L0, times the ReLU step with path="dense" and path="sparse"
on the same state and batch, interleaved, and prints one JSON line: per point the
measured density (active fraction of f) and the median seconds of each path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from _states import gradients, normalised_batch, sparse_sae

from sae_core.archs.relu import ReLU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["384x4096", "768x16384"])
    parser.add_argument("--l0", nargs="+", type=float,
                        default=[16, 64, 128, 256, 512, 1024])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size-tokens", type=int, default=4096)
    args = parser.parse_args()
    points = []
    for shape in args.shapes:
        d_in, n_features = (int(v) for v in shape.split("x"))
        for target_l0 in args.l0:
            if target_l0 >= n_features / 2:
                continue
            gen = torch.Generator().manual_seed(0)
            calibration = normalised_batch(args.batch_size_tokens, d_in, gen)
            x = normalised_batch(args.batch_size_tokens, d_in, gen)
            sae = sparse_sae(d_in, n_features, target_l0, gen, calibration)
            with torch.no_grad():
                density = sae.encode(x).gt(0).float().mean().item()
            times: dict[str, list[float]] = {"dense": [], "sparse": []}
            for rep in range(args.reps + 1):  # rep 0 warms up
                for path, seconds in times.items():
                    sae.arch = ReLU(5.0, 0, 0.1, path)
                    started = time.perf_counter()
                    gradients(sae, x)
                    if rep:
                        seconds.append(time.perf_counter() - started)
            point = {"d_in": d_in, "n_features": n_features,
                     "l0": round(density * n_features, 1), "density": round(density, 4),
                     **{f"{p}_s": round(statistics.median(t), 3) for p, t in times.items()}}
            print(json.dumps(point), flush=True, file=sys.stderr)
            points.append(point)
    print(json.dumps({"torch_threads": torch.get_num_threads(), "points": points}))


if __name__ == "__main__":
    main()
