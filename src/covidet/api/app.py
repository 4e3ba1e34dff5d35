"""The FastAPI application factory.

``create_app`` builds the app around shared objects: the settings, the database and the image
ingest service. Anything not given is made from the settings, and then also closed by the app when
it shuts down; objects handed in belong to the caller (the ``serve`` command, the tests).

Serve it with uvicorn, over TLS in any real deployment::

    uvicorn --factory covidet.api.app:create_app --host 0.0.0.0 --port 8443 \\
        --ssl-certfile cert.pem --ssl-keyfile key.pem
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from covidet import DISCLAIMER, __version__
from covidet.api.routes import health, images
from covidet.config import Settings, get_settings
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store.db import Database
from covidet.worker.queue import InProcessQueue

__all__ = ["API_PREFIX", "create_app"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


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

    Routes: ``POST /api/v1/images`` (device upload), ``GET /api/v1/health``; OpenAPI at
    ``/api/v1/openapi.json`` and interactive docs at ``/api/v1/docs``.
    """
    settings = settings or get_settings()
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
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.ingest = ingest

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Caller mistakes are HTTPExceptions with their own status; this is only for our bugs and
        # outages, answered in the API's JSON shape (the traceback goes to the log, not the client).
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    app.include_router(health.router, prefix=API_PREFIX)
    app.include_router(images.router, prefix=API_PREFIX)
    return app
