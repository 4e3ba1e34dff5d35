"""The whole HTTP server: covidet's JSON API and DICOMweb, with the radiologists' web pages on top.

:func:`create_app` is what ``covidet serve`` runs and what a deployment under its own ASGI server
should run::

    uvicorn --factory covidet.app.server:create_app --host 0.0.0.0 --port 8443 \\
        --ssl-certfile cert.pem --ssl-keyfile key.pem

It is :func:`covidet.api.app.create_app` (the API alone: ``/api/v1``, ``/dicom-web``, ``/docs``) plus
:func:`covidet.web.mount_web` (``/``, ``/login``, ``/worklist``, the viewers, ``/static``). The two
are put together here, in the wiring layer, because the web pages use the API (its dependencies,
auth and presenters) and the API must not import the web pages (docs/architecture.md).
"""

from __future__ import annotations

from fastapi import FastAPI

from covidet.api.app import create_app as create_api_app
from covidet.config import Settings
from covidet.ingest.service import ImageIngest
from covidet.store.db import Database
from covidet.web import mount_web

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    ingest: ImageIngest | None = None,
) -> FastAPI:
    """The API app of :func:`covidet.api.app.create_app` (same arguments, same ownership rules) with
    the web pages, their static files and the worklist's event stream mounted on it."""
    app = create_api_app(settings, db=db, ingest=ingest)
    mount_web(app)
    return app
