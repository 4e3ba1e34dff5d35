"""Alembic environment: runs on the connection that :func:`covidet.store.db.init_db` passes in, or on
``sqlalchemy.url`` when run through the ``alembic`` command."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

from covidet.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
