"""Writing results so that a failure leaves nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a sibling temp file, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_analysis_dir(out_dir: str | Path, parts: dict[str, tuple[dict[str, dict[str, Any]],
                                                                    dict[str, Figure]]]) -> Path:
    """For each part ('' = DIR itself): DIR/<part>/<file>.json for each JSON document and
    DIR/<part>/<name>.png/.svg for each figure, built in a temp dir, moved into place whole."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        for part, (documents, figures) in parts.items():
            where = tmp / part if part else tmp
            where.mkdir(parents=True, exist_ok=True)
            for file_name, document in documents.items():
                (where / file_name).write_text(json.dumps(document, indent=2) + "\n")
            for name, fig in figures.items():
                fig.savefig(where / f"{name}.png", dpi=150)
                fig.savefig(where / f"{name}.svg")
                plt.close(fig)  # pyplot keeps every figure it made until closed
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
