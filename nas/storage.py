"""Where studies live: storage URLs and files (SQLite, journal files, database servers), opening
them, and how often a running trial's heartbeat beats there.

On RDB storages (SQLite, PostgreSQL, MySQL) the heartbeat is Optuna's own
(`RDBStorage(heartbeat_interval=..., grace_period=...)`, timed by the database's clock, so workers
on machines whose clocks differ agree) with its `RetryHeartbeatStaleTrialCallback`; journal files
have none in Optuna, and `nas.liveness` keeps one for them.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.errors import NasError

DEFAULT_STORAGE = "sqlite:///studies/nas.db"
JOURNAL_SUFFIXES = (".log", ".jsonl")
HEARTBEAT_ENV = "NAS_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_S = 30.0
MAX_RETRY = 2


def is_journal(storage: str) -> bool:
    return "://" not in storage and storage.endswith(JOURNAL_SUFFIXES)


def storage_url(storage: str | None = None) -> str:
    """The storage as Optuna takes it: the default SQLite file under `studies/`, any Optuna
    storage URL, or a path ending in .log/.jsonl for a journal file shared by several processes.
    Touches no file (see `resolve_storage`)."""
    url = storage or DEFAULT_STORAGE
    if "://" in url:
        return url
    if not is_journal(url):
        raise NasError(
            f"storage '{url}' is neither a storage URL (e.g. sqlite:///studies/nas.db, "
            f"postgresql://...) nor a journal file path ending in {' or '.join(JOURNAL_SUFFIXES)}"
        )
    return str(Path(url).expanduser())


def resolve_storage(storage: str | None = None, create: bool = True) -> str:
    """`storage_url(storage)`, with the file system ready for it: with `create`, the folder of a
    SQLite or journal file is made; without, a SQLite or journal file that does not exist is a
    NasError (Optuna would silently create an empty one)."""
    url = storage_url(storage)
    path = storage_file(url)
    if path is None:
        return url
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise NasError(
            f"no study storage at '{path}'"
            + (f" (from {url})" if str(path) != url else "")
            + ("" if storage else "; pass --storage, or run nas search first")
        )
    return url


def storage_database(url: str) -> str | None:
    """Where a storage URL (or journal file path) keeps its studies: the journal file, the SQLite
    file, or a server's database name; None when it names none. URLs are parsed by SQLAlchemy,
    as Optuna's RDBStorage parses them (the query string is not part of the name)."""
    if is_journal(url):
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).database or None
    except ArgumentError:  # not a URL Optuna could open either; opening it says why
        return None


def storage_file(url: str) -> Path | None:
    """The local file of a journal or SQLite storage; None for a database server or an in-memory
    SQLite database."""
    if is_journal(url):
        return Path(url)
    database = storage_database(url) if url.startswith("sqlite:") else None
    return Path(database) if database and database != ":memory:" else None


def open_storage(storage: str | None = None, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for `storage` (see `resolve_storage`), or a one-line NasError."""
    url = resolve_storage(storage, create)
    try:
        if is_journal(url):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url))
        if url.startswith("sqlite"):
            _sqlite_wal(url)
            # SQLite serialises writers: wait for the lock instead of failing when processes share it.
            kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
        else:
            # A worker's connection sits idle for a whole training run; a server or firewall may
            # have dropped it by then: test it before use instead of failing the tell.
            kwargs = {"pool_pre_ping": True}
        with warnings.catch_warnings():  # the heartbeat arguments are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **_optuna_heartbeat_options())
    except NasError:
        raise
    except Exception as e:  # bad URL, missing driver, unreachable server: all the user's to fix
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, ImportError) and url.startswith("postgres"):
            reason += " (PostgreSQL needs a driver: pip install 'psycopg[binary]', and a postgresql+psycopg:// URL)"
        raise NasError(f"cannot open storage '{url}': {reason}") from None


def _optuna_heartbeat_options() -> dict[str, Any]:
    """RDBStorage's heartbeat: every NAS_HEARTBEAT_SECONDS (Optuna takes whole seconds), stale after
    twice that, and a stale trial retried (at most MAX_RETRY times) with Optuna's own callback."""
    interval = max(1, math.ceil(heartbeat_seconds()))
    try:  # Optuna >= 4.9 names it so; the older name is deprecated there
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

        key = "heartbeat_stale_trial_callback"
    except ImportError:
        from optuna.storages import RetryFailedTrialCallback as Retry

        key = "failed_trial_callback"
    return {"heartbeat_interval": interval, "grace_period": 2 * interval, key: Retry(max_retry=MAX_RETRY)}


def _sqlite_wal(url: str) -> None:
    """Switch a SQLite file to write-ahead logging (persistent in the file): with the default
    rollback journal, a reader (a heartbeat, another job's query) stalls every writer's commit."""
    import sqlite3

    path = storage_file(url)
    if path is None:
        return
    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def dashboard_command(storage: str | None = None) -> str:
    """The shell command that opens the storage in optuna-dashboard (absolute SQLite path)."""
    url = storage_url(storage)
    path = storage_file(url)
    if path is not None and not is_journal(url) and not path.is_absolute():
        url = "sqlite:///" + str(path.resolve())
    return f"optuna-dashboard {url}"


def heartbeat_seconds() -> float:
    text = os.environ.get(HEARTBEAT_ENV)
    if not text:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(text)
    except ValueError:
        raise NasError(f"{HEARTBEAT_ENV} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise NasError(f"{HEARTBEAT_ENV} must be positive, got {text!r}")
    return value


def trial_id(t: optuna.Trial | FrozenTrial) -> int:
    return t._trial_id  # Optuna exposes no public id; the storage API needs it


def optuna_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether `storage` keeps Optuna's own heartbeat: an RDBStorage opened by `open_storage`, also
    as a study holds it (wrapped in Optuna's cache, which passes the heartbeat through)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None
