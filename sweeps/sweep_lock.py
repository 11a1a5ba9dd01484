"""One driver per sweep and store: a lock in the storage folder, a claim in MLflow.

Two submits of one spec on one store trained every point twice, each marked the
other's live runs KILLED, and one restored the other's live Tune experiment. Now the
second one exits 2 naming who holds the sweep (pid, host, since when):

- The storage folder: `DIR/locks/<sweep>.lock`, flock-ed for the driver's life. It
  guards what lives there (`tune/<sweep>`, `runs/<sweep>`, a local mlflow.db) and the
  kernel drops it when the driver dies, even by kill -9: never stale.
- The tracking store, which other storage folders and other machines may share (a
  tracking server): a claim on the sweep's parent run (sweeps/tracking.py). Claim n is
  a param, written once, so of two drivers racing for it exactly one gets it; its
  holder refreshes a heartbeat every HEARTBEAT_S and releases it at exit. A claim whose
  holder is dead is taken over with claim n + 1: on this host, when its process is
  gone; elsewhere, when its heartbeat is older than STALE_S.

Not covered: hosts whose clocks disagree by more than STALE_S, and a driver stopped
(SIGSTOP, a suspended laptop) for longer than STALE_S, whose claim another host may take
over; the stopped driver notices at its next heartbeat and stops.
"""

from __future__ import annotations

import _thread
import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from sae_core.errors import UserError
from sweeps import tracking

# An MLflow write takes milliseconds here (log_batch of 1,000 points 56-85 ms, SQLite and
# HTTP alike: docs/METHOD.md §5.7), so a driver silent for six heartbeats is gone or cut off.
HEARTBEAT_S = 20.0
STALE_S = 120.0


class SweepBusy(UserError):
    """Another live driver holds the sweep."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_start: str  # the process's start time (/proc/PID/stat): a reused pid is another
    since: str  # local time the hold began
    command: str
    since_s: float = 0.0  # the same, as time.time(): a claim's age before its first beat

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since} ({self.command})"

    def alive_here(self) -> bool | None:
        """Whether the holder still runs, if it ran on this host (else None)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process, alive
        return _start_time(self.pid) in (self.pid_start, "")


def _start_time(pid: int) -> str:
    """The process's start in clock ticks after boot ("" where /proc is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def this_process() -> Holder:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
    return Holder(socket.gethostname(), os.getpid(), _start_time(os.getpid()),
                  time.strftime("%Y-%m-%d %H:%M:%S"), command[:300], time.time())


def _holder(text: str | None) -> Holder | None:
    try:
        return Holder(**json.loads(text or ""))
    except (ValueError, TypeError):
        return None


# ---- the storage folder ---------------------------------------------------------------
_HELD: dict[Path, IO[str]] = {}  # locks this process holds: re-entered, not re-taken


@contextlib.contextmanager
def hold_storage(storage_dir: Path, sweep: str) -> Iterator[None]:
    """Hold `sweep` in `storage_dir` for the block; SweepBusy naming the holder when
    another process does. Re-entrant: the adaptive loop's rounds hold it once."""
    path = storage_dir / "locks" / f"{sweep}.lock"
    if path in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - open for the lock's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _holder(handle.read())
        handle.close()
        who = holder.describe() if holder else "another process"
        raise SweepBusy(f"sweep '{sweep}' is being run by {who} (lock {path}): wait for it "
                        "to end, or stop it; nothing was started") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(asdict(this_process())))
    handle.flush()
    _HELD[path] = handle
    try:
        yield
    finally:
        del _HELD[path]
        handle.close()  # the lock goes with the descriptor; the file stays, harmless


# ---- the tracking store ---------------------------------------------------------------
@dataclass
class StoreClaim:
    """This driver's claim on a sweep in its tracking store, kept alive by a thread."""

    target: tracking.TrackingTarget
    n: int
    stop: threading.Event

    def release(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):  # the store may be what failed
            tracking.beat(self.target, self.n, "released")


def _is_live(claim: tracking.Claim) -> tuple[bool, Holder | None]:
    holder = _holder(claim.holder)
    if claim.n == 0 or claim.beat == "released":
        return False, holder
    here = holder.alive_here() if holder else None
    if here is not None:
        return here, holder
    try:
        last = float(claim.beat or "")
    except ValueError:  # written a moment ago, not beaten yet: as old as the claim
        last = holder.since_s if holder else 0.0
    return time.time() - last < STALE_S, holder


def claim_sweep(target: tracking.TrackingTarget) -> StoreClaim:
    """Claim the sweep in its store for this driver (SweepBusy when a live one holds it),
    and keep the claim's heartbeat going until release()."""
    me = json.dumps(asdict(this_process()))
    for _ in range(5):  # each lost race means another driver now holds a newer claim
        latest = tracking.latest_claim(target)
        live, holder = _is_live(latest)
        if live:
            who = holder.describe() if holder else latest.holder
            raise SweepBusy(f"sweep '{target.sweep}' is being run by {who} (claim "
                            f"{tracking.CLAIM}.{latest.n} on MLflow run "
                            f"{target.parent_run_id} in {target.uri}): wait for it to end, "
                            "or stop it; nothing was started")
        if tracking.write_claim(target, latest.n + 1, me):
            tracking.beat(target, latest.n + 1, str(time.time()))
            claim = StoreClaim(target, latest.n + 1, threading.Event())
            threading.Thread(target=_keep_alive, args=(claim,), daemon=True,
                             name="monoscale-claim").start()
            return claim
    raise SweepBusy(f"sweep '{target.sweep}': other drivers keep claiming it in {target.uri}")


def _keep_alive(claim: StoreClaim) -> None:
    """Heartbeat; if another driver took the sweep over (this one was silent past
    STALE_S), stop this driver rather than run the sweep twice."""
    while not claim.stop.wait(HEARTBEAT_S):
        try:
            if tracking.latest_claim(claim.target).n != claim.n:
                print(f"[{claim.target.sweep}] another driver took the sweep over while this "
                      "one was silent: stopping", file=sys.stderr, flush=True)
                _thread.interrupt_main()
                return
            tracking.beat(claim.target, claim.n, str(time.time()))
        except Exception as err:  # a store that fails now fails the sweep's own calls too
            print(f"[{claim.target.sweep}] heartbeat failed: {err}", file=sys.stderr)
