"""Faults that need a real sweep (issue 15): two submits of one sweep at once, and the
kill -9 / resume / fresh-store sequence.
Real Ray and MLflow, on the small synthetic cache; the checks that run before Ray are in
tests/test_faults.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session a driver was started in (its Ray too)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


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
