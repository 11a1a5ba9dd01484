"""Text to run a model on: the embedded `stdlib` corpus, local files, or a HF dataset.

`stdlib` is always present offline: the running interpreter's standard library sources
(code with English docstrings and comments, ~3.3M MiniLM tokens) plus `pydoc_data.topics`
(~0.12M tokens of English prose, docs/METHOD.md §5.1). Its documents are listed in sorted order
and then permuted with a fixed seed, so that any prefix of the corpus samples the whole
library (prose and code alike) rather than the modules whose names start with "a".
"""

from __future__ import annotations

import glob
import importlib
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sae_core.errors import UserError

# Directories of the stdlib tree that are not the standard library proper.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                        "__pycache__"})
_TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".py", ".tex", ".html", ".json"})
_STDLIB_ORDER_SEED = 0


def describe(corpus: str) -> dict[str, Any]:
    """What the corpus is, for meta.json (and for the cache's reuse fingerprint)."""
    if corpus == "stdlib":
        return {"name": "stdlib", "python_version": platform.python_version(),
                "order_seed": _STDLIB_ORDER_SEED}
    files = _local_files(corpus)
    if files is not None:  # edited texts (same count) must not reuse the old cache
        stats = [f.stat() for f in files]
        return {"name": corpus, "kind": "files", "n_files": len(files),
                "n_bytes": sum(s.st_size for s in stats),
                "latest_mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
    return {"name": corpus, "kind": "huggingface_dataset"}


def documents(corpus: str) -> Iterator[tuple[str, str]]:
    """(name, text) of each document, in a deterministic order.

    corpus: "stdlib"; a text file, a directory (its text files, recursively) or a glob;
    or else a Hugging Face dataset id "NAME" or "NAME:CONFIG" (train split, column "text").
    """
    if corpus == "stdlib":
        return _stdlib_documents()
    files = _local_files(corpus)
    if files is not None:
        return ((str(f), f.read_text(encoding="utf-8", errors="replace")) for f in files)
    return _dataset_documents(corpus)


def _stdlib_documents() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                   if not _SKIP_DIRS.intersection(p.relative_to(root).parts))
    topics = importlib.import_module("pydoc_data.topics").topics
    names = sorted(files + [f"pydoc_data.topics/{key}" for key in topics])
    for i in np.random.default_rng(_STDLIB_ORDER_SEED).permutation(len(names)):
        name = names[i]
        if name.startswith("pydoc_data.topics/"):
            yield name, topics[name.split("/", 1)[1]]
        else:
            yield name, (root / name).read_text(encoding="utf-8", errors="replace")


def _local_files(corpus: str) -> list[Path] | None:
    """The text files a local corpus names, or None when it names nothing local."""
    path = Path(corpus).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
    elif glob.has_magic(corpus):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    else:
        return None
    if not files:
        raise UserError(f"corpus {corpus!r} matches no text files")
    return files


def _dataset_documents(corpus: str) -> Iterator[tuple[str, str]]:
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise UserError(f"corpus {corpus!r} is not a local file, directory or glob; to read it "
                        "as a Hugging Face dataset, `pip install datasets`") from None
    name, _, config = corpus.partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as err:  # datasets raises many types for a missing dataset
        raise UserError(f"cannot open Hugging Face dataset {corpus!r}: {err}") from None
    for i, row in enumerate(rows):
        if "text" not in row:
            raise UserError(f"dataset {corpus!r} has no 'text' column (it has {list(row)})")
        yield f"{name}/{i}", row["text"]
