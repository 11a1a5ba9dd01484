"""The TopK family: TopK (Gao et al. 2024), BatchTopK (Bussmann et al. 2024) and
Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2024). docs/METHOD.md §3.1-3.4.

    pre = (x - b_dec) W_enc + b_enc
    f   = the k largest of ReLU(pre) per token (TopK), or the k·B largest over the batch of
          B tokens (BatchTopK: k on average per token); at inference the batch ones keep
          what exceeds a threshold estimated in training (an EMA of the smallest kept value)
    L   = ‖x − x̂‖² + α · AuxK,   no sparsity penalty: k sets L0
    Matryoshka: the MSE term is the mean over nested prefixes of the dictionary of the
          error of the reconstruction from that prefix's latents alone.

AuxK (Gao App. A.2): the top aux_k pre-activations among dead latents (silent for the
dead window, 10M tokens) reconstruct the residual x − x̂, normalised by the residual's
variance (openai/sparse_autoencoder). Decoder rows are kept at unit norm (unit_norm.py);
b_dec starts at the geometric median of the first batch, W_enc = W_decᵀ at init. Every
product but the encoder's runs over the active entries (sae_core/kernels.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sae_core import loss
from sae_core.archs import unit_norm
from sae_core.device import matmul_autocast
from sae_core.kernels import ActiveSet, encoder_values, sparse_decode
from sae_core.model import SAE, StepContext, StepStats

# Per-token candidates for the batch top-k: the k·B largest entries of the batch are
# found among each token's top CANDIDATES_PER_K · k (exact unless a token needs more,
# when the whole batch is searched). The flat search over 67M entries took ~6x as long as
# the per-token one at B=4096, F=16384 (measured once on a 2-core CPU machine).
CANDIDATES_PER_K = 4


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5
                     ) -> torch.Tensor:
    """Weiszfeld's iteration from the mean: [N, d] -> [d]."""
    guess = points.mean(0)
    for _ in range(max_iter):
        weights = 1 / (points - guess).norm(dim=1).clamp_min(1e-12)
        new = (weights / weights.sum()) @ points
        if (new - guess).norm() < tol:
            return new
        guess = new
    return guess


def per_token_topk(pre: torch.Tensor, k: int) -> ActiveSet:
    """The k largest positive entries of each row of pre [B, F]."""
    top = pre.topk(k, dim=1, sorted=False)
    return ActiveSet.of_indices(top.indices, top.values > 0, pre.shape[1])


