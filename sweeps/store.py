"""Where a sweep writes, checked before MLflow or Ray touches it: the tracking URI made
absolute, the SQLite store file and the storage folder readable, writable and whole.

MLflow meets these faults late and loudly: a damaged or truncated mlflow.db gave an
SQLAlchemy traceback in `submit` and `status`; a read-only store folder made MLflow retry
"unable to open database file" for 114 s (measured here) before a traceback; a relative
`sqlite:///mlflow.db` named a different file in every Ray worker (their working folders
differ), so each trial logged to a new empty store and failed. Each is one line here,
naming the file, before anything is written.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sae_core.errors import UserError

# What MLflow can track to (SQLAlchemy databases, a server). MLflow 3.17 refuses a
# plain folder (the file store) unless MLFLOW_ALLOW_FILE_STORE=true.
_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def normalize_tracking_uri(uri: str) -> str:
    """`uri` as every process of a sweep must read it: a SQLite path made absolute (Ray
    workers run in other folders); an in-memory or file store refused."""
    scheme = uri.partition(":")[0].split("+")[0].lower() if "://" in uri else "file"
    if scheme not in _SCHEMES:
        what = ("a folder (MLflow's file store, which MLflow 3.17 refuses)" if scheme == "file"
                else f"an unknown scheme {scheme!r}")
        raise UserError(f"--tracking-uri {uri!r}: {what}; give sqlite:///PATH/mlflow.db or "
                        "http://HOST:PORT")
    if scheme != "sqlite":
        return uri
    head, _, rest = uri.partition("://")
    path, sep, query = rest.partition("?")
    if path in ("", "/", "/:memory:"):
        raise UserError(f"--tracking-uri {uri!r}: an in-memory SQLite store lives in one "
                        "process, and every trial logs from its own; give a file")
    # sqlite:///rel.db is relative to the working folder, sqlite:////abs.db absolute
    return f"{head}:///{Path(path[1:]).resolve()}{sep}{query}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///` store, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: Path, what: str) -> None:
    """`path` is a folder this process can write into, or can be made as one."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {existing} is read-only for this user; choose "
                        "another folder")


def check_store(uri: str, write: bool) -> None:
    """A SQLite store file, if there is one, is an MLflow store whose pages all read back
    (PRAGMA quick_check), and with `write` its file and folder are writable (SQLite
    writes a journal beside it). A missing store is fine: with `write` its folder must
    be one this process can create it in. Other stores are checked by MLflow itself."""
    path = sqlite_path(uri)
    if path is None:
        return
    if not path.exists():
        if write:
            check_writable_dir(path.parent, "the MLflow store's folder")
        return
    if not path.is_file():
        raise UserError(f"MLflow store {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"MLflow store {path} is not readable by this user")
    problem = _sqlite_problem(path)
    if problem:
        raise UserError(f"MLflow store {path} is damaged ({problem}): restore it from a "
                        "copy, or give another --storage or --tracking-uri; it was left as "
                        "it is")
    if write and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)):
        read_only = path if not os.access(path, os.W_OK) else path.parent
        raise UserError(f"MLflow store {path} is read-only ({read_only} cannot be written by "
                        "this user): a sweep writes every run there")


def _sqlite_problem(path: Path) -> str | None:
    """Why `path` is not a readable MLflow SQLite store, or None."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as err:
        return str(err)
    try:
        check = db.execute("PRAGMA quick_check").fetchone()
        tables = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:  # "file is not a database", "malformed", ...
        return str(err)
    finally:
        db.close()
    if not check or check[0] != "ok":
        return f"sqlite quick_check: {check[0] if check else 'no answer'}"
    if path.stat().st_size and not {"experiments", "runs", "alembic_version"} <= tables:
        return "an SQLite file, but not an MLflow store (no experiments, runs tables)"
    return None
