"""Engines, sessions and migrations of covidet's database.

One URL chooses the backend: ``sqlite:///path`` (default, embedded) or
``postgresql+psycopg://user:password@host:port/db``. :func:`init_db` brings the schema to the newest
Alembic revision; every entry point calls it once at start-up, so users never run migrations by hand.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "init_db", "make_engine"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


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


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``. For SQLite the file is created owner-only (0600, folder 0700) and the
    connection pragmas set."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_sqlite_file(Path(parsed.database).expanduser())
        connect_args = {"check_same_thread": False, "timeout": 30}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


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

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        return cls(settings.resolved_database_url)

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

    def dispose(self) -> None:
        self.engine.dispose()
