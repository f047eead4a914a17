"""Where an Optuna study lives: in memory, an RDB URL (SQLite, PostgreSQL, MySQL) or a journal file.

Every process opens its own storage from the URL (an SQLAlchemy engine must not cross a fork).
SQLite gets a 60 s lock timeout and WAL journaling with synchronous=NORMAL (Optuna writes
each parameter in its own transaction; with the default rollback journal every one is an fsync,
about 10 s per trial of 210 parameters here, 4-20x less with WAL), so several worker processes
on one machine share the file; server databases get a connect timeout. Every RDB storage has
Optuna's heartbeat, so a trial of a worker that died (killed process or machine, lost
connection) is marked failed by the next trial of any worker instead of staying RUNNING.
`journal:///path/file.log` selects Optuna's JournalFileBackend (its recommendation for many
processes on one machine without a database server).
"""
from __future__ import annotations

import warnings

from bitalloc.errors import bad

SQLITE_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
HEARTBEAT_S = 30


def shown(url: str) -> str:
    """The URL with any password hidden, for messages."""
    if url.startswith("journal:"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def open_storage(url: str | None):
    """An Optuna storage for `url` (None: in memory). Raises a one-line BitallocError when the
    URL is malformed, its driver is missing or the database cannot be reached."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(url, str) or "://" not in url:
        raise bad("storage", url, "must be a database URL such as sqlite:///study.db or "
                  "postgresql://user@host/db (or journal:///path/file.log)")
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = url.split("://", 1)[1]
            with open(path, "ab"):
                pass
            return JournalStorage(JournalFileBackend(path))
        kw: dict = {}
        if url.startswith("sqlite"):
            kw["engine_kwargs"] = _sqlite_engine_kwargs(url)
        else:
            kw["engine_kwargs"] = {"pool_pre_ping": True}
            if url.startswith("postgresql"):
                kw["engine_kwargs"]["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        kw.update(heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S)
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kw)
    except Exception as e:  # sqlalchemy/driver errors: name the URL and the first line of the cause
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise bad("storage", shown(url), f"cannot be opened ({type(e).__name__}: {msg[:160]})") from None


def _sqlite_engine_kwargs(url: str) -> dict:
    """Connections made by us, so WAL applies from the first one (table creation included)."""
    import sqlite3

    from sqlalchemy.engine import make_url

    path = make_url(url).database
    if not path or path == ":memory:":
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}

    def connect():
        conn = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return {"creator": connect}
