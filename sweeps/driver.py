"""The sweep driver: spec -> checks -> cache -> Ray -> MLflow parent run -> trials -> audit.

Order matters: every check that can fail on bad input (spec, store, storage folder, Ray
address, cache, each point's fields: sweeps/preflight.py) runs before the first MLflow
run is created or the first trial starts, and one driver at a time runs a sweep
(sweeps/sweep_lock.py). What runs follows from the tracking store alone.

Where things live (`--storage DIR`, default `./.monoscale` under the working directory):

    DIR/mlflow.db                 the default tracking store (sqlite)
    DIR/mlartifacts/<sweep>/      artifacts of the sweep's experiment
    DIR/locks/<sweep>.lock        held by the driver running the sweep (sweeps/sweep_lock.py)
    DIR/tune/<sweep>/             Ray Tune's experiment (restored after a killed driver, when
                                  its manifest names this store and sweep run)
    DIR/runs/<sweep>/<run_key>/   each run's out_dir: checkpoint/, sae_weights.safetensors,
                                  cfg.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_core.config import RunConfig
from sae_core.errors import UserError
from sweeps import store, tracking
from sweeps.cache_setup import cache_facts, prepare_cache
from sweeps.descriptions import sweep_text
from sweeps.preflight import check_runs, preflight
from sweeps.spec import SweepSpec, expand
from sweeps.store import check_store, normalize_tracking_uri

if TYPE_CHECKING:  # it imports transformers: loaded only for a sweep that splices
    from sweeps.eval_trial import SpliceSetup

DEFAULT_STORAGE = ".monoscale"


@dataclass(frozen=True)
class Where:
    storage_dir: Path
    tracking_uri: str

    @classmethod
    def resolve(cls, storage: str | None, tracking_uri: str | None) -> Where:
        storage_dir = Path(storage or DEFAULT_STORAGE).resolve()
        return cls(storage_dir, normalize_tracking_uri(tracking_uri) if tracking_uri
                   else store.default_tracking_uri(storage_dir))

    @property
    def artifact_root(self) -> Path | None:
        """Local stores get an explicit artifact root; a server manages its own."""
        return None if self.tracking_uri.startswith(("http://", "https://")) else (
            self.storage_dir / "mlartifacts")


def plan(spec: SweepSpec, build: bool = True, verify: str = "full") -> list[RunConfig]:
    """The grid points, from the spec and the (built and verified) cache's d_in."""
    return expand(spec, prepare_cache(spec, build=build, verify=verify).d_in)


def format_table(configs: list[RunConfig], states: dict[str, dict] | None = None) -> str:
    head = (f"{'run_key':16}  {'sae':16}  {'n_features':>10}  {'n_steps':>7}  {'lr':>8}  "
            f"{'seed':>4}  {'compute_flops':>13}")
    head += f"  {'state':9}  {'loss':>10}" if states is not None else ""
    lines = [head]
    for c in configs:
        line = (f"{c.run_key:16}  {_sae(c):16}  {c.n_features:>10}  {c.n_steps:>7}  "
                f"{c.lr:>8.2e}  {c.seed:>4}  {c.compute_flops:>13.3e}")
        if states is not None:
            state = states.get(c.run_key, {"state": "-", "loss": None})
            loss = f"{state['loss']:.5g}" if state["loss"] is not None else "-"
            line += f"  {state['state']:9}  {loss:>10}"
        lines.append(line)
    return "\n".join(lines)


def _sae(cfg: RunConfig) -> str:
    """The architecture and its sparsity setting, e.g. `topk k=16`, `relu λ=5`."""
    if cfg.arch == "relu":
        return f"relu λ={cfg.l1_coefficient:g}"
    if cfg.arch == "jumprelu":
        return (f"jumprelu L0→{cfg.target_l0:g}" if cfg.target_l0 is not None
                else f"jumprelu λ={cfg.l0_coefficient:g}")
    return f"{cfg.arch.replace('matryoshka_', 'm.')} k={cfg.k}"


def submit(spec: SweepSpec, where: Where, address: str | None = None,
           parent_tags: dict[str, str] | None = None) -> int:
    """Run every grid point that has no FINISHED run yet. Returns 0 when all have one.
    One driver per sweep: another one running it makes this one exit 2 (SweepBusy)
    before it changes anything (sweeps/sweep_lock.py)."""
    from cluster.local import connect
    from sweeps.sweep_lock import hold_storage

    # What --dry-run checks, building and writing nothing:
    preflight(spec, where.tracking_uri, where.storage_dir, address)
    with hold_storage(where.storage_dir, spec.name):
        cache = prepare_cache(spec)  # built now if missing, then checksummed
        configs = expand(spec, cache.d_in)
        check_runs(spec, configs, cache_facts(cache), local=address is None)
        splice = _splice_setup(spec, where)  # before any store or run: a bad cache stops here
        # The store is prepared and the sweep claimed in it while Ray starts: its SQL
        # module imported (1.3 s of CPU here), a new one copied from the template.
        with ThreadPoolExecutor(max_workers=1) as pool:
            opened = pool.submit(_open_and_claim, spec, where)
            try:
                ray_session = connect(address)
            except BaseException:
                with contextlib.suppress(Exception):
                    opened.result()[1].release()
                raise
        try:
            target, claim = opened.result()
            try:
                tracking.start_sweep(target, parent_tags)
                tracking.describe(target, "sweep", sweep_text(spec.name, spec.stage, configs,
                                                              cache.meta))
                return _run(spec, where, configs, target, splice)
            finally:
                claim.release()
        finally:
            ray_session.close()


