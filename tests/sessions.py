"""Processes a test starts in a session of their own (a driver and its Ray), and their end."""

import os
import signal
from pathlib import Path


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session a driver was started in (its Ray too)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
