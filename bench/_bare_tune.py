"""The start of a bare Ray Tune sweep: what any Ray Tune + torch design pays before a trial.

    python bench/_bare_tune.py    # prints ONE JSON line; orchestration_overhead.py runs it

A local Ray started as cluster/local.py starts it, but with workers preloading only torch
and Ray Tune; a Tuner of 2 trials at 2 at a time whose function notes when it was entered
and does nothing else: no MLflow, no cache, no monoscale code. The clock starts after the
driver has imported Ray, Tune and torch, as the benchmark's submit() starts. The first
trial's entry is the least a cold sweep on this machine can spend before its first trial.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time

# Tune's console output and TensorBoard logger off, as sweeps/tune_runner.py has them
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import ray  # noqa: E402
import torch  # noqa: E402, F401  (imported before the clock, as in the benchmark's driver)
from ray import tune  # noqa: E402
from ray.tune.execution import class_cache  # noqa: E402

CONCURRENCY = 2


def trial(config: dict) -> None:
    tune.report({"entered": time.time()})


def main() -> None:
    start = time.time()
    ray.init(address="local", num_cpus=CONCURRENCY, num_gpus=0,
             object_store_memory=150 * 2**20, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING,
             _system_config={"preload_python_modules": ["torch", "ray.tune"],
                             "idle_worker_killing_time_threshold_ms": 600_000})
    ray_up = time.time()
    class_cache.DEFAULT_ENV_VARS.pop("PL_DISABLE_FORK", None)  # as sweeps/tune_runner.py
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}),
                           param_space={"i": tune.grid_search(list(range(CONCURRENCY)))},
                           tune_config=tune.TuneConfig(max_concurrent_trials=CONCURRENCY,
                                                       reuse_actors=True),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0))
        entered = sorted(r.metrics["entered"] - start for r in tuner.fit())
    ray.shutdown()
    print(json.dumps({"ray_init_s": round(ray_up - start, 3),
                      "first_trial_start_s": round(entered[0], 3),
                      "second_trial_start_s": round(entered[1], 3)}), flush=True)


if __name__ == "__main__":
    main()
