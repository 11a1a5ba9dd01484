"""The SAELens side of train_throughput.py: its helper (_saelens_step.py) as a subprocess
in SAELens's own virtualenv, asked one JSON line at a time so that its repetitions can be
interleaved with ours."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SAELENS_PYTHON = Path(os.environ.get("SAELENS_PYTHON", "/work/.venvs/saelens/bin/python"))
HELPER = Path(__file__).with_name("_saelens_step.py")


class SaeLens:
    """The helper subprocess in SAELens's virtualenv, asked one JSON line at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(SAELENS_PYTHON), str(HELPER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ask(self, request: dict[str, object]) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the SAELens helper exited; see its stderr above")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
