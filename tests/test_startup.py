"""What a submit pays before its first trial and after its last: the MLflow store it
creates, and the local Ray it starts and stops (bench/orchestration_overhead.py times it)."""

from __future__ import annotations

import ray

from cluster.local import _stop_autoscaler_monitor, connect


def test_closing_a_local_ray_stops_its_autoscaler_monitor_first() -> None:
    """ray.shutdown gives the monitor a second it always uses up (its SIGTERM handler
    writes to the GCS Ray already stopped); close() kills it first."""
    assert not ray.is_initialized()
    session = connect(num_cpus=1, num_gpus=0)
    try:
        processes = ray._private.worker._global_node.all_processes
        monitor, raylet = processes["monitor"][0].process, processes["raylet"][0].process
        _stop_autoscaler_monitor()
        assert monitor.poll() is not None and raylet.poll() is None
    finally:
        session.close()
    assert raylet.poll() is not None and not ray.is_initialized()