def batch_topk(pre: torch.Tensor, k_total: int) -> ActiveSet:
    """The k_total largest positive entries of pre [B, F], over the whole batch."""
    n_tokens, n_features = pre.shape
    per_row = min(n_features, CANDIDATES_PER_K * -(-k_total // n_tokens))
    cand = pre.topk(per_row, dim=1, sorted=False)
    chosen = cand.values.view(-1).topk(min(k_total, cand.values.numel()), sorted=False)
    rows = chosen.indices // per_row
    if per_row < n_features and int(torch.bincount(rows, minlength=n_tokens).max()) == per_row:
        flat = pre.view(-1).topk(k_total, sorted=False)  # a token may need more: exact search
        order = flat.indices.sort().values
        keep = pre.view(-1)[order] > 0
        return ActiveSet(order[keep] // n_features, order[keep] % n_features, n_tokens,
                         n_features)
    keep = torch.zeros_like(cand.values, dtype=torch.bool).view(-1)
    keep[chosen.indices] = True
    keep = keep.view_as(cand.values) & (cand.values > 0)
    return ActiveSet.of_indices(cand.indices, keep, n_features)


@dataclass(frozen=True)
class TopK:
    name: str  # topk | batchtopk | matryoshka_batchtopk
    k: int
    aux_k: int
    aux_coefficient: float
    init_decoder_norm: float = 1.0
    threshold_rate: float = 0.01  # batch ones: EMA rate of the inference threshold
    group_sizes: tuple[int, ...] | None = None  # Matryoshka: sizes summing to F
    batch: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch", self.name != "topk")

    def saelens_config(self) -> dict[str, object]:
        if self.batch:  # SAELens saves BatchTopK SAEs as JumpReLU ones, with the threshold
            return {"architecture": "jumprelu", "apply_b_dec_to_input": True}
        return {"architecture": "topk", "apply_b_dec_to_input": True, "k": self.k,
                "rescale_acts_by_decoder_norm": False}

    def init(self, d_in: int, n_features: int, generator: torch.Generator) -> SAE:
        sae = SAE(d_in, n_features, self)
        unit_norm.init_tied(sae, self.init_decoder_norm, generator)
        if self.batch:  # one value for every latent, as SAELens saves it; -1: not yet set
            sae.register_buffer("threshold", torch.full((n_features,), -1.0))
        return sae

    def fit_to_data(self, sae: SAE, x: torch.Tensor) -> None:
        with torch.no_grad():
            sae.b_dec.copy_(geometric_median(x))

    def schedule(self, step: int) -> dict[str, float]:
        return {}

    def _pre(self, sae: SAE, x: torch.Tensor, mm_dtype: torch.dtype | None) -> torch.Tensor:
        with torch.no_grad(), matmul_autocast(x.device, mm_dtype):
            return torch.addmm(sae.b_enc, x - sae.b_dec, sae.W_enc).to(sae.W_dec.dtype)  # [B, F]

    def encode(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        pre = torch.addmm(sae.b_enc, x - sae.b_dec, sae.W_enc)
        if self.batch:  # inference: the threshold estimated in training
            return pre.relu_() * (pre > sae.get_buffer("threshold"))
        top = pre.topk(self.k, dim=1, sorted=False)
        return torch.zeros_like(pre).scatter_(1, top.indices, top.values.relu())

    def gradients(self, sae: SAE, x: torch.Tensor, ctx: StepContext) -> StepStats:
        sae.zero_grad(set_to_none=True)
        pre = self._pre(sae, x, ctx.mm_dtype)
        active = batch_topk(pre, self.k * x.shape[0]) if self.batch else per_token_topk(
            pre, self.k)
        values = encoder_values(pre, x, sae.W_enc, sae.b_enc, sae.b_dec, active)
        if self.group_sizes is None:
            x_hat = sparse_decode(values, sae.W_dec, active) + sae.b_dec
            mse = loss.mse(x, x_hat)
        else:
            x_hat, mse = self._matryoshka(sae, x, values, active)
        aux = self._auxk(sae, x, pre, (x - x_hat).detach(), ctx.dead)
        total = mse + self.aux_coefficient * aux
        total.backward()
        unit_norm.remove_parallel_gradient(sae.W_dec)
        if self.batch and active.nnz:
            with torch.no_grad():  # the smallest kept activation, averaged over batches
                threshold = sae.get_buffer("threshold")
                smallest = values.detach().min().expand_as(threshold)
                if threshold[0] < 0:
                    threshold.copy_(smallest)
                else:
                    threshold.lerp_(smallest, self.threshold_rate)
        return StepStats(total.detach(), {"mse": mse.detach(), "auxk_loss": aux.detach()},
                         active.fired())

    def _matryoshka(self, sae: SAE, x: torch.Tensor, values: torch.Tensor,
                    active: ActiveSet) -> tuple[torch.Tensor, torch.Tensor]:
        """(the full reconstruction, the mean over prefixes of each prefix's MSE)."""
        assert self.group_sizes is not None
        x_hat, losses, start = sae.b_dec.expand_as(x), [], 0
        for size in self.group_sizes:
            inside = (active.cols >= start) & (active.cols < start + size)
            group = ActiveSet(active.rows[inside], active.cols[inside], active.n_tokens,
                              active.n_features)
            x_hat = x_hat + sparse_decode(values[inside], sae.W_dec, group)
            losses.append(loss.mse(x, x_hat))
            start += size
        return x_hat, torch.stack(losses).mean()

    def _auxk(self, sae: SAE, x: torch.Tensor, pre: torch.Tensor, residual: torch.Tensor,
              dead: torch.Tensor) -> torch.Tensor:
        """The dead latents' reconstruction of the residual, over its variance."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return residual.new_zeros(())
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        aux_active = per_token_topk(dead_pre, min(self.aux_k, n_dead))
        values = encoder_values(pre, x, sae.W_enc, sae.b_enc, sae.b_dec, aux_active)
        error = (residual - sparse_decode(values, sae.W_dec, aux_active)).pow(2).sum(1).mean()
        variance = (residual - residual.mean(0)).pow(2).sum(1).mean()
        return (error / variance).nan_to_num(0.0)

    def after_step(self, sae: SAE) -> None:
        unit_norm.renormalise(sae.W_dec)

    def held_out_terms(self, sae: SAE, f: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def held_out_loss(self, metrics: dict[str, float]) -> float:
        return metrics["mse"]  # k, not a penalty, sets the sparsity