def _open_and_claim(spec: SweepSpec, where: Where) -> tuple[tracking.TrackingTarget, Any]:
    from sweeps.sweep_lock import claim_sweep

    store.prepare_store(where.tracking_uri)
    target = tracking.open_sweep(where.tracking_uri, spec.name, spec.stage,
                                 where.artifact_root, spec.path)
    return target, claim_sweep(target)


def _run(spec: SweepSpec, where: Where, configs: list[RunConfig],
         target: tracking.TrackingTarget, splice: SpliceSetup | None = None) -> int:
    """The points the store has not finished, as Tune trials; then the audit."""
    from sweeps.trial import FAIL_ONCE_ENV, TrialContext
    from sweeps.tune_runner import TuneOptions

    runs = tracking.child_runs(target)
    n_killed = tracking.mark_killed(target, runs, "left running by a driver that died")
    todo = unfinished(configs, runs)
    print(f"[{spec.name}] {len(configs)} grid points" + (
        "" if spec.search else f": {len(configs) - len(todo)} finished, {len(todo)} to run")
        + (f" ({n_killed} interrupted runs marked KILLED)" if n_killed else ""), flush=True)
    ctx = TrialContext(
        target=target, configs={c.run_key: c.to_dict() for c in configs},
        runs_dir=str(where.storage_dir / "runs" / spec.name),
        log_weights=spec.log_weights,
        fail_once_after_checkpoint=bool(os.environ.get(FAIL_ONCE_ENV)),
        cpus_per_trial=spec.resources.cpu, gpus_per_trial=spec.resources.gpu,
        splice=splice)
    options = TuneOptions(where.storage_dir)
    if spec.search is not None:
        return _search(spec, configs, target, ctx, options)
    if todo:
        result = _run_points(spec, configs, todo, ctx, options)
        # What runs follows from the store alone: a restored Tune experiment runs only the
        # trials its own snapshot had not ended, which may be more than the store has.
        left = unfinished(configs, tracking.child_runs(target))
        skipped = [c for c in left if c.run_key not in result.started]
        if result.restored and result.ended and skipped:
            print(f"[{spec.name}] the restored Tune experiment held {len(skipped)} point(s) "
                  "as done that the store has not finished: running them in a new one",
                  flush=True)
            _run_points(spec, configs, skipped, ctx, options, fresh=True)
    return audit(spec, configs, target)


def unfinished(configs: list[RunConfig], runs: list[tracking.RunRecord]) -> list[RunConfig]:
    """The grid points without a FINISHED run among `runs`."""
    best = tracking.best_run_per_key(runs)
    return [c for c in configs if _state(best, c.run_key) != "FINISHED"]


def _run_points(spec: SweepSpec, configs: list[RunConfig], todo: list[RunConfig],
                ctx: Any, options: Any, fresh: bool = False) -> Any:
    """Tune trials for `todo`: one per point, or with branching one per family that has
    an unfinished member (its trunk stands for it: run_family_trial)."""
    from sweeps.tune_runner import run_grid

    if not spec.branching:
        return run_grid(spec, todo, ctx, options, fresh=fresh)
    from sae_core.branching import branched_compute_flops, families
    from sweeps.family_trial import run_family_trial

    left = {c.run_key for c in todo}
    todo_families = [f for f in families(configs) if left & {m.run_key for m in f.members}]
    result = run_grid(spec, [f.trunk for f in todo_families], ctx, options,
                      trial=run_family_trial, fresh=fresh,
                      flops_by_key={f.trunk.run_key: branched_compute_flops(f)
                                    for f in todo_families})
    # a family's members count as started with its trunk
    started = {m.run_key for f in todo_families if f.trunk.run_key in result.started
               for m in f.members}
    return dataclasses.replace(result, started=frozenset(result.started | started))


