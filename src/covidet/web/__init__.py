"""The radiologists' web app: server-rendered pages (Jinja2), plain JavaScript and CSS served from
this package (no build step, nothing from other sites), and the server-sent-events stream of the live
worklist.

:func:`mount_web` adds it all to the API app made by :func:`covidet.api.app.create_app` (the
wiring, :mod:`covidet.app.server`, calls it):

* ``/`` (redirect), ``/login``, ``/logout``, ``/images/{id}`` (viewer and review), ``/model``,
  ``/model/plots/{name}``, ``/admin/audit``: HTML pages, one module per screen, routed by
  :mod:`covidet.web.pages` (rendering and access checks: :mod:`covidet.web.rendering`,
  :mod:`covidet.web.access`);
* ``/worklist``, ``/worklist/live`` and the worklist's forms (claim, release, next case):
  :mod:`covidet.web.worklist_page`;
* ``/static/...``: the pages' scripts and styles;
* the worklist listens to ``GET /api/v1/events``, which is the API's (:mod:`covidet.api.routes.events`).

See docs/web.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

# Nothing from covidet.api is imported at module level: the pages are imported by mount_web.
__all__ = ["close_event_streams", "mount_web"]


class _StaticHeaders:
    """Adds ``nosniff`` and a revalidating cache policy to the static files (scripts change with the
    version, and a stale script against a newer API is worse than one more request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in (b"cache-control",)
                ]
                headers += [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-cache")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def close_event_streams(app: FastAPI) -> None:
    """End the app's open event streams (see :func:`covidet.api.routes.events.close_event_streams`)."""
    from covidet.api.routes.events import close_event_streams as close

    close(app)


def mount_web(app: FastAPI) -> None:
    """Add the web pages and their static files to ``app`` (a FastAPI app of
    :func:`covidet.api.app.create_app`: its ``state`` holds the settings and the database)."""
    from covidet.web import pages, rendering, worklist_page

    for route in pages.page_routes() + worklist_page.worklist_routes():
        app.router.routes.append(route)
    from covidet.web import viewer_page  # the diagnostic viewer (docs/web.md)

    app.router.routes.extend(viewer_page.routes())
    app.mount("/static", _StaticHeaders(StaticFiles(directory=rendering.STATIC_DIR)), name="static")
