"""The tracking store: where a sweep writes, checked before MLflow or Ray touches it (the
tracking URI made absolute, the SQLite file and the storage folder readable, writable and
whole), and a new local store made ready on the driver. Runs in it: sweeps/tracking.py.

MLflow meets these faults late and loudly: a damaged or truncated mlflow.db gave an
SQLAlchemy traceback in `submit` and `status`; a read-only store folder made MLflow retry
"unable to open database file" for 114 s (measured once, MLflow 3.17) before a traceback; a relative
`sqlite:///mlflow.db` named a different file in every Ray worker (their working folders
differ), so each trial logged to a new empty store and failed. Each is one line here,
naming the file, before anything is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow import MlflowClient

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


def default_tracking_uri(storage_dir: Path) -> str:
    """The embedded store: one SQLite file (MLflow 3.17 refuses a bare ./mlruns)."""
    return f"sqlite:///{(storage_dir / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast, before any Ray or MLflow work, on a server that does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                pass
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise UserError(f"MLflow tracking server {uri} is unreachable: {reason}") from None


def prepare_store(uri: str) -> None:
    """Create a new local store's schema on the driver before any trial: two trials
    migrating a fresh SQLite schema at once raced (docs/METHOD.md §5.7). A new SQLite
    store is a copy of an empty, migrated one kept per MLflow version in the user's cache
    (MLflow's migrations took 2.4 s of CPU while Ray starts on the same cores); its Default
    experiment, which monoscale never uses, points where the template was made. Creates
    no experiment and no run."""
    # The schema-migration chatter of a new SQLite store is not news to the user.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if uri.startswith(("http://", "https://")):
        return
    check_store(uri, write=True)  # damaged, read-only: one line, before MLflow retries
    plain_sqlite = uri.startswith("sqlite:///") and "?" not in uri
    path = Path(uri.removeprefix("sqlite:///")) if plain_sqlite else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if path is not None and not path.exists():
        try:
            _copy_atomically(_empty_store_template(), path)
        except Exception:  # the copy only saves time: without it MLflow migrates below
            pass
    MlflowClient(uri).search_experiments(max_results=1)  # migrates an older store


def _empty_store_template() -> Path:
    """An empty SQLite store at this MLflow's schema, made once per user and version."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monoscale"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fresh = cache / f".{template.name}.{os.getpid()}"
        try:
            MlflowClient(f"sqlite:///{fresh}").search_experiments(max_results=1)
            os.replace(fresh, template)  # a concurrent maker's copy is as good
        finally:
            fresh.unlink(missing_ok=True)
    return template


def _copy_atomically(source: Path, dest: Path) -> None:
    """Copy to `dest` unless it exists by then: a hard link never replaces a store that
    a concurrent submit made and has begun to fill."""
    partial = dest.with_name(f".{dest.name}.{os.getpid()}")
    shutil.copyfile(source, partial)
    try:
        os.link(partial, dest)
    except FileExistsError:
        pass
    finally:
        partial.unlink()
