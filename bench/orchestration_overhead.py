"""What Ray costs, and what it buys: 16 SAE trainings of ~5 s each, 2 at a time.

    python bench/orchestration_overhead.py        # ~2-3 min on 2 cores; prints ONE JSON line

1. A tiny planted-dictionary cache (d=64) in a temporary directory; the step count is
   calibrated in-process (1 thread, as a 1-CPU Ray trial runs) so one training takes ~5 s.
2. The sweep through the path users take: a spec file -> `sweeps.driver.submit`, which
   starts a local Ray and creates a new SQLite MLflow store (the "cold" sweep, the headline
   figure), then a second sweep of 16 other seeds through `--address` on a Ray cluster
   that `ray start --head` started beforehand, with the store made ("joined", as on a
   cluster: a new Ray job, whose trial workers start with it). Each trial's own time is
   its MLflow run's start->end, stamped from inside the trial; ideal = sum of trial times
   / concurrency; overhead_ratio = the submit's wall time / ideal (target: <= 1.15). The
   wall time is everything submit does (spec, cache check, Ray's start or join, the
   store, the MLflow parent run, Tune's start, worker start-up, trial scheduling, audit,
   Ray's stop); `first_trial_start_s` is the part before the first trial,
   `steady_state_ratio` the first trial's start to the last one's end over the ideal
   (Tune's gaps alone). `cpu_floor_before_first_trial_s` is the machine's busy CPU time
   before the first trial (/proc/stat, every process) over its cores: the start's
   physical limit on this machine unless that work is removed.
3. The physical limit of the start: `bench/_bare_tune.py` starts a local Ray the same way
   and runs 2 trials that do nothing (no MLflow, no monoscale code) through Ray Tune;
   `bare_ray_tune.first_trial_start_s` is what any Ray Tune + torch design spends before
   its first trial here, and `cold_ratio_with_bare_start` the cold ratio had monoscale's
   own start cost nothing beyond it (the cold wall with its start replaced by the bare one);
   `cold_first_trial_start_allowed_s` is the latest first trial that meets the target.
4. The baseline a user would write without Ray: the same 16 trainings one after another
   in one process, 2 torch threads each, no tracking (the "SAELens for-loop"); it stops
   after LOOP_BUDGET_S and projects to 16 (`loop_trainings_run` says how many ran).

The machine is shared and noisy: only ratios within one run mean anything (docs/METHOD.md §5).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import ray  # noqa: E402
import torch  # noqa: E402

from cluster.local import TRIAL_PRELOAD_MODULES  # noqa: E402
from sae_core.config import RunConfig  # noqa: E402
from sae_core.run import run_from_cache  # noqa: E402
from sae_core.synthetic import PlantedDictionary, build_synthetic_cache  # noqa: E402
from sweeps import tracking  # noqa: E402
from sweeps.driver import Where, plan, submit  # noqa: E402
from sweeps.spec import load_spec  # noqa: E402

N_TRIALS = 16
CONCURRENCY = 2  # this machine's cores; each trial gets 1 CPU
TRIAL_TARGET_S = 5.0
TARGET_RATIO = 1.15  # the cold sweep's target: wall time / ideal
# F=1024 at batch 1024 is compute-bound enough that steps, not per-step overhead, set the
# time (F=128 was overhead-bound on 2 cores, docs/METHOD.md §5.4); d=64 keeps the cache small.
D_IN, N_FEATURES, BATCH_SIZE_TOKENS, EVAL_N_TOKENS = 64, 1024, 1024, 4096
CACHE_N_TOKENS = 300_000
CALIBRATION_STEPS = 150
# The loop baseline stops after this long and projects to all trials: under load, 2-thread
# OpenMP on 2 busy cores ran a 2,000-step run in 130 s, against 6.8 s with one thread
# (docs/METHOD.md §5.4).
LOOP_BUDGET_S = 90.0


def build_cache(root: Path) -> Path:
    path = root / "cache"
    build_synthetic_cache(path, PlantedDictionary(d_in=D_IN, n_true_features=256, seed=0),
                          CACHE_N_TOKENS)
    return path


def config(cache: Path, n_steps: int, seed: int, num_threads: int) -> RunConfig:
    return RunConfig(cache_dir=str(cache), d_in=D_IN, n_features=N_FEATURES, n_steps=n_steps,
                     lr=1e-3, batch_size_tokens=BATCH_SIZE_TOKENS, eval_n_tokens=EVAL_N_TOKENS,
                     seed=seed, num_threads=num_threads)


def calibrate(cache: Path, root: Path) -> tuple[int, float, float]:
    """Steps for a ~5 s training on 1 thread: a warm-up run, then one timed run whose
    per-step time comes from the trainer's own tokens/s and whose remainder is the fixed
    cost (cache open, evaluations, saving). Returns (n_steps, per_step_s, fixed_s)."""
    run_from_cache(config(cache, 20, seed=100, num_threads=1), root / "warmup")
    start = time.perf_counter()
    metrics = run_from_cache(config(cache, CALIBRATION_STEPS, seed=101, num_threads=1),
                             root / "calibration")
    total_s = time.perf_counter() - start
    per_step_s = BATCH_SIZE_TOKENS / metrics["tokens_per_s"]
    fixed_s = max(total_s - per_step_s * CALIBRATION_STEPS, 0.0)
    n_steps = max(20, round((TRIAL_TARGET_S - fixed_s) / per_step_s))
    return n_steps, per_step_s, fixed_s


def write_spec(root: Path, cache: Path, n_steps: int, name: str = "bench",
               seed0: int = 0) -> Path:
    spec = root / f"{name}.yaml"
    spec.write_text(f"""