def _splice_setup(spec: SweepSpec, where: Where) -> SpliceSetup | None:
    """`eval: {splice: true}`: the cache's model checked and the reference passes built once,
    here, before any MLflow run or trial (sweeps/eval_trial.py)."""
    if spec.eval is None or not spec.eval.splice:
        return None
    from sweeps.eval_trial import prepare_reference

    cache = prepare_cache(spec, build=False, verify="size")  # plan() built and checked it
    return prepare_reference(cache, spec.eval.n_tokens, where.storage_dir)


def _search(spec: SweepSpec, points: list[RunConfig], target: tracking.TrackingTarget,
            ctx: object, options: object) -> int:
    """Run each point's missing lr trials, then close the sweep: 0 when every point has
    its n_trials FINISHED trials."""
    from sweeps.tune_runner import run_search

    assert spec.search is not None
    earlier = tracking.child_runs(target)  # the points' trials are disjoint: one read serves all
    for point in points:
        done = search_trials_done(earlier, point.run_key)
        left = spec.search.n_trials - len(done)
        print(f"[{spec.name}] F={point.n_features} steps={point.n_steps}: {len(done)} lr "
              f"trials finished, {max(0, left)} to run", flush=True)
        if left > 0:
            run_search(spec, point, left, done, ctx, options)  # type: ignore[arg-type]
    runs = tracking.child_runs(target)
    n_done = [min(len(search_trials_done(runs, p.run_key)), spec.search.n_trials)
              for p in points]
    for point, n in zip(points, n_done, strict=True):
        if n < spec.search.n_trials:
            print(f"[{spec.name}] not finished: F={point.n_features} steps={point.n_steps} "
                  f"has {n} of {spec.search.n_trials} lr trials", flush=True)
    n_trials = spec.search.n_trials * len(points)
    tracking.close_sweep(target, n_trials, sum(n_done),
                         sum(n * p.compute_flops for p, n in zip(points, n_done, strict=True)))
    print(f"[{spec.name}] {sum(n_done)}/{n_trials} lr trials finished; MLflow: {target.uri}, "
          f"experiment {target.experiment_id}", flush=True)
    return 0 if sum(n_done) == n_trials else 1


def search_trials_done(runs: list[tracking.RunRecord], point_key: str
                       ) -> list[tuple[float, float]]:
    """(lr, loss) of the FINISHED search trials of the grid point `point_key`."""
    return [(float(r.params["lr"]), r.metrics["loss"]) for r in runs
            if r.finished and r.tags.get(tracking.TAG_POINT) == point_key
            and "loss" in r.metrics]


def _state(best: dict[str, tracking.RunRecord], key: str) -> str:
    return best[key].status if key in best else "MISSING"


def audit(spec: SweepSpec, configs: list[RunConfig], target: tracking.TrackingTarget) -> int:
    """Check that every grid point has exactly one FINISHED run; say which do not."""
    runs = tracking.child_runs(target)
    finished: dict[str, int] = {}
    for run in runs:
        if run.finished:
            finished[run.run_key or ""] = finished.get(run.run_key or "", 0) + 1
    best = tracking.best_run_per_key(runs)
    missing = [c for c in configs if c.run_key not in finished]
    doubled = [k for k, n in finished.items() if n > 1]
    for c in missing:
        latest = best.get(c.run_key)
        why = (f"{latest.status}: {latest.tags.get(tracking.TAG_FAILURE, '')}"
               if latest else "never ran")
        print(f"[{spec.name}] not finished: {c.run_key} F={c.n_features} "
              f"steps={c.n_steps} lr={c.lr:g} ({why})", flush=True)
    if doubled:
        print(f"[{spec.name}] more than one FINISHED run for: {', '.join(doubled)}")
    tracking.close_sweep(target, len(configs), len(configs) - len(missing),
                         sum(c.compute_flops for c in configs))
    print(f"[{spec.name}] {len(configs) - len(missing)}/{len(configs)} grid points "
          f"finished; MLflow: {target.uri}, experiment {target.experiment_id}", flush=True)
    return 1 if missing or doubled else 0


def status(spec: SweepSpec, where: Where) -> str:
    """The grid points with their state and final loss, read from MLflow."""
    store.check_tracking_uri(where.tracking_uri)
    check_store(where.tracking_uri, write=False)
    try:
        configs = [] if spec.search else plan(spec, build=False, verify="size")
    except UserError:  # no cache yet: show what MLflow holds
        configs = []
    target = tracking.find_sweep(where.tracking_uri, spec.name)
    best = tracking.best_run_per_key(tracking.child_runs(target)) if target else {}
    states = {k: tracking.run_summary(r) for k, r in best.items()}
    known = {c.run_key for c in configs}
    for key, run in best.items():  # search trials, or points the spec no longer has
        if key not in known:
            fields = {k: v for k, v in run.params.items() if k in RunConfig.__annotations__}
            try:
                configs.append(RunConfig.from_dict(fields))
            except (UserError, TypeError, ValueError):
                continue
    return format_table(configs, states)
