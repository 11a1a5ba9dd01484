"""Start a local Ray, or join a running cluster by address, from the sweep driver.

Local: this machine's CPUs and GPUs given explicitly, a small object store (trials get
the cache's path, never its bytes, so the store only carries configs), no dashboard,
and every port on loopback (`single_node_on_loopback`): a local sweep is one node.

Join: `--address HOST:PORT` (the GCS address `ray start --head` prints, default port
6379), `auto` (the latest cluster `ray start` made on this machine) or `ray://HOST:PORT`
(Ray Client). The address is probed with a short TCP connect first, so an unreachable
one fails in seconds with its name, before any MLflow run exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray

from sae_core.errors import UserError

OBJECT_STORE_BYTES = 150 * 2**20  # Ray's minimum is 75 MB; the default takes 30% of RAM
# What a trial process imports before its first step (3-4 s on 2 cores). Ray's prestarted workers
# import them while the driver opens MLflow and starts Tune, and Tune's trials run in them
# (sweeps/tune_runner.py sees to that), so a trial starts warm: an actor answered 0.3 s
# after its creation instead of 2.9-3.6 s (docs/METHOD.md §5.6).
TRIAL_PRELOAD_MODULES = ("torch", "mlflow", "ray.tune")
# Ray asks workers idle for 10 s to exit once it holds more than it needs, which it decides
# when Tune reserves the trials' CPUs: a sweep starting 10 s after Ray did found its
# prestarted workers exiting and waited ~3 s for new ones (2 of 4 tries; 0 of 6 with
# this: docs/METHOD.md §5.6). The local Ray lives for one driver, so its workers may idle
# longer.
IDLE_WORKER_EXIT_MS = 600_000
PROBE_TIMEOUT_S = 3.0
DEFAULT_GCS_PORT = 6379  # `ray start --head` default


@dataclass
class RaySession:
    connected_here: bool  # close() disconnects this process, and stops a Ray it started

    def close(self) -> None:
        if self.connected_here and ray.is_initialized():
            _stop_autoscaler_monitor()
            ray.shutdown()


def _stop_autoscaler_monitor() -> None:
    """SIGKILL the autoscaler monitor of a Ray this process started, before ray.shutdown.

    ray.shutdown stops Ray's processes one by one with SIGTERM and a 1 s grace each. The
    monitor's SIGTERM handler writes to the GCS, which Ray has already stopped by then, so
    it always used the whole second (docs/METHOD.md §5.6: 1.02 s of a 1.41 s shutdown; the other
    four processes 0.1 s together). A local cluster's monitor has nothing to save. Ray's
    handle on its processes is private: without it, shutdown just takes the second."""
    try:
        from ray._private import worker as ray_worker

        processes = ray_worker._global_node.all_processes  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return
    for info in processes.get("monitor", []):  # none on a cluster joined by address
        if info.process.poll() is None:
            info.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # ray.shutdown reaps it
                info.process.wait(timeout=5)


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise UserError unless something accepts TCP connections at `address`."""
    if address == "auto":
        return  # resolved by ray.init from this machine's session files
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host:
        host, port = host_port, str(DEFAULT_GCS_PORT)
    try:
        port_number = int(port)
    except ValueError:
        raise UserError(f"Ray address {address!r} is not HOST:PORT") from None
    try:
        with socket.create_connection((host, port_number), timeout=timeout_s):
            pass
    except OSError as err:
        raise UserError(f"Ray cluster at {address} is unreachable ({err}); start it with "
                        "`ray start --head` or check --address") from None


def _use_token_auth_if_available() -> None:
    """Ray 2.60 turns token auth on by default for clusters it starts, but a driver joining
    one by address sends no token unless RAY_AUTH_MODE=token (docs/METHOD.md §5.6: "Authentication
    token is missing or incorrect" against `ray start --head`, with ~/.ray/auth_token
    present). Turn it on when a token is at hand and the user chose no mode."""
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN")
                                              or os.path.exists(token_path)):
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config at import: refresh it, as ray.init does for new clusters
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
        except (ImportError, AttributeError):
            pass


@contextmanager
def single_node_on_loopback() -> Iterator[None]:
    """Let the Ray started in the block listen on 127.0.0.1 only.

    Ray 2.60 turns a node IP of 127.0.0.1 into the host's routable address
    (`ray._private.services.resolve_ip_for_localhost`) unless clusters are disabled, and
    binds its gRPC servers (GCS, raylet, object manager, every worker) to that address's
    family on all interfaces, so `_node_ip_address="127.0.0.1"` alone left the driver,
    gcs_server, raylet and the trial workers listening on `::` and the runtime-env agent
    on the host's address (docs/METHOD.md §5.6). Ray's switch for a one-node Ray, the one
    it sets on macOS and Windows, is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the node IP then
    stays 127.0.0.1 and every server binds to loopback (docs/METHOD.md §5.6;
    tests/test_sweep_faults.py checks). The processes Ray starts inherit the variable; it
    is restored afterwards, so a later `ray start` or join from this process is not
    refused."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def connect(address: str | None = None, num_cpus: int | None = None,
            num_gpus: int | None = None) -> RaySession:
    """Join `address`, or start a local Ray sized to this machine. A Ray already
    initialised in this process (tests, notebooks) is reused and left running."""
    if ray.is_initialized():
        return RaySession(connected_here=False)
    # Keep Ray's console quiet (log_to_driver=False, warnings only): the sweep prints its
    # own progress.
    if address:
        probe(address)
        _use_token_auth_if_available()
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as err:
            raise UserError(f"cannot join the Ray cluster at {address}: {err} (a cluster with "
                            "token auth needs its token in ~/.ray/auth_token or "
                            "RAY_AUTH_TOKEN)") from None
        return RaySession(connected_here=True)
    # With no RAY_AUTH_MODE set, Ray 2.60 turns token auth on for a local cluster and
    # warns at every start that it did: the sweep's console is for the sweep. A mode the
    # user chose keeps Ray's warnings.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR if os.environ.get("RAY_AUTH_MODE") is None else logging.WARNING)
    with single_node_on_loopback():
        ray.init(
            address="local",  # never join a cluster `ray start` left running by accident
            num_cpus=num_cpus or os.cpu_count() or 1,
            num_gpus=local_gpu_count() if num_gpus is None else num_gpus,
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
            _system_config={"preload_python_modules": list(TRIAL_PRELOAD_MODULES),
                            "idle_worker_killing_time_threshold_ms": IDLE_WORKER_EXIT_MS},
        )
    return RaySession(connected_here=True)


@contextmanager
def ray_session(address: str | None = None) -> Iterator[RaySession]:
    """connect() for a block that submits several sweeps: they share this Ray instead of
    each starting and stopping its own."""
    session = connect(address)
    try:
        yield session
    finally:
        session.close()