name: orchestration-{name}
cache: {{path: {cache}}}
base: {{lr: 1e-3, batch_size_tokens: {BATCH_SIZE_TOKENS}, eval_n_tokens: {EVAL_N_TOKENS},
        num_threads: 1}}
grid:
  n_features: [{N_FEATURES}]
  n_steps: [{n_steps}]
  seed: {list(range(seed0, seed0 + N_TRIALS))}
resources: {{cpu: 1, gpu: 0}}
max_concurrent_trials: {CONCURRENCY}
""")
    return spec


# What each new trial process does before its first MLflow run can start: import the
# trainable's modules (Ray Tune, MLflow, torch) and open the SQLite store.
_COLD_START = """
import sys, time
start = time.perf_counter()
import sweeps.tune_runner, sae_core.run
from mlflow import MlflowClient
MlflowClient(sys.argv[1]).search_experiments()
print(time.perf_counter() - start)
"""


def worker_cold_start_s(tracking_uri: str) -> float:
    """A fresh interpreter's cold start as a trial process, timed inside it."""
    out = subprocess.run([sys.executable, "-c", _COLD_START, tracking_uri], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


class CpuSampler(threading.Thread):
    """The machine's busy CPU-seconds over time, from /proc/stat every 50 ms (Linux)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []  # (time.time(), busy CPU-s so far)
        self.stopped = threading.Event()

    def run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self.stopped.wait(0.05):
            with open("/proc/stat") as stat:  # cpu user nice system idle iowait irq softirq
                fields = [int(x) for x in stat.readline().split()[1:8]]
            self.samples.append((time.time(), (sum(fields) - fields[3] - fields[4]) / tick))

    def busy_s(self, t0: float, t1: float) -> float:
        inside = [busy for t, busy in self.samples if t0 <= t <= t1]
        return inside[-1] - inside[0] if len(inside) > 1 else float("nan")


def sweep(spec_path: Path, where: Where, address: str | None = None) -> dict[str, float]:
    """One `submit` of the spec; its wall time and its trials' times from MLflow."""
    spec = load_spec(spec_path)
    sampler = CpuSampler()
    sampler.start()
    submitted_ms = time.time() * 1000
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
        status = submit(spec, where, address)
    wall_s = time.perf_counter() - start
    sampler.stopped.set()
    if status != 0:
        raise SystemExit(f"the sweep did not finish every trial (exit {status})")
    target = tracking.find_sweep(where.tracking_uri, spec.name)
    assert target is not None
    runs = [r for r in tracking.child_runs(target) if r.status == "FINISHED"]
    if len(runs) != N_TRIALS:
        raise SystemExit(f"expected {N_TRIALS} finished runs in MLflow, found {len(runs)}")
    trial_s = [(r.end_time_ms - r.start_time_ms) / 1000 for r in runs]
    first_start_ms = min(r.start_time_ms for r in runs)
    last_end_ms = max(r.end_time_ms for r in runs)
    ideal_s = sum(trial_s) / CONCURRENCY
    return {"wall_s": wall_s, "ideal_s": ideal_s, "overhead_ratio": wall_s / ideal_s,
            "first_trial_start_s": (first_start_ms - submitted_ms) / 1000,
            # the machine's busy CPU-seconds before the first trial / its cores: the least
            # time that work could take (first_trial_start_s near it: a CPU-bound start)
            "cpu_floor_before_first_trial_s": sampler.busy_s(
                submitted_ms / 1000, first_start_ms / 1000) / (os.cpu_count() or 1),
            # first trial's start -> last trial's end: Tune's gaps between trials alone
            "steady_state_ratio": (last_end_ms - first_start_ms) / 1000 / ideal_s,
            "trial_s_mean": sum(trial_s) / N_TRIALS, "trial_s_min": min(trial_s),
            "trial_s_max": max(trial_s)}


def ray_sweeps(root: Path, cache: Path, n_steps: int
               ) -> tuple[dict[str, float], dict[str, float], float]:
    """Cold: `submit` as the CLI runs it, starting a local Ray and creating a new MLflow
    store. Joined: a second sweep (other seeds) into that store through `--address`, on a
    head `ray start` started (as the cluster configs start theirs). Returns (cold, joined,
    a fresh interpreter's cold start as a trial process)."""
    where = Where.resolve(str(root / "store"), None)
    cold = sweep(write_spec(root, cache, n_steps, "cold", seed0=0), where)
    with ray_head(root) as address:
        joined = sweep(write_spec(root, cache, n_steps, "joined", seed0=N_TRIALS), where,
                       address)
    return cold, joined, worker_cold_start_s(where.tracking_uri)


@contextlib.contextmanager
def ray_head(root: Path) -> Iterator[str]:
    """`ray start --head --block` in a session of its own, with the env the cluster configs
    set; every process of that session is killed at the end (never `ray stop`, which
    stops every Ray on the machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_preload_python_modules": ",".join(TRIAL_PRELOAD_MODULES)}
    with open(root / "ray-head.log", "w") as log:
        head = subprocess.Popen(
            ["ray", "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={CONCURRENCY}", "--num-gpus=0", "--include-dashboard=false",
             f"--object-store-memory={150 * 2**20}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if head.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ray start --head failed: {(root / 'ray-head.log').read_text()}")
            time.sleep(0.5)
        time.sleep(5)  # the head's own processes settle, as on a cluster up for a while
        yield f"127.0.0.1:{port}"
    finally:
        for pid in _session_pids(head.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def _session_pids(session: int) -> list[int]:
    """Every process in the session (the head's `ray start` and all it spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[3]) == session:  # field 6: the sid
                pids.append(int(entry.name))
    return pids


def bare_ray_tune_start() -> dict[str, float]:
    """bench/_bare_tune.py in a fresh driver: a bare Ray Tune's start on this machine."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "_bare_tune.py")], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plain_loop(spec_path: Path, root: Path) -> tuple[float, int]:
    """The same trainings, sequentially, in this process, 2 threads each. Returns (wall
    time projected to all of them, how many ran) once all ran or LOOP_BUDGET_S passed."""
    configs = [c.replace(num_threads=CONCURRENCY) for c in plan(load_spec(spec_path))]
    start, n_run = time.perf_counter(), 0
    while n_run < len(configs) and (n_run == 0 or time.perf_counter() - start < LOOP_BUDGET_S):
        run_from_cache(configs[n_run], root / "loop" / configs[n_run].run_key)
        n_run += 1
    return (time.perf_counter() - start) * len(configs) / n_run, n_run


def main() -> None:
    global N_TRIALS
    if len(sys.argv) > 1:  # a shorter run while developing: orchestration_overhead.py 4
        N_TRIALS = int(sys.argv[1])
    root = Path(tempfile.mkdtemp(prefix="monoscale-bench-"))
    load_1min = os.getloadavg()[0]
    try:
        cache = build_cache(root)
        torch.set_num_threads(1)
        n_steps, per_step_s, fixed_s = calibrate(cache, root)
        print(f"calibrated: {n_steps} steps ({per_step_s * 1e3:.2f} ms/step + {fixed_s:.2f} s)",
              file=sys.stderr)
        bare = bare_ray_tune_start()
        cold, joined, cold_start_s = ray_sweeps(root, cache, n_steps)
        loop_wall_s, loop_n_run = plain_loop(write_spec(root, cache, n_steps), root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def rounded(d: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 3) for k, v in d.items()}

    result = {
        "bench": "orchestration_overhead",
        "n_trials": N_TRIALS, "concurrency": CONCURRENCY,
        "trial": {"d_in": D_IN, "n_features": N_FEATURES, "n_steps": n_steps,
                  "batch_size_tokens": BATCH_SIZE_TOKENS,
                  "calibrated_s_per_step_1_thread": round(per_step_s, 5),
                  "calibrated_fixed_s": round(fixed_s, 3)},
        # the cold sweep: `submit` starting a local Ray and a new MLflow store, / ideal
        "overhead_ratio": round(cold["overhead_ratio"], 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": cold["overhead_ratio"] <= TARGET_RATIO,
        "cold": rounded(cold),  # as above, in detail
        "joined": rounded(joined),  # `--address` to a running `ray start --head`
        # the start's physical limit: a bare Ray Tune, trials that do nothing, no MLflow
        "bare_ray_tune": bare,
        "cold_ratio_with_bare_start": round(
            (bare["first_trial_start_s"] + cold["wall_s"] - cold["first_trial_start_s"])
            / cold["ideal_s"], 3),
        # the latest first trial with which the cold sweep, all else as it ran, meets the
        # target: compare with bare_ray_tune.first_trial_start_s
        "cold_first_trial_start_allowed_s": round(
            TARGET_RATIO * cold["ideal_s"] - (cold["wall_s"] - cold["first_trial_start_s"]), 3),
        # a fresh interpreter importing what a trial imports (what preloading hides)
        "worker_cold_start_s": round(cold_start_s, 2),
        "loop_wall_s": round(loop_wall_s, 2), "loop_trainings_run": loop_n_run,
        "loop_threads": CONCURRENCY,
        "loop_tracking": "none",
        "speedup_vs_loop": round(loop_wall_s / cold["wall_s"], 3),
        "load_1min_at_start": round(load_1min, 2),
        "ray": ray.__version__, "torch": torch.__version__,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
