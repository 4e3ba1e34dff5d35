"""Engines, sessions and migrations of covidet's database.

One URL chooses the backend: ``sqlite:///path`` (default, embedded) or
``postgresql+psycopg://user:password@host:port/db``. :func:`init_db` brings the schema to the newest
Alembic revision; every entry point calls it once at start-up, so users never run migrations by hand.

The connection pool is sized from what one process serves at once (:func:`pool_size_for`), and a
request that still finds no connection waits a bounded time (``db_pool_timeout``) and is then refused
as busy, which callers recognise with :func:`database_unavailable` and answer "try again" (HTTP 503,
DICOM 0xA700) rather than as a server error. See docs/load.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from covidet.config import Settings

__all__ = [
    "API_THREADS",
    "BACKGROUND_CONNECTIONS",
    "RETRY_AFTER_SECONDS",
    "Database",
    "database_unavailable",
    "init_db",
    "make_engine",
    "pool_size_for",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: Threads on which FastAPI runs the sync routes and dependencies of one process: AnyIO's default
#: thread limiter (40 tokens), which covidet does not change.
API_THREADS = 40
#: Long-lived threads of ``covidet serve`` that use the database besides the requests: the MQTT
#: writer, the re-triage thread, the audit writer, and one spare (start-up queries, the CLI).
BACKGROUND_CONNECTIONS = 4
#: Seconds a caller refused as busy is told to wait before it tries again (HTTP Retry-After).
RETRY_AFTER_SECONDS = 5


def pool_size_for(settings: Settings) -> int:
    """Connections one process may need at once: ``settings.db_pool_size`` when set, else every DICOM
    association it admits, every API thread, every analysis thread and the background threads, so
    that no admitted client waits for a connection behind another (docs/load.md, finding 1)."""
    explicit = getattr(settings, "db_pool_size", None)
    if explicit:
        return int(explicit)
    return (
        int(getattr(settings, "dicom_max_associations", 32))
        + API_THREADS
        + int(getattr(settings, "analysis_workers", 1))
        + BACKGROUND_CONNECTIONS
    )


def database_unavailable(error: BaseException) -> str | None:
    """Why ``error`` means the database is busy or unreachable for now (a reason to answer "try again
    later"), or ``None`` for any other error (a bug, a refused row: a real failure).

    Busy: no pooled connection within ``db_pool_timeout`` (``sqlalchemy.exc.TimeoutError``), SQLite's
    write lock not obtained within its busy timeout (``database is locked``), a connection that failed
    or was lost (``OperationalError`` / ``InterfaceError``, e.g. PostgreSQL restarting)."""
    if isinstance(error, sa_exc.TimeoutError):
        return "database busy: no free connection in time, try again later"
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        orig = getattr(error, "orig", None)
        first = (str(orig or error).splitlines() or [""])[0]
        if "locked" in first or "busy" in first:
            return "database busy: write lock not obtained in time, try again later"
        # SQLite's other OperationalErrors (no such table, syntax) are bugs, not outages.
        if type(orig).__module__ != "sqlite3" or error.connection_invalidated:
            return f"database unavailable ({first[:80]}), try again later"
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers work while one writer commits; synchronous=FULL makes each commit durable
    # (fsync) before the device is told its data was accepted.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # Let SQLAlchemy, not the driver, emit BEGIN (see _sqlite_begin).
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Any) -> None:
    # A write transaction takes the write lock at BEGIN (IMMEDIATE): a deferred one that reads first
    # and writes later fails at once with SQLITE_BUSY when another writer got in between, whatever
    # the busy timeout. Reads stay DEFERRED so they never wait for writers.
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _private_sqlite_file(path: Path) -> None:
    """Create the SQLite file (and a missing folder) readable by its owner only: 0600 (0700).

    The database holds patient identifiers. SQLite creates its -wal and -shm files with the mode of
    the database file, so they follow. A file left readable by others (a database made before this
    check) is narrowed, with a warning."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):  # an empty file is an empty database to SQLite
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode & 0o777
            if mode & 0o077:
                file.chmod(mode & 0o700)
                logger.warning("%s was readable by other users (mode %o): now %o", file, mode, mode & 0o700)
        except FileNotFoundError:
            pass
        except PermissionError as exc:  # another user's file: say so, but do not stop
            logger.warning("could not make %s private: %s", file, exc)


def make_engine(
    url: str, *, pool_size: int | None = None, pool_timeout: float | None = None, **kwargs: Any
) -> Engine:
    """An engine for ``url``. For SQLite the file is created owner-only (0600, folder 0700) and the
    connection pragmas set.

    ``pool_size``: connections kept and handed out at most (no overflow beyond it), default
    SQLAlchemy's (5 plus 10 overflow); ``pool_timeout``: seconds a checkout waits for one before
    ``sqlalchemy.exc.TimeoutError`` (default 30). Neither applies to an in-memory SQLite database."""
    parsed = make_url(url)
    pool: dict[str, Any] = {}
    in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    if not in_memory:
        if pool_size is not None:
            pool.update(pool_size=pool_size, max_overflow=0)
        if pool_timeout is not None:
            pool["pool_timeout"] = pool_timeout
    if parsed.get_backend_name() == "sqlite":
        if not in_memory:
            _private_sqlite_file(Path(parsed.database or "").expanduser())
        connect_args = {"check_same_thread": False, "timeout": 30}
        engine = create_engine(url, connect_args=connect_args, **{**pool, **kwargs})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **{**pool, **kwargs})


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a password with '%' must be escaped.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def init_db(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest migration (creating it if empty)."""
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """An engine plus its session factory: what the ingest paths, the API and the worker share."""

    def __init__(self, url: str, *, migrate: bool = True, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        if migrate:
            init_db(self.engine)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self._dispose_hooks: list[Callable[[], None]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database of ``settings``, its pool sized by :func:`pool_size_for` and its checkout wait
        bounded by ``settings.db_pool_timeout``."""
        return cls(
            settings.resolved_database_url,
            pool_size=pool_size_for(settings),
            pool_timeout=float(getattr(settings, "db_pool_timeout", 10.0)),
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session that commits on success and rolls back on error.

        ``write=True`` for transactions that read then write (get-or-create, dedupe): on SQLite they
        take the write lock at BEGIN so concurrent writers queue instead of failing.
        """
        with self.sessionmaker() as session:
            if write and self.is_sqlite:
                session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def on_dispose(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (once) at the start of :meth:`dispose`: writers that batch work for this
        database (the audit writer) flush it there, while the engine still works."""
        self._dispose_hooks.append(hook)

    def dispose(self) -> None:
        hooks, self._dispose_hooks = self._dispose_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                logger.exception("error while flushing before the database closes")
        self.engine.dispose()
