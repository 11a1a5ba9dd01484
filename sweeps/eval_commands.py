"""`monoscale eval RUN_DIR | SPEC`: evaluate saved SAEs as the field reports them.

    monoscale eval RUN_DIR [--out FILE]        one run: RUN_DIR/eval.json, and
                                               feature_density.png beside it
    monoscale eval SPEC [--plan PLAN.json]     every finished run of the sweep: each run's
                                               eval.json and PNG, its metrics logged into
                                               its MLflow record (both files as artifacts)

Per SAE: the standard reconstruction set in model units on the cache's eval split (the
rows of the trainer's final evaluation), the weight-based metrics, and, unless
--no-splice, the splice scores on held-out text of the cache's model (sae_core/held_out.py):
CE, ΔLM loss and KL for a decoder LM, the sentence-embedding score for an encoder. The
model and the reference passes are loaded once for all the SAEs (SPEC: the sweep's saved
reference, sweeps/eval_trial.py, when there is one for this token count). Every check (the
runs, their cache, its model, layer and width) runs before any model is loaded; bad input
exits 2 with one line and writes nothing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_core.errors import UserError


def add_commands(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "eval", help="evaluate saved SAEs: SAEBench's core metrics and the splice scores",
        description="Evaluate one run (RUN_DIR) or every finished run of a sweep (SPEC): "
        "eval.json per SAE in SAEBench's core layout; SPEC also logs into MLflow.")
    cmd.add_argument("target", metavar="RUN_DIR|SPEC")
    cmd.add_argument("--out", metavar="FILE", help="RUN_DIR: where eval.json goes "
                     "(default RUN_DIR/eval.json)")
    cmd.add_argument("--cache", metavar="DIR", help="RUN_DIR: the activation cache (default: "
                     "the one the run trained on)")
    cmd.add_argument("--n-tokens", type=int, metavar="N", help="held-out tokens of the splice, kept "
                     "positions (default: the spec's eval.n_tokens, else 4096)")
    cmd.add_argument("--no-splice", action="store_true", help="the reconstruction set "
                     "only (no model: e.g. a cache from --npy or --synthetic)")
    cmd.add_argument("--plan", metavar="PLAN.json", help="SPEC: the planned run's sweep "
                     "(<name>-plan, `submit --plan`)")
    cmd.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    cmd.add_argument("--threads", type=int, default=0, metavar="N", help="torch CPU threads (default: "
                     "torch's; one is faster on busy cores)")
    cmd.add_argument("--storage", metavar="DIR", help="SPEC: the sweep's storage "
                     "(default ./.monoscale)")
    cmd.add_argument("--tracking-uri", metavar="URI", help="SPEC: MLflow tracking URI")
    cmd.set_defaults(func=_eval)


@dataclass(frozen=True)
class Job:
    """One SAE to evaluate: where it is, where its eval.json goes, its MLflow run."""

    run_dir: Path
    out: Path
    run_id: str | None = None


def _eval(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if args.n_tokens is not None and args.n_tokens < 1:
        raise UserError(f"--n-tokens must be >= 1, got {args.n_tokens}")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    if target.is_dir():
        if args.plan or args.storage or args.tracking_uri:
            raise UserError("--plan, --storage and --tracking-uri are for a sweep SPEC")
        out = Path(args.out) if args.out else target / "eval.json"
        if not out.parent.is_dir():
            raise UserError(f"--out {out}: no directory {out.parent}")
        return _evaluate([Job(target, out)], args, Path(args.cache) if args.cache else None)
    if target.is_file():
        if args.out or args.cache:
            raise UserError("--out and --cache are for one RUN_DIR; a sweep's runs each get "
                            "RUN_DIR/eval.json on the spec's cache")
        return _eval_sweep(target, args)
    raise UserError(f"no run directory or sweep spec at {target}")


def _eval_sweep(path: Path, args: argparse.Namespace) -> int:
    from sweeps import store, tracking
    from sweeps.driver import Where
    from sweeps.spec import load_spec

    spec = load_spec(path)
    if args.plan:
        from sweeps.planned_run import planned_sweep

        spec, _ = planned_sweep(spec, Path(args.plan))
    where = Where.resolve(args.storage, args.tracking_uri)
    store.check_tracking_uri(where.tracking_uri)
    runs = tracking.finished_runs(where.tracking_uri, spec.name)
    if not runs:
        raise UserError(f"no finished runs of sweep {spec.name!r} in {where.tracking_uri}")
    runs_dir = where.storage_dir / "runs" / spec.name
    jobs = [Job(runs_dir / str(r.run_key), runs_dir / str(r.run_key) / "eval.json", r.run_id)
            for r in sorted(runs, key=lambda r: (r.params.get("compute_flops", 0),
                                                 r.params.get("n_features", 0)))]
    if args.n_tokens is None and spec.eval is not None:
        args.n_tokens = spec.eval.n_tokens
    return _evaluate(jobs, args, spec.cache.path, where)


def _evaluate(jobs: list[Job], args: argparse.Namespace, cache_dir: Path | None,
              where: Any = None) -> int:
    """Check everything, then load the model once and evaluate every job's SAE."""
    import torch

    from analysis.saebench import write_core_output
    from sae_core.cache import ActivationCache, CacheError
    from sae_core.device import resolve_device
    from sae_core.run import density_record
    from sae_core.sae_files import load_sae, read_cfg
    from sweeps.eval_sae import (
        DENSITY_PNG,
        eval_document,
        logged_metrics,
        reconstruction,
        weight_metrics,
        write_density_png,
    )
    from sweeps.eval_spec import DEFAULT_SPLICE_TOKENS

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    loaded = [load_sae(job.run_dir) for job in jobs]  # a UserError names a missing run
    cache = ActivationCache.open(cache_dir or loaded[0][1].cache_dir, verify="size")
    for job, (_, cfg) in zip(jobs, loaded, strict=True):
        if cfg.d_in != cache.d_in:
            raise CacheError(f"the SAE at {job.run_dir} reads d={cfg.d_in} activations; "
                             f"cache {cache.path} holds d={cache.d_in}")
    n_tokens = args.n_tokens or DEFAULT_SPLICE_TOKENS
    evaluation = None
    if not args.no_splice:
        from sae_core.splice_setup import SpliceEvaluation
        from sweeps.eval_trial import checked_source, reference_path

        source = checked_source(cache, [(j.run_dir, read_cfg(j.run_dir)) for j in jobs])
        if where is not None:  # a sweep: the reference its trials use, or one saved for them
            evaluation = SpliceEvaluation.load_or_build(
                source, reference_path(where.storage_dir, source, n_tokens), n_tokens,
                str(device))
        else:
            evaluation = SpliceEvaluation.build(source, n_tokens, str(device))
    saes = [sae.to(device) for sae, _ in loaded]
    scores: list[dict[str, float] | None] = (
        list(evaluation.score_many(saes)) if evaluation is not None else [None] * len(jobs))
    for job, sae, (_, cfg), score in zip(jobs, saes, loaded, scores, strict=True):
        recon, n_rows = reconstruction(sae, cfg, cache)
        density = density_record(recon.feature_density, n_rows)
        weights = weight_metrics(sae)
        document = eval_document(
            job.run_dir, cfg, recon.metrics, density, weights, score,
            evaluation.config() if evaluation is not None else None,
            (cache.meta.get("source") or {}).get("model"),
            {"reconstruction_from": "monoscale eval"})
        write_core_output(job.out, document)
        png = write_density_png(job.out.parent / DENSITY_PNG, density, cfg)
        if job.run_id is not None:
            from sweeps import tracking

            tracking.log_evaluation(where.tracking_uri, job.run_id,
                                    logged_metrics(recon.metrics, weights, score),
                                    cfg.n_steps, [job.out, png])
        print(json.dumps(_summary(job, cfg, recon.metrics, score)), flush=True)
    return 0


def _summary(job: Job, cfg: Any, recon: dict[str, float],
             score: dict[str, float] | None) -> dict[str, Any]:
    """One JSON line per SAE: where its eval.json went and its headline numbers."""
    shown = ("ce_loss_score", "delta_lm_loss", "kl_div_score", "embedding_cosine_score")
    return {"run_key": cfg.run_key, "n_features": cfg.n_features, "n_steps": cfg.n_steps,
            "eval_json": str(job.out), "l0": recon["l0"],
            "explained_variance": recon["explained_variance"],
            **{k: v for k, v in (score or {}).items() if k in shown}}
