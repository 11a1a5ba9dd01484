"""SAELens's training step (its standard ReLU, TopK or BatchTopK SAE), timed on given
weights and batch.

Runs in SAELens's own virtualenv (bench/README.md), as a subprocess of
train_throughput.py, so that monoscale never imports sae_lens. Protocol on stdin/stdout,
one JSON object per line, so the caller can interleave its repetitions with ours:

    in: {"load": "STATE.safetensors", "arch": "standard" | "topk" | "batchtopk", "k": 32}
                                       W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d],
                                       x [B, d]: a fresh SAE and trainer -> out: {"ok": true}
    in: {"n_steps": N}                 -> out: {"seconds": [N step times], "l0": of the last}
    in: {"quit": true}                 -> exits

One step is `SAETrainer.step(batch)`: SAELens's training forward pass (standard: MSE +
decoder-norm weighted L1, λ = 5, no warm-up; topk/batchtopk: MSE + its aux loss, its
defaults otherwise), autograd backward, grad-norm clip 1.0, Adam, LR and coefficient
schedulers, and its feature-firing statistics: the loop of `SAETrainer.fit()` without the
data provider.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from sae_lens import LoggingConfig, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file

# Small enough that the weights, and so the sparsity being timed, hardly move over the
# few steps timed; the step's cost does not depend on the learning rate.
LR = 1e-6


def make_sae(arch: str, d_in: int, n_features: int, k: int) -> torch.nn.Module:
    common = {"d_in": d_in, "d_sae": n_features, "normalize_activations": "none"}  # normalised
    if arch == "standard":  # the April-2024 recipe, as monoscale trains it
        return StandardTrainingSAE(StandardTrainingSAEConfig(
            **common, apply_b_dec_to_input=False, l1_coefficient=5.0, l1_warm_up_steps=0))
    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=k, apply_b_dec_to_input=True))
    return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=k,
                                                           apply_b_dec_to_input=True))


def make_trainer(path: str, arch: str = "standard", k: int = 32
                 ) -> tuple[SAETrainer, torch.Tensor]:
    state = load_file(path)
    x = state.pop("x")
    d_in, n_features = state["W_enc"].shape
    sae = make_sae(arch, d_in, n_features, k)
    sae.load_state_dict({**sae.state_dict(), **state}, strict=True)  # its own extra buffers
    trainer_cfg = SAETrainerConfig(
        total_training_samples=x.shape[0] * 10**6,
        train_batch_size_samples=x.shape[0],
        lr=LR,
        lr_end=LR,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(())), x


def main() -> None:
    trainer, x = None, None
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            return
        if "load" in request:
            trainer, x = make_trainer(request["load"], request.get("arch", "standard"),
                                      request.get("k", 32))
            print(json.dumps({"ok": True}), flush=True)
            continue
        assert trainer is not None and x is not None, "load a state first"
        seconds, l0 = [], 0.0
        for _ in range(request["n_steps"]):
            started = time.perf_counter()
            out = trainer.step(x)
            seconds.append(time.perf_counter() - started)
            l0 = (out.feature_acts > 0).sum(-1).float().mean().item()
        print(json.dumps({"seconds": seconds, "l0": l0, "torch_threads": torch.get_num_threads()}),
              flush=True)


if __name__ == "__main__":
    main()
