"""The multi-node path for real: a two-node Ray cluster on this machine (`ray start --head`,
then a second `ray start --address` with its own CPU and a `node2` resource), the smoke
sweep submitted to it through `--address`, and both nodes running trials.

Which node ran a trial: each run's MLflow tag `monoscale.ray_node_id`, set from inside
the trial. Both nodes are on 127.0.0.1 (same host name and IP), so the node id is the
only thing that tells them apart.

Cleanup stops only what this test started: each `ray start --block` runs in its own
session, and every process of those two sessions is killed at the end (never `ray stop`,
which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps import tracking
from sweeps.driver import plan
from sweeps.spec import load_spec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "sweeps" / "smoke.yaml"
START_TIMEOUT_S = 90
SUBMIT_TIMEOUT_S = 420

# Runs in a fresh interpreter so that this test never initialises Ray in the pytest
# process (other modules keep a local Ray there). Prints the cluster as JSON.
_INSPECT = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[2])
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= int(sys.argv[3]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({"nodes": [{"id": n["NodeID"], "resources": n["Resources"]} for n in nodes]}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the Ray head did not listen on {port}:\n{log.read_text()}")


def _inspect(address: str, env: dict[str, str], n_nodes: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _INSPECT, address, str(START_TIMEOUT_S),
                          str(n_nodes)], env=env, capture_output=True, text=True,
                         timeout=START_TIMEOUT_S + 30, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _session_pids(session_ids: set[int]) -> list[int]:
    """Every process in the given sessions (what our two `ray start`s spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) in session_ids:  # field 6 of stat: the session id
            pids.append(int(entry.name))
    return pids


def _stop(processes: list[subprocess.Popen]) -> None:
    sessions = {p.pid for p in processes}  # each was started with start_new_session
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in processes:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for pid in _session_pids(sessions):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in processes:
        p.wait(timeout=10)


@pytest.fixture
def two_node_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """(GCS address, environment with this cluster's auth token)."""
    if shutil.which("ray") is None:
        pytest.skip("the `ray` CLI is not installed (pip install 'ray[default]')")
    # Short: Ray's unix socket paths under the temp dir must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="mr", dir="/tmp"))
    # Token auth for the whole cluster, with a token of its own (never ~/.ray/auth_token):
    # in Ray 2.60 a joining node or client sends a token only when RAY_AUTH_MODE=token.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1",
              "--object-store-memory=100000000", "--block"]
    started: list[subprocess.Popen] = []
    try:
        head_log = temp / "head.log"
        with head_log.open("w") as out:  # the child keeps its own copy of the descriptor
            started.append(subprocess.Popen(
                ["ray", "start", "--head", f"--port={port}", "--include-dashboard=false",
                 f"--dashboard-port={_free_port()}", f"--temp-dir={temp / 'ray'}", *common],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_port(port, started[0], head_log)
        # The second node joins the head's session directory (one raylet per node id, so
        # two raylets on one host work); it needs no --temp-dir of its own.
        with (temp / "node2.log").open("w") as out:
            started.append(subprocess.Popen(
                ["ray", "start", f"--address={address}", '--resources={"node2": 1}', *common],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        cluster = _inspect(address, env, n_nodes=2)
        assert len(cluster["nodes"]) == 2, (temp / "node2.log").read_text()
        yield address, env
    finally:
        _stop(started)
        shutil.rmtree(temp, ignore_errors=True)


def test_smoke_sweep_runs_on_both_nodes(two_node_cluster: tuple[str, dict[str, str]],
                                        tmp_path: Path) -> None:
    address, env = two_node_cluster
    storage = tmp_path / "store"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    submit = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "submit", str(SMOKE), "--address", address,
         "--tracking-uri", tracking_uri, "--storage", str(storage)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]

    # Every grid point has exactly one run in MLflow, and it FINISHED.
    spec = load_spec(SMOKE)
    keys = {c.run_key for c in plan(spec, build=False, verify="size")}
    target = tracking.find_sweep(tracking_uri, spec.name)
    assert target is not None
    runs = tracking.child_runs(target)
    assert sorted(r.tags[tracking.TAG_KEY] for r in runs) == sorted(keys)
    assert {r.status for r in runs} == {"FINISHED"}
    client = MlflowClient(tracking_uri)
    assert all("loss" in client.get_run(r.run_id).data.metrics for r in runs)

    # Which node ran each grid point: the trial tags its run with its Ray node id.
    cluster = _inspect(address, env, n_nodes=2)
    node_of_key = {r.tags[tracking.TAG_KEY]: r.tags[tracking.TAG_NODE] for r in runs}
    assert set(node_of_key) == keys
    head = next(n["id"] for n in cluster["nodes"] if "node2" not in n["resources"])
    node2 = next(n["id"] for n in cluster["nodes"] if "node2" in n["resources"])
    per_node = {node: sum(1 for n in node_of_key.values() if n == node) for node in (head, node2)}
    assert set(node_of_key.values()) == {head, node2}, per_node
