"""503 Service Unavailable, with Retry-After, when the database is busy or down.

A request that finds no free database connection within ``db_pool_timeout``, or no SQLite write lock
within the busy timeout, or whose audit event could not be committed, is an overload or an outage,
not a bug: the client is told to come back (``Retry-After``) and the log gets one WARNING line with
the route and the reason, not a traceback. Any other database error stays a 500 (logged with its
traceback by the app's catch-all handler).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from covidet.api.audit_writer import AuditUnavailable
from covidet.store.db import RETRY_AFTER_SECONDS, database_unavailable

__all__ = ["install_unavailable_handlers", "unavailable_response"]

logger = logging.getLogger(__name__)


def unavailable_response(request: Request, reason: str) -> JSONResponse:
    """The 503 answer (and its log line) for ``reason``."""
    client = request.client.host if request.client else "unknown address"
    logger.warning("%s %s from %s answered 503: %s", request.method, request.url.path, client, reason)
    return JSONResponse(
        status_code=503,
        content={"detail": reason},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def install_unavailable_handlers(app: FastAPI) -> None:
    """Answer database overloads and outages raised by routes and dependencies with 503."""

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        reason = database_unavailable(exc)
        if reason is None:  # a real failure: the same answer as the app's catch-all handler
            logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return JSONResponse(status_code=500, content={"detail": "internal server error"})
        return unavailable_response(request, reason)

    async def audit_unavailable(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuditUnavailable)
        return unavailable_response(request, exc.reason)

    for error in (sa_exc.TimeoutError, sa_exc.OperationalError, sa_exc.InterfaceError):
        app.add_exception_handler(error, database_error)
    app.add_exception_handler(AuditUnavailable, audit_unavailable)
