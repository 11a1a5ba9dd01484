"""Splice evaluation inside a sweep (`eval: {splice: true}`, sweeps/eval_spec.py).

On the driver, before any trial or MLflow run: the cache, its model and layer are
checked (bad input stops the submit with exit code 2), and the reference (clean and
zero-ablated passes over the held-out text) is built once and saved in
`<storage>/splice/<cache fingerprint>-<n_tokens>.safetensors`, shared by every sweep on
that cache (a stage-2 sweep, the planned run) and by `monoscale eval`. In a trial, after
training: the model and that reference are loaded once per worker process (Tune reuses
its actors), the new SAE is scored, its scores logged with the run's final metrics, and
RUN_DIR/eval.json and feature_density.png written. A failed evaluation does not fail the
trained run: it is tagged `monoscale.eval_failure`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.saebench import write_core_output
from sae_core.cache import ActivationCache
from sae_core.config import RunConfig
from sae_core.device import resolve_device
from sae_core.errors import UserError
from sae_core.held_out import SpliceSource, check_model, splice_source
from sae_core.run import DENSITY_FILE
from sae_core.sae_files import load_sae, trained_on
from sae_core.splice_setup import SpliceEvaluation
from sae_core.trainer import MetricsLogger
from sweeps.eval_sae import (
    DENSITY_PNG,
    EVAL_FILE,
    eval_document,
    from_run_metrics,
    logged_metrics,
    weight_metrics,
    write_density_png,
)
from sweeps.tracking import TAG_EVAL_FAILURE, set_tags


@dataclass(frozen=True)
class SpliceSetup:
    """What a trial needs to splice-evaluate its SAE: small, sent to every trial."""

    reference: str  # the saved reference's path
    cache_dir: str
    n_tokens: int


def reference_path(storage_dir: Path, source: SpliceSource, n_tokens: int) -> Path:
    return storage_dir / "splice" / f"{source.fingerprint}-{n_tokens}.safetensors"


def checked_source(cache: ActivationCache, trained: Sequence[tuple[Path, dict]] = ()
                   ) -> SpliceSource:
    """The cache's model and text, the model checked from its config; with (run dir,
    cfg.json) pairs, also that each SAE was trained on that model's layer. UserError
    otherwise, naming what is missing or what differs."""
    source = splice_source(cache)
    check_model(source)
    for run_dir, saved in trained:
        model, layer = trained_on(saved)
        if (layer is not None and layer != source.layer) or (
                model is not None and model != source.model):
            raise UserError(f"the SAE at {run_dir} was trained on layer {layer} of {model}; "
                            f"cache {source.cache_dir} holds layer {source.layer} of "
                            f"{source.model}")
    return source


def prepare_reference(cache: ActivationCache, n_tokens: int, storage_dir: Path) -> SpliceSetup:
    """On the driver: check the cache and model, build and save the reference unless one
    built for this cache and token count is there already."""
    source = checked_source(cache)
    path = reference_path(storage_dir, source, n_tokens)
    started = time.perf_counter()
    built = SpliceEvaluation.ensure(source, path, n_tokens)
    print(f"splice evaluation: {source.model} layer {source.layer}, {n_tokens} held-out "
          f"tokens, reference {'built in ' if built else 'reused: '}"
          f"{f'{time.perf_counter() - started:.0f} s: ' if built else ''}{path}",
          file=sys.stderr, flush=True)
    return SpliceSetup(str(path), source.cache_dir, n_tokens)


_OPEN: dict[tuple[str, str], SpliceEvaluation] = {}  # per worker: (reference, device) -> it


def evaluate_in_trial(setup: SpliceSetup, cfg: RunConfig, out_dir: Path,
                      run_metrics: dict[str, float], logger: MetricsLogger,
                      tracking_uri: str, run_id: str) -> list[Path]:
    """Score the SAE a trial just saved in out_dir; log the scores at the run's last step
    and write out_dir/eval.json (returned, for the run's artifacts). A failure is tagged
    on the run and printed; the trained run stands."""
    try:
        return _evaluate(setup, cfg, out_dir, run_metrics, logger)
    except Exception as err:  # the SAE is trained and saved: do not retrain it for this
        reason = f"{type(err).__name__}: {err}"
        print(f"[{cfg.run_key}] splice evaluation failed: {reason}", file=sys.stderr)
        set_tags(tracking_uri, run_id, {TAG_EVAL_FAILURE: reason})
        return []


def _evaluate(setup: SpliceSetup, cfg: RunConfig, out_dir: Path,
              run_metrics: dict[str, float], logger: MetricsLogger) -> list[Path]:
    sae, _ = load_sae(out_dir)
    device = str(resolve_device(cfg.device))
    key = (setup.reference, device)
    if key not in _OPEN:  # the model and the reference, once per worker process
        source = splice_source(ActivationCache.open(setup.cache_dir))
        _OPEN[key] = SpliceEvaluation.load(source, setup.reference, setup.n_tokens, device)
    evaluation = _OPEN[key]
    sae = sae.to(device)
    [scores] = evaluation.score_many([sae])
    weights = weight_metrics(sae)
    logger.log(logged_metrics(None, weights, scores), step=cfg.n_steps)
    density = json.loads((out_dir / DENSITY_FILE).read_text())
    document = eval_document(out_dir, cfg, from_run_metrics(run_metrics), density, weights,
                             scores, evaluation.config(), evaluation.source.model,
                             {"reconstruction_from": "the trainer's final evaluation"})
    return [write_core_output(out_dir / EVAL_FILE, document),
            write_density_png(out_dir / DENSITY_PNG, density, cfg)]
