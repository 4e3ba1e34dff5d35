"""Is the database there: the cheapest round trip, for health probes.

Contract of :func:`ping`: one ``SELECT 1`` on the session's connection; it returns when the database
answered and raises the driver's error (wrapped by SQLAlchemy) when it did not. It reads no table.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

__all__ = ["ping"]


def ping(session: Session) -> None:
    """Send ``SELECT 1`` and wait for the answer.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or does not answer.
    """
    session.execute(text("SELECT 1")).scalar_one()
