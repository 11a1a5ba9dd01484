"""The field's standard reconstruction metrics of an SAE, over held-out activations.

Names are SAEBench's (`sae_bench/evals/core/main.py`), so that results sit beside
published ones; every formula below says which convention it follows. Shapes: x, x_hat
[N, d] in the units the caller chooses (SAEBench reports model units, mse and the L2 norms
depend on it); f [N, F]. Explained variance has three definitions in circulation
(docs/METHOD.md §4.3); two are here, each named:

- `explained_variance` (pooled): 1 − Σ_i ‖x_i − x̂_i‖² / Σ_i ‖x_i − x̄‖², x̄ the per-
  dimension mean over the eval set; SAELens >= 6.45.1 (`ExplainedVarianceCalculator`).
  SAEBench's batched aggregation at commit 8042bb3 takes x.pow(2).mean(0) for the mean and
  squares a scalar, so its number can differ from this one on data with a large mean.
- `explained_variance_legacy` (per token): mean_i [1 − ‖x_i − x̂_i‖² / ‖x_i − x̄‖²], what
  the SAEBench paper's numbers use. SAEBench takes x̄ over each batch of 16 prompts; here
  it is over the whole eval set (the same as SAEBench's default single batch).
- `normalized_mse` = 1 − explained_variance: Gao et al. 2024's normalised MSE (MSE over
  that of always predicting the mean).

Not here: dictionary_learning's 1 − ΣVar(x − x̂)/ΣVar(x), which centres the residual
and so does not punish a constant bias error.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional

from sae_core.coder import SparseCoder

# Splice scores rise to 1 with quality (sae_core/splice.py, splice_embedding.py); each has
# a falling twin, 1 − score, the form a scaling law (a loss falling as a power law in
# compute) is fitted to (sae_core/splice_setup.py logs them).
SCORE_GAPS = {"ce_loss_score": "ce_loss_gap", "kl_div_score": "kl_div_gap",
              "embedding_cosine_score": "embedding_cosine_gap"}
# Every metric that rises with quality, and what to fit instead (None: no twin is logged).
RISING_METRICS: dict[str, str | None] = {
    **SCORE_GAPS, "explained_variance": "normalized_mse", "explained_variance_legacy": None,
    "cossim": None, "embedding_cos_with_sae": None, "frac_alive": None}


def explained_variance(x: Tensor, x_hat: Tensor) -> Tensor:
    """Pooled: 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ = x.mean(0). [N, d], [N, d] -> []"""
    return 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def explained_variance_legacy(x: Tensor, x_hat: Tensor) -> Tensor:
    """Per token, then averaged: mean_i(1 − ‖x_i − x̂_i‖² / ‖x_i − x̄‖²). -> []"""
    return (1 - (x - x_hat).pow(2).sum(-1) / (x - x.mean(0)).pow(2).sum(-1)).mean()


class Reconstruction(NamedTuple):
    metrics: dict[str, float]  # SAEBench names, plus normalized_mse
    feature_density: Tensor  # [F] float64: fraction of eval tokens on which each is non-zero


@torch.no_grad()
def reconstruction_metrics(coder: SparseCoder, x: Tensor,
                           chunk_tokens: int = 4096) -> Reconstruction:
    """Every reconstruction, shrinkage, sparsity and density metric of `coder` on x [N, d].

    Chunks of `chunk_tokens` rows, so N x F never sits in memory at once (ReconstructionSums
    has the conventions).
    """
    sums = ReconstructionSums(mean_rows(x, chunk_tokens))
    for chunk in x.split(chunk_tokens):
        f = coder.encode(chunk)
        sums.add(chunk, f, coder.decode(f))
    return sums.result()


def mean_rows(x: Tensor, chunk_tokens: int = 4096) -> Tensor:
    """x̄ [d] in float64, summed chunk by chunk."""
    x_mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for chunk in x.split(chunk_tokens):
        x_mean += chunk.double().sum(0)
    return x_mean / x.shape[0]


class ReconstructionSums:
    """reconstruction_metrics accumulated over chunks (x, f, x̂) whose encoding the caller
    ran: the trainer's final evaluation computes them in the pass it makes anyway.

    Sums in float64, since SmolLM2's middle layer carries large constant offsets (Σ‖x − x̄‖²
    is a small difference of large numbers otherwise); x̄ [d] comes first (`mean_rows`).
    Per-token means follow SAEBench: cossim is 0 where x̂ = 0 (SAEBench: NaN); l2_ratio
    divides by 1 where ‖x‖ < 1e-4, as SAEBench does. relative_reconstruction_bias is
    E‖x̂‖² / E⟨x, x̂⟩ over the eval set (Rajamanoharan et al. 2024, eq. 10; SAEBench averages
    it over batches). l0 counts f != 0, l1 sums |f| (SAELens 6.54). mse is ‖x − x̂‖² summed
    over d, averaged over tokens (SAELens 6.54 and monoscale's training loss; SAEBench at
    8042bb3 also divides by the batch's token count).
    """

    def __init__(self, x_mean: Tensor) -> None:
        self.x_mean = x_mean.double()
        self.n_tokens = 0
        self.sums: defaultdict[str, float] = defaultdict(float)
        self.active: Tensor | None = None  # [F] tokens on which each feature fired

    @torch.no_grad()
    def add(self, x: Tensor, f: Tensor, x_hat: Tensor) -> None:
        """One chunk: x, x̂ [n, d] in the units to report, f [n, F]."""
        x64, x_hat = x.double(), x_hat.double()
        resid_sq = (x64 - x_hat).pow(2).sum(-1)
        centred_sq = (x64 - self.x_mean).pow(2).sum(-1)
        norm_in, norm_out = x64.norm(dim=-1), x_hat.norm(dim=-1)
        is_active = f != 0
        per_token = {
            "resid_sq": resid_sq, "centred_sq": centred_sq,
            "explained_variance_legacy": 1 - resid_sq / centred_sq,
            "cossim": functional.cosine_similarity(x64, x_hat, dim=-1, eps=1e-12),
            "l2_norm_in": norm_in, "l2_norm_out": norm_out,
            "l2_ratio": norm_out / torch.where(norm_in < 1e-4, 1.0, norm_in),
            "x_hat_sq": norm_out.pow(2), "x_dot_x_hat": (x64 * x_hat).sum(-1),
            "l0": is_active.sum(-1).double(), "l1": f.abs().double().sum(-1),
        }
        for name, values in per_token.items():
            self.sums[name] += values.sum().item()
        counts = is_active.sum(0)
        self.active = counts if self.active is None else self.active + counts
        self.n_tokens += len(x)

    def result(self) -> Reconstruction:
        assert self.active is not None, "x has no rows"
        sums, n_tokens = self.sums, self.n_tokens
        mean = {name: total / n_tokens for name, total in sums.items()}
        normalized_mse = sums["resid_sq"] / sums["centred_sq"]
        metrics = {
            "explained_variance": 1 - normalized_mse,
            "explained_variance_legacy": mean["explained_variance_legacy"],
            "mse": mean["resid_sq"],
            "normalized_mse": normalized_mse,
            "cossim": mean["cossim"],
            "l2_norm_in": mean["l2_norm_in"],
            "l2_norm_out": mean["l2_norm_out"],
            "l2_ratio": mean["l2_ratio"],
            "relative_reconstruction_bias": sums["x_hat_sq"] / sums["x_dot_x_hat"],
            "l0": mean["l0"],
            "l1": mean["l1"],
        }
        density = self.active.double().cpu() / n_tokens
        return Reconstruction({**metrics, **density_metrics(density)}, density)


def density_metrics(feature_density: Tensor) -> dict[str, float]:
    """SAEBench's misc metrics of firing frequencies [F] (`calculate_misc_metrics`).

    frac_alive: features that fired at least once on the eval tokens (dead fraction =
    1 − frac_alive; the trainer's dead_fraction uses a 10M-token window instead).
    freq_over_1_percent / freq_over_10_percent: the dense features, firing on > 1% / > 10%
    of tokens. normalized_freq_over_*: their share of all firings.
    """
    total = feature_density.sum()
    out = {"frac_alive": (feature_density > 0).double().mean().item()}
    for name, threshold in (("1", 0.01), ("10", 0.1)):
        dense = feature_density > threshold
        out[f"freq_over_{name}_percent"] = dense.double().mean().item()
        share = feature_density[dense].sum() / total if total > 0 else total * 0
        out[f"normalized_freq_over_{name}_percent"] = share.item()
    return out


class DensityHistogram(NamedTuple):
    log10_edges: Tensor  # [n_bins + 1] bin edges in log10(firing frequency), up to 0
    counts: Tensor  # [n_bins] features per bin, alive features only
    n_dead: int  # features that never fired (log10 0 = -inf, so no bin)


def density_histogram(feature_density: Tensor, n_tokens: int,
                      n_bins: int = 40) -> DensityHistogram:
    """Counts of features over log10 firing frequency [F], from 1/n_tokens (one firing,
    the rarest measurable) to 1. The plot of Anthropic's and SAELens's feature-density
    figures; returned as data, to be plotted by analysis/."""
    density = feature_density.double().cpu()
    alive = density[density > 0]
    edges = torch.linspace(-torch.log10(torch.tensor(float(n_tokens))).item(), 0.0,
                           n_bins + 1, dtype=torch.float64)
    counts, _ = torch.histogram(alive.log10().clamp(edges[0].item(), 0.0), bins=edges)
    return DensityHistogram(edges, counts.long(), int((density == 0).sum()))


@torch.no_grad()
def average_max_cosine_similarity(directions: Tensor, chunk_rows: int = 1024) -> float:
    """Mean over features of the largest cosine with any other feature's direction.
    directions [F, d]: decoder rows W_dec, or encoder columns W_encᵀ. SAEBench's
    `average_max_decoder_cosine_sim` / `average_max_encoder_cosine_sim`; chunked so that
    F x F never sits in memory at once."""
    unit = functional.normalize(directions.double(), dim=-1)
    best = []
    for start in range(0, len(unit), chunk_rows):
        sims = unit[start:start + chunk_rows] @ unit.T
        rows = torch.arange(len(sims), device=sims.device)
        sims[rows, rows + start] = -torch.inf
        best.append(sims.max(-1).values)
    return torch.cat(best).mean().item()
