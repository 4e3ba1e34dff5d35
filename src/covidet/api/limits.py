"""Request bodies: authenticated before they are read, and never longer than a limit (ASGI middleware).

FastAPI reads and parses a route's body *before* it runs the route's dependencies, authentication
included: an anonymous client could make the server read, keep and parse any amount of JSON before
being told 401. :class:`BodyGuard` sits in front of the app and, for every request that has a body:

1. On an API route that needs a user (everything under ``/api/v1`` but ``POST /auth/token``,
   ``POST /auth/login`` and the device upload ``POST /images``, whose route checks the device key
   before it reads), checks the credential from the headers alone, exactly as
   :func:`covidet.api.auth.get_current_user` will (bearer token first, else session cookie), and
   answers 401 without reading one byte of the body when there is none or it is not valid.
2. Refuses with 413 a declared ``Content-Length`` above the limit, before reading.
3. Counts the bytes as they arrive, for every request (chunked bodies have no ``Content-Length``, and
   a declared length is not trusted either) and answers 413 as soon as the count passes the limit.

Limits: ``settings.max_body_bytes`` (default 1 MiB) for JSON and form bodies; the image upload keeps
its own, larger limit (``max_image_bytes`` + the multipart envelope, enforced and recorded by
:mod:`covidet.api.routes.images`), which this guard backs with a cap of its own,
:data:`UPLOAD_MARGIN_BYTES` higher.

A refusal is ``{"detail": reason}`` (the API's error shape) and a warning in the log with the client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool
from fastapi.security.utils import get_authorization_scheme_param
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from covidet.api.deps import API_KEY_HEADER, API_PREFIX
from covidet.store import review_queries as rq
from covidet.store.db import RETRY_AFTER_SECONDS, Database, database_unavailable
from covidet.store.models import utcnow

__all__ = ["PUBLIC_BODY_ROUTES", "UPLOAD_MARGIN_BYTES", "UPLOAD_ROUTE", "BodyGuard", "capped_receive"]

logger = logging.getLogger(__name__)

#: Routes that take a body from a caller without a user's credential (the password forms).
PUBLIC_BODY_ROUTES = frozenset({("POST", f"{API_PREFIX}/auth/token"), ("POST", f"{API_PREFIX}/auth/login")})
#: The device upload: authenticated (X-API-Key) and limited by its route, before it reads the body.
UPLOAD_ROUTE = ("POST", f"{API_PREFIX}/images")
#: DICOMweb STOW-RS (``POST /dicom-web/studies[/{uid}]``): like the upload, authenticated (device key or
#: admin token) and limited (max_image_bytes + its envelope) by its route before it reads the body.
STOW_ROUTE_PREFIX = "/dicom-web/studies"
#: How far above the upload route's own limit this guard cuts an upload off (more than one network read).
UPLOAD_MARGIN_BYTES = 1024 * 1024
_SESSION_COOKIE = "covidet_session"  # covidet.api.auth.SESSION_COOKIE (not imported: auth imports deps)
_CHALLENGE = [(b"www-authenticate", b'Bearer realm="covidet"')]


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


def _credential_error(db: Database, request: Request) -> str | None:
    """Why ``request`` carries no valid user credential, or ``None`` when it does. Mirrors
    :func:`covidet.api.auth.get_current_user` (without the CSRF check, which needs the body)."""
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    now = utcnow()
    if scheme.lower() == "bearer":
        with db.session() as session:
            if token and rq.authenticate_api_token(session, token, now=now) is not None:
                return None
        return "invalid, expired or revoked token: get a new one from POST /api/v1/auth/token"
    session_id = request.cookies.get(_SESSION_COOKIE)
    if session_id:
        with db.session() as session:
            if rq.web_session_lookup(session, session_id, now=now) is not None:
                return None
        return "session expired or ended: sign in again"
    if request.headers.get(API_KEY_HEADER):
        return (
            f"a device API key only uploads images (POST {API_PREFIX}/images); "
            "reading data needs a user's bearer token or session"
        )
    return "not authenticated: send 'Authorization: Bearer <token>' (from POST /api/v1/auth/token) or sign in"


async def _answer(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """Pure ASGI middleware (see the module docstring).

    Args:
        app: the application behind it.
        db: where bearer tokens and sessions are looked up.
        max_body_bytes: the most bytes of any body but an image upload.
        max_upload_bytes: the most bytes of an image upload's body (its route refuses at a lower
            count first, and records the refusal; this is the backstop).
    """

    def __init__(self, app: ASGIApp, *, db: Database, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.db = db
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        route = (scope["method"], scope["path"].rstrip("/") or "/")
        peer = request.client.host if request.client else "unknown address"
        is_upload = route == UPLOAD_ROUTE or (
            route[0] == "POST" and (route[1] + "/").startswith(STOW_ROUTE_PREFIX + "/")
        )
        limit = self.max_upload_bytes if is_upload else self.max_body_bytes
        needs_user = (
            scope["path"].startswith(API_PREFIX + "/") and not is_upload and route not in PUBLIC_BODY_ROUTES
        )

        # Only a request that announces a body is checked before it is read (the others are answered
        # by the route's own dependencies, at no extra cost); every request's bytes are counted.
        if needs_user and _has_body(scope):
            try:
                reason = await run_in_threadpool(_credential_error, self.db, request)
            except Exception as exc:  # outside the app's handlers: a busy database is a 503 here too
                if (busy := database_unavailable(exc)) is None:
                    raise
                logger.warning("%s %s from %s answered 503: %s", *route, peer, busy)
                await _answer(send, 503, busy, [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
                return
            if reason is not None:
                logger.warning("%s %s from %s refused before its body: %s", *route, peer, reason)
                await _answer(send, 401, reason, _CHALLENGE)
                return

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            logger.warning("%s %s from %s: declared body of %s bytes > %d", *route, peer, declared, limit)
            await _answer(send, 413, _too_large(limit, is_upload, declared), [(b"connection", b"close")])
            return

        await self.app(scope, _counting(receive, limit, lambda: _too_large(limit, is_upload, None)), send)


def _too_large(limit: int, is_upload: bool, declared: str | None) -> str:
    size = f"request body of {declared} bytes" if declared else "request body"
    setting = "COVIDET_MAX_IMAGE_BYTES" if is_upload else "COVIDET_MAX_BODY_BYTES"
    return f"{size} is more than the limit of {limit} bytes ({setting})"


def _counting(receive: Receive, limit: int, reason: Callable[[], str]) -> Receive:
    """``receive`` that raises a 413 HTTPException once more than ``limit`` body bytes came in.

    An HTTPException is what FastAPI re-raises from its body parsing (any other error there becomes a
    400), and Starlette's exception middleware answers it in the API's ``{"detail"}`` shape."""

    def refuse(received: int) -> HTTPException:
        logger.warning("request body passed the limit of %d bytes while it was read", limit)
        return HTTPException(413, detail=reason(), headers={"Connection": "close"})

    return capped_receive(receive, limit, refuse)


def capped_receive(receive: Receive, limit: int, too_large: Callable[[int], Exception]) -> Receive:
    """``receive`` that counts the body bytes as they come in and raises ``too_large(received)`` (the
    bytes counted so far) as soon as they are more than ``limit``; other messages pass unchanged."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(received)
        return message

    return counted
