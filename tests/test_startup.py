"""What a submit pays before its first trial and after its last: the MLflow store it
creates, the cache it checksums, and the local Ray it starts and stops
(bench/orchestration_overhead.py times it)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from cluster import local
from cluster.local import _stop_autoscaler_monitor, connect
from sae_core.cache import ActivationCache
from sae_core.synthetic import PlantedDictionary, build_synthetic_cache
from sweeps import cache_setup, store, tracking
from sweeps.spec import load_spec


def _revision(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("select version_num from alembic_version").fetchone()[0]


def test_new_stores_are_copies_of_one_migrated_template(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    for db in (first, second):
        db.parent.mkdir()
    store.prepare_store(f"sqlite:///{first}")
    [template] = (tmp_path / "xdg" / "monoscale").iterdir()
    made_ns = template.stat().st_mtime_ns
    store.prepare_store(f"sqlite:///{second}")
    assert template.stat().st_mtime_ns == made_ns  # made once, copied twice
    # The copy is at the revision MLflow's own migrations reach.
    migrated = tmp_path / "migrated.db"
    MlflowClient(f"sqlite:///{migrated}").search_experiments()
    assert _revision(first) == _revision(second) == _revision(migrated)
    # Two copies are two stores.
    target = tracking.open_sweep(f"sqlite:///{second}", "s", 1, tmp_path / "art",
                                 tmp_path / "s.yaml")
    assert MlflowClient(f"sqlite:///{second}").get_run(target.parent_run_id)
    assert MlflowClient(f"sqlite:///{first}").get_experiment_by_name("s") is None
    # A store that appeared meanwhile (a concurrent submit's) is never replaced.
    store._copy_atomically(template, second)
    assert MlflowClient(f"sqlite:///{second}").get_experiment_by_name("s") is not None
    assert sorted(p.name for p in second.parent.iterdir()) == ["mlflow.db"]


def test_a_store_is_made_without_a_writable_cache(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "xdg").write_text("a file where the cache directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store.prepare_store(uri)
    target = tracking.open_sweep(uri, "s", 1, tmp_path / "art", tmp_path / "s.yaml")
    assert MlflowClient(uri).get_run(target.parent_run_id).data.tags[tracking.TAG_SWEEP] == "s"


def test_closing_a_local_ray_stops_its_autoscaler_monitor_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ray.shutdown gives the monitor a second it always uses up (its SIGTERM handler
    writes to the GCS Ray already stopped); close() kills it first."""
    assert not ray.is_initialized()
    session = connect(num_cpus=1, num_gpus=0)
    processes = ray._private.worker._global_node.all_processes
    monitor, raylet = processes["monitor"][0].process, processes["raylet"][0].process
    seen = []  # (monitor dead, raylet alive) right after close() stopped the monitor

    def stop_and_look() -> None:
        _stop_autoscaler_monitor()
        seen.append((monitor.poll() is not None, raylet.poll() is None))

    monkeypatch.setattr(local, "_stop_autoscaler_monitor", stop_and_look)
    try:
        session.close()
    finally:
        if ray.is_initialized():  # close() failed: leave no Ray to the next test
            ray.shutdown()
    assert seen == [(True, True)]
    assert raylet.poll() is not None and not ray.is_initialized()


def test_a_driver_checksums_a_cache_once_until_it_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adaptive rounds and the demo's stages submit from one process: the first submit
    checksums the cache, later ones check sizes, a rebuilt cache (new meta.json) again."""
    cache = tmp_path / "cache"
    build_synthetic_cache(cache, PlantedDictionary(d_in=8, n_true_features=16), 5000)
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(f"name: s\ncache: {{path: {cache}}}\n"
                         "grid: {n_features: [32], n_steps: [10]}\n")
    spec = load_spec(spec_path)
    monkeypatch.setattr(cache_setup, "_CHECKSUMMED", set())
    opened = []
    real_open = ActivationCache.open
    monkeypatch.setattr(ActivationCache, "open", classmethod(
        lambda cls, path, verify="size": (opened.append(verify), real_open(path, verify))[1]))
    cache_setup.prepare_cache(spec)
    cache_setup.prepare_cache(spec)
    os.utime(cache / "meta.json", ns=(time.time_ns(), time.time_ns() + 10**9))
    cache_setup.prepare_cache(spec)
    # each prepare_cache: check_cache's size check (milliseconds), then its own open
    assert opened == ["size", "full", "size", "size", "size", "full"]
