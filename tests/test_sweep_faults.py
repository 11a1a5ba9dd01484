"""Faults that need a real sweep: two submits of one sweep at once, the
kill -9 / resume / fresh-store sequence, and the sockets a local sweep listens on.
Real Ray and MLflow, on the small synthetic cache; the checks that run before Ray are in
tests/test_faults.py."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sessions import kill_session

import sweeps
from sweeps import tracking
from sweeps.driver import Where, submit
from sweeps.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]
ROOT = Path(sweeps.__file__).resolve().parents[1]  # drivers run the code under test


def write_spec(tmp_path: Path, cache: Path, n_steps: str = "[20, 40]") -> Path:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"name: t\ncache: {{path: {cache}}}\n"
                    "base: {lr: 3e-3, batch_size_tokens: 256, eval_n_tokens: 1024}\n"
                    f"grid: {{n_features: [32], n_steps: {n_steps}}}\n"
                    "max_concurrent_trials: 2\n")
    return spec


def driver(spec: Path, log: Path, *flags: str) -> subprocess.Popen:
    """`monoscale submit SPEC FLAGS` in its own session (its Ray too)."""
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", "submit", str(spec), *flags],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)


def finished_per_point(uri: str) -> dict[str, int]:
    """run_key -> FINISHED child runs, over every active parent of sweep t."""
    target = tracking.find_sweep(uri, "t")
    counts: dict[str, int] = {}
    for run in tracking.child_runs(target) if target else []:
        if run.finished:
            counts[run.run_key or ""] = counts.get(run.run_key or "", 0) + 1
    return counts


# ---- two submits of one sweep at once ---------------------------------------------------
@pytest.mark.parametrize("layout", ["one storage folder", "two storage folders, one store"])
def test_two_concurrent_submits_train_each_point_once_and_the_second_names_the_first(
        tmp_path: Path, synthetic_cache: Path, layout: str) -> None:
    # One folder: the lock in it decides. Two folders sharing one tracking store (what a
    # tracking server shared by machines looks like): the claim in MLflow decides.
    spec, uri = write_spec(tmp_path, synthetic_cache), f"sqlite:///{tmp_path / 'mlflow.db'}"
    folders = ([tmp_path / "store"] * 2 if layout == "one storage folder"
               else [tmp_path / "a", tmp_path / "b"])
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    drivers = [driver(spec, log, "--storage", str(folder), "--tracking-uri", uri)
               for folder, log in zip(folders, logs, strict=True)]
    try:
        codes = [d.wait(timeout=240) for d in drivers]
    finally:
        for d in drivers:
            kill_session(d.pid)
    outputs = [log.read_text() for log in logs]
    assert sorted(codes) == [0, 2], outputs
    loser = outputs[codes.index(2)].strip().splitlines()
    assert len(loser) == 1 and "Traceback" not in loser[0], loser
    assert loser[0].startswith("monoscale submit: error: sweep 't' is being run by pid "), loser
    assert f"on {socket.gethostname()} since " in loser[0]
    counts = finished_per_point(uri)
    assert sorted(counts.values()) == [1, 1], counts  # each point once, by the winner
    target = tracking.find_sweep(uri, "t")
    assert target is not None
    assert {r.status for r in tracking.child_runs(target)} == {"FINISHED"}  # none KILLED


# ---- the sequence of the issue: kill -9, resume, then a fresh store on the old folder -----
def test_kill_resume_then_a_fresh_store_on_the_same_folder_never_loses_a_point(
        tmp_path: Path, synthetic_cache: Path, capsys: pytest.CaptureFixture) -> None:
    spec_path = write_spec(tmp_path, synthetic_cache)
    spec = load_spec(spec_path)
    # Kill once mid-sweep, and once after every run finished in MLflow but (likely) before
    # the driver recorded its Tune experiment as ended: the moment that lost every point.
    for i, kill_after in enumerate((1, 2)):
        folder = tmp_path / f"it{i}" / ".monoscale"
        where = Where.resolve(str(folder), None)
        first = driver(spec_path, tmp_path / f"it{i}.log", "--storage", str(folder))
        try:
            while first.poll() is None and sum(finished_per_point(where.tracking_uri)
                                               .values()) < kill_after:
                time.sleep(0.1)
        finally:
            first.kill()
            first.wait()
            kill_session(first.pid)
        manifest = folder / "tune" / "t.monoscale.json"
        if i == 1 and manifest.exists():  # what a kill a moment earlier leaves behind
            manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "done": False}))
        assert submit(spec, where) == 0  # resume
        assert sorted(finished_per_point(where.tracking_uri).values()) == [1, 1]
        fresh = Where.resolve(str(folder), f"sqlite:///{tmp_path / f'fresh{i}.db'}")
        capsys.readouterr()
        assert submit(spec, fresh) == 0, capsys.readouterr()
        assert sorted(finished_per_point(fresh.tracking_uri).values()) == [1, 1]
        assert "resuming the interrupted Tune experiment" not in capsys.readouterr().out


# ---- what a local sweep listens on ----------------------------------------------------------
def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the processes hold."""
    listening: dict[int, tuple[str, int]] = {}
    for family, table in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            listening[int(fields[9])] = (socket.inet_ntop(family, words), int(port, 16))
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in listening:
                found.append((pid, *listening[int(target[8:-1])]))
    return found


def ray_pids() -> set[int]:
    """This driver and every process its local Ray runs: Ray's own and their children."""
    from ray._private import worker

    roots = {os.getpid()} | {info.process.pid for infos in
                             worker._global_node.all_processes.values() for info in infos}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    pids, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in pids:
            pids.add(pid)
            stack += children.get(pid, [])
    return pids


def test_a_local_sweep_listens_on_loopback_only(tmp_path: Path, synthetic_cache: Path) -> None:
    where = Where.resolve(str(tmp_path / "store"), None)
    spec = load_spec(write_spec(tmp_path, synthetic_cache, n_steps="[4000]"))
    sweep = threading.Thread(target=submit, args=(spec, where))
    sweep.start()
    try:
        deadline = time.monotonic() + 120
        while not any(r.status == "RUNNING" for r in _children(where)):  # a trial is training
            assert sweep.is_alive() and time.monotonic() < deadline
            time.sleep(0.2)
        sockets = listening_sockets(ray_pids())
    finally:
        sweep.join()
    assert len(sockets) >= 5, sockets  # driver, GCS, raylet (2), trial worker, agent
    exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback
               and not (ipaddress.ip_address(s[1]).version == 6
                        and ipaddress.ip_address(s[1]).ipv4_mapped is not None
                        and ipaddress.ip_address(s[1]).ipv4_mapped.is_loopback)]
    assert not exposed, exposed


def _children(where: Where) -> list[tracking.RunRecord]:
    target = tracking.find_sweep(where.tracking_uri, "t") if (
        where.storage_dir / "mlflow.db").exists() else None
    return tracking.child_runs(target) if target else []
