"""What a sweep's MLflow pages say in words: the experiment's and the parent run's
description (MLflow's `mlflow.note.content`, rendered as Markdown on their pages).

Three parts, each written by the command that knows it and kept as its own tag of the
parent run, so that any one can change alone: what was swept on which cache (`submit`),
the fitted laws (`analyze`), and the plan with predicted against achieved (`plan`'s run,
`analyze --plan`). Pure text from specs, configs and fits.json.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sae_core.config import RunConfig


def _g(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _ci(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci and None not in ci else ""


def sweep_text(name: str, stage: int, configs: list[RunConfig], cache_meta: dict[str, Any]
               ) -> str:
    """What the sweep trains, on which data."""
    sizes = sorted({c.n_features for c in configs})
    compute = sorted(c.compute_flops for c in configs)
    saes = Counter(_sae(c) for c in configs)
    source = cache_meta.get("source", {})
    what = (f"{source.get('model')} layer {source.get('layer')} over "
            f"{(source.get('corpus') or {}).get('name', '?')}" if source.get("model")
            else source.get("kind", "activations"))
    lrs = sorted({c.lr for c in configs if c.lr is not None})
    return "\n".join([
        f"**monoscale sweep `{name}`** (stage {stage}): {len(configs)} runs of "
        + ", ".join(f"{n} × {sae}" for sae, n in saes.items()),
        f"- widths F {sizes[0]}–{sizes[-1]} ({len(sizes)} values), compute "
        f"{compute[0]:.2g}–{compute[-1]:.2g} FLOPs, LR {', '.join(f'{lr:.3g}' for lr in lrs[:6])}"
        + (" …" if len(lrs) > 6 else ""),
        f"- cache: {what}, {cache_meta.get('n_train_tokens', '?')} training tokens, d = "
        f"{cache_meta.get('d_in', '?')}",
    ])


def _sae(cfg: RunConfig) -> str:
    if cfg.arch == "relu":
        return f"relu (λ = {cfg.l1_coefficient:g})"
    if cfg.arch == "jumprelu":
        return "jumprelu (" + (f"target L0 {cfg.target_l0:g}" if cfg.target_l0 is not None
                               else f"λ = {cfg.l0_coefficient:g}") + ")"
    return f"{cfg.arch} (k = {cfg.k})"


def laws_text(fits_by_group: dict[str, dict[str, Any]]) -> str:
    """The fitted laws of each group, one block each."""
    lines = ["**Fitted laws** (`monoscale analyze`; 95% bootstrap intervals)"]
    for group, fits in fits_by_group.items():
        pred = fits.get("prediction") or {}
        head = f"- {group or 'all runs'}: {fits.get('n_runs')} runs, metric {fits.get('metric', 'loss')}"
        lines.append(head)
        for key, name in (("features_opt", "F_opt"), ("steps_opt", "steps_opt"),
                          ("loss_vs_compute", "frontier"), ("lr_opt", "LR_opt")):
            law = fits.get(key) or {}
            if law.get("exponent") is not None:
                lines.append(f"  - {name} ∝ C^{law['exponent']:.3f}"
                             f"{_ci(law.get('exponent_ci95'))} ({law.get('source', '')})")
        if pred:
            loss = pred.get("loss") or {}
            lines.append(f"  - at C = {_g(pred.get('compute_flops'))}: F = "
                         f"{_g((pred.get('n_features_opt') or {}).get('value'))}, loss "
                         f"{_g(loss.get('value'), 4)}{_ci(loss.get('pi95'))}")
    return "\n".join(lines)


def plan_text(plan: dict[str, Any], report: dict[str, Any] | None = None) -> str:
    """The planned run and, once trained, how far its loss landed from the prediction."""
    pi = plan.get("predicted_loss_pi95")
    factor = plan.get("extrapolation_factor")
    lines = [f"**Planned run**: F = {plan['n_features']}, {plan['n_steps']} steps, LR "
             f"{_g(plan.get('lr'))} at {plan['compute_flops']:.3g} FLOPs"
             + (f" ({factor:.3g}× the largest budget swept)" if factor else "")
             + f": predicted {plan.get('metric', 'loss')} {_g(plan['predicted_loss'], 4)}"
             + _ci(pi)]
    if report is not None:
        inside = "inside" if report.get("within_pi95") else "OUTSIDE"
        lines.append(f"- achieved {_g(report['achieved_loss'], 4)} "
                     f"({report['relative_error']:+.1%}, {inside} the 95% PI)")
    return "\n".join(lines)
