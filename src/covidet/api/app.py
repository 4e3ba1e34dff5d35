"""The FastAPI application factory of the API alone (JSON API, DICOMweb, OpenAPI docs).

The web pages are not here: :func:`covidet.app.server.create_app` mounts them on this app (the web
pages use the API; the API does not import them). ``covidet serve`` runs that whole server.

``create_app`` builds the app around shared objects: the settings, the database and the image
ingest service. Anything not given is made from the settings, and then also closed by the app when
it shuts down; objects handed in belong to the caller (the ``serve`` command, the tests).

Serve it with uvicorn, over TLS in any real deployment::

    uvicorn --factory covidet.app.server:create_app --host 0.0.0.0 --port 8443 \\
        --ssl-certfile cert.pem --ssl-keyfile key.pem
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from covidet import DISCLAIMER, __version__
from covidet.api.deps import API_PREFIX
from covidet.api.dicomweb import router as dicomweb_router
from covidet.api.docs_ui import mount_docs
from covidet.api.hsts import StrictTransportSecurity
from covidet.api.limits import UPLOAD_MARGIN_BYTES, BodyGuard
from covidet.api.methods import install_allow_header
from covidet.api.ratelimit import LoginThrottle
from covidet.api.routes import (
    alerts,
    audit,
    auth,
    devices,
    events,
    exports,
    health,
    images,
    reviews,
    studies,
    uploads,
    users,
    vitals,
    worklist,
)
from covidet.api.unavailable import install_unavailable_handlers
from covidet.config import Settings, get_settings
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.worker.queue import InProcessQueue

__all__ = ["API_PREFIX", "create_app"]

logger = logging.getLogger(__name__)

#: Status of each refusal raised by the query functions (covidet.store.review_queries).
_QUERY_ERROR_STATUS: dict[type[rq.QueryError], int] = {
    rq.NotFound: 404,
    rq.Forbidden: 403,
    rq.Conflict: 409,
    rq.Invalid: 422,
}


class _SecurityHeaders:
    """Pure ASGI middleware (it never touches the request body, unlike BaseHTTPMiddleware): API answers
    are not to be sniffed as another type, framed, or kept by caches unless a route says otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in (
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    ingest: ImageIngest | None = None,
) -> FastAPI:
    """The covidet API.

    Args:
        settings: defaults to :func:`covidet.config.get_settings` (environment, config file).
        db: the database; default ``Database(settings.resolved_database_url)`` (migrated at start).
        ingest: the image ingest service; default one over ``db``, the image store of ``settings``
            and an in-process queue without a consumer (images stay ``queued`` until a worker runs).

    Routes: the JSON API under ``/api/v1`` (see docs/api.md); OpenAPI at ``/openapi.json`` and
    interactive docs at ``/docs``. Hardening (docs/security-web.md): request bodies authenticated
    before they are read and bounded (:mod:`covidet.api.limits`), sign-in throttling
    (:mod:`covidet.api.ratelimit`), HSTS over HTTPS, full ``Allow`` lists on 405.

    The secret key is resolved here, at start (in development it is
    created under ``settings.home`` on first use).
    """
    settings = settings or get_settings()
    secret_key = settings.resolved_secret_key()
    owned: list[object] = []
    if db is None:
        db = ingest.db if ingest is not None else Database.from_settings(settings)
        if ingest is None:
            owned.append(db)
    if ingest is None:
        analysis_queue = InProcessQueue()
        owned.append(analysis_queue)
        ingest = ImageIngest(
            db,
            ImageStore(settings.image_store_dir),
            analysis_queue,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_decode_bytes=settings.max_decode_bytes,
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for resource in owned:  # only what create_app made itself
            if isinstance(resource, InProcessQueue):
                resource.close()
            elif isinstance(resource, Database):
                resource.dispose()

    app = FastAPI(
        title="covidet",
        version=__version__,
        description=f"Early assessment of Covid-19 from chest X-rays: devices and clinicians ({DISCLAIMER}).",
        openapi_url="/openapi.json",
        docs_url=None,  # served from this server by mount_docs, not from a CDN (covidet.api.docs_ui)
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.ingest = ingest
    app.state.secret_key = secret_key
    app.state.login_throttle = LoginThrottle.from_settings(settings)
    # Outermost last: HSTS and the API's headers also go on the guard's own 401/413 answers.
    app.add_middleware(
        BodyGuard,
        db=db,
        max_body_bytes=settings.max_body_bytes,
        # The upload route refuses (and records) a body past its own limit first; this is the backstop,
        # set a margin higher so that one network read never crosses both limits at once.
        max_upload_bytes=ingest.max_bytes + uploads.FORM_OVERHEAD_BYTES + UPLOAD_MARGIN_BYTES,
    )
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(StrictTransportSecurity, max_age=settings.hsts_seconds)
    install_allow_header(app)
    install_unavailable_handlers(app)  # database busy or down: 503 with Retry-After, not 500

    @app.exception_handler(rq.QueryError)
    async def query_error(request: Request, exc: rq.QueryError) -> JSONResponse:
        code = next((c for t, c in _QUERY_ERROR_STATUS.items() if isinstance(exc, t)), 422)
        return JSONResponse(status_code=code, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One line in "detail", like every other refusal, plus FastAPI's item list in "errors".
        errors = jsonable_encoder(exc.errors(), custom_encoder={BaseException: str})
        for item in errors:
            item.pop("input", None)  # may echo a password back
            item.pop("ctx", None)
        lines = [
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', 'invalid')}"
            for item in errors
        ]
        return JSONResponse(
            status_code=422, content={"detail": "; ".join(lines) or "invalid request", "errors": errors}
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Caller mistakes are HTTPExceptions with their own status; this is only for our bugs and
        # outages, answered in the API's JSON shape (the traceback goes to the log, not the client).
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    for module in (
        health,
        auth,
        worklist,
        studies,
        uploads,  # POST /images, before the reads of images as when they were one router
        images,
        vitals,
        reviews,
        alerts,
        events,  # GET /events: server-sent events of the live worklist (not in the OpenAPI document)
        exports,
        devices,
        users,
        audit,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(dicomweb_router)  # /dicom-web: WADO-RS, QIDO-RS, STOW-RS (docs/dicomweb.md)
    mount_docs(app)  # /docs: Swagger UI from this server, with a Content-Security-Policy
    return app
