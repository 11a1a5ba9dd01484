"""Held-out metrics of a trained SAE, for any architecture (docs/METHOD.md §1), and
the run's final evaluation: the same pass, with the field's standard reconstruction set
(sae_core/metrics.py, SAEBench's names) in model units beside them."""

from __future__ import annotations

from typing import NamedTuple

import torch

from sae_core.device import matmul_autocast
from sae_core.kernels import SPARSE_MAX_DENSITY, ActiveSet, sparse_decode
from sae_core.metrics import ReconstructionSums, mean_rows
from sae_core.model import SAE

# f is decoded through its active entries when it is sparse (kernels.SPARSE_MAX_DENSITY):
# on one thread, d=384, F=8192, 65,536 tokens at L0 43, the final evaluation took 14.5 s
# dense and 10.2 s so (docs/METHOD.md §5.4).

# The reconstruction set's names that the trainer's own metrics already have. Three mean
# the same (explained_variance, normalized_mse, l0: the trainer's are kept, so runs from
# before the set compare with later ones); SAEBench's mse is in model units, the trainer's
# in the normalised units the loss is computed in, so the model-units one is logged as
# mse_model_units (and is `mse` again in eval.json, SAEBench's layout).
SHARED_NAMES = frozenset({"explained_variance", "normalized_mse", "l0"})
MODEL_UNITS_MSE = "mse_model_units"


class FinalEvaluation(NamedTuple):
    metrics: dict[str, float]  # evaluate()'s, then the reconstruction set (run_metric_names)
    feature_density: torch.Tensor  # [F] float64: fraction of eval tokens each fired on


@torch.no_grad()
def evaluate(
    sae: SAE,
    x: torch.Tensor,
    mm_dtype: torch.dtype | None = None,
    chunk_tokens: int = 8192,
) -> dict[str, float]:
    """loss, mse, l0, explained_variance and the architecture's own terms (the ReLU SAE:
    l1_penalty) over held-out x [N, d].

    The loss is the architecture's (the ReLU SAE: the paper's proxy MSE + λ·penalty at
    the final λ). Computed in chunks so that N x F never sits in memory at once.
    """
    return _held_out(sae, x, mm_dtype, chunk_tokens, None, 1.0)


@torch.no_grad()
def final_evaluation(sae: SAE, x: torch.Tensor, norm_scale: float,
                     mm_dtype: torch.dtype | None = None,
                     chunk_tokens: int = 8192) -> FinalEvaluation:
    """evaluate() on normalised x [N, d] (x_raw · norm_scale) and, from the same encodings,
    the reconstruction set of sae_core/metrics.py in model units: x / norm_scale against
    x̂ / norm_scale, as `RawUnits(sae, norm_scale)` sees raw activations."""
    sums = ReconstructionSums(mean_rows(x, chunk_tokens) / norm_scale)
    metrics = _held_out(sae, x, mm_dtype, chunk_tokens, sums, norm_scale)
    reconstruction = sums.result()
    return FinalEvaluation({**run_metric_names(reconstruction.metrics), **metrics},
                           reconstruction.feature_density)


def run_metric_names(reconstruction: dict[str, float]) -> dict[str, float]:
    """The reconstruction set under the names a run logs: SAEBench's, but mse ->
    mse_model_units, and without the names the trainer's own metrics hold."""
    out = {k: v for k, v in reconstruction.items() if k not in SHARED_NAMES | {"mse"}}
    out[MODEL_UNITS_MSE] = reconstruction["mse"]
    return out


def _held_out(sae: SAE, x: torch.Tensor, mm_dtype: torch.dtype | None, chunk_tokens: int,
              sums: ReconstructionSums | None, norm_scale: float) -> dict[str, float]:
    n_tokens = x.shape[0]
    sq_err = active = 0.0
    totals: dict[str, float] = {}
    for chunk in x.split(chunk_tokens):
        with matmul_autocast(chunk.device, mm_dtype):
            f = sae.encode(chunk)
            x_hat = _decode(sae, f) if mm_dtype is None else sae.decode(f)
        f, x_hat = f.float(), x_hat.float()
        sq_err += (chunk - x_hat).pow(2).sum().item()
        active += (f > 0).sum().item()
        for name, value in sae.arch.held_out_terms(sae, f).items():
            totals[name] = totals.get(name, 0.0) + value.item()
        if sums is not None:
            sums.add(chunk / norm_scale, f, x_hat / norm_scale)
    total_var = (x - x.mean(0)).pow(2).sum().item()
    metrics = {"mse": sq_err / n_tokens, **{k: v / n_tokens for k, v in totals.items()},
               "l0": active / n_tokens}
    return {
        "loss": sae.arch.held_out_loss(metrics),
        **metrics,
        "explained_variance": 1.0 - sq_err / total_var,
        # 1 - explained variance: the metric that compares architectures at matched L0
        "normalized_mse": sq_err / total_var,
    }


def _decode(sae: SAE, f: torch.Tensor) -> torch.Tensor:
    """x̂ = f W_dec + b_dec, through f's active entries only when it is sparse."""
    if int(torch.count_nonzero(f)) > SPARSE_MAX_DENSITY * f.numel():
        return sae.decode(f)  # counted first: the indices of a dense f would be huge
    mask = f != 0
    return sparse_decode(f[mask], sae.W_dec, ActiveSet.where(mask)) + sae.b_dec
