"""Where a cache is built before it is published: a hidden sibling folder per build.

    DIR/../.NAME.tmp-<id>/        the rows, shards and meta.json while they are written
    DIR/../.NAME.tmp-<id>.lock    flock-ed by the build for as long as it runs

A killed build (kill -9, a lost machine, Ctrl-C during a rename) leaves its folder
behind; one probe found 219 MB and 1.3 GB of them. The kernel drops a dead process's
flock, so the next build of NAME removes every folder whose lock it can take: those
builders are dead. A folder without a lock file comes from a monoscale that did not
lock (or a build killed between its two first system calls): it is removed once
nothing in it changed for STALE_UNLOCKED_S.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# A live build rewrites its staging file continuously and its shards within seconds of
# each other; ten quiet minutes mean nobody is writing there.
STALE_UNLOCKED_S = 600.0


def _try_lock(path: Path) -> IO[bytes] | None:
    """The file opened and exclusively flock-ed, or None when a live process holds it."""
    handle = open(path, "a+b")  # noqa: SIM115 - kept open for the lock's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times)


def remove_dead_builds(out_dir: Path) -> list[Path]:
    """Remove the staging folders of `out_dir` left by builders that are dead; returns them."""
    removed: list[Path] = []
    if not out_dir.parent.is_dir():
        return removed
    for folder in sorted(out_dir.parent.glob(f".{out_dir.name}.tmp-*")):
        if not folder.is_dir():
            continue
        lock_path = folder.with_name(folder.name + ".lock")
        if lock_path.exists():
            handle = _try_lock(lock_path)
            if handle is None:
                continue  # its builder is alive
            with handle:
                shutil.rmtree(folder, ignore_errors=True)
                lock_path.unlink(missing_ok=True)
        elif time.time() - _newest_mtime(folder) > STALE_UNLOCKED_S:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            continue
        removed.append(folder)
    for lock_path in out_dir.parent.glob(f".{out_dir.name}.tmp-*.lock"):  # folder gone
        if not lock_path.with_suffix("").exists() and (handle := _try_lock(lock_path)):
            with handle:
                lock_path.unlink(missing_ok=True)
    if removed:
        print(f"removed {len(removed)} staging folder(s) of killed builds of {out_dir}: "
              f"{', '.join(p.name for p in removed)}", file=sys.stderr)
    return removed


@contextlib.contextmanager
def staging_folder(out_dir: Path) -> Iterator[Path]:
    """A new hidden staging folder beside `out_dir`, locked while the block runs; removed
    at the end unless the block renamed it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    folder = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    lock_path = folder.with_name(folder.name + ".lock")
    handle = _try_lock(lock_path)  # the lock before the folder: never a live unlocked one
    assert handle is not None  # a new name: nobody else holds it
    try:
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone already when it was published
        lock_path.unlink(missing_ok=True)
        handle.close()
