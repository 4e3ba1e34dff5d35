"""``/docs``: the interactive API documentation (Swagger UI), served from this server alone.

FastAPI's default page loads Swagger UI's script and style from a CDN, without Subresource Integrity
and without a Content-Security-Policy: whoever controls that CDN, or the path to it, runs script in
the page of a signed-in user. Here the Swagger UI files come from the ``fastapi-offline`` package
(``/docs/assets/...``), the page's start-up code is a file too (``swagger-init.js``, no inline script),
and the page and its files carry a strict Content-Security-Policy: scripts, styles and connections to
this origin only (styles also inline: Swagger UI sets ``style`` attributes), images also ``data:``,
never framed.
"""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DOCS_ASSETS", "DOCS_CSP", "DOCS_URL", "mount_docs"]

DOCS_URL = "/docs"
DOCS_ASSETS = "/docs/assets"
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", DOCS_CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def _swagger_dir() -> Path:
    import fastapi_offline  # ships Swagger UI's swagger-ui-bundle.js and swagger-ui.css

    return Path(fastapi_offline.__file__).parent / "static"


class _WithHeaders:
    """Adds the docs' CSP and no-sniff headers to the answers of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(root: str, openapi_url: str, title: str) -> str:
    assets = html.escape(root + DOCS_ASSETS)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)} - API docs</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js" data-openapi-url="{html.escape(root + openapi_url)}"></script>
</body>
</html>
"""


def mount_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and its files on ``app`` (made with ``docs_url=None``)."""
    openapi_url = app.openapi_url or "/openapi.json"

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        headers = {k.decode(): v.decode() for k, v in _HEADERS} | {"Cache-Control": "no-cache"}
        return HTMLResponse(_page(root, openapi_url, app.title), headers=headers)

    init_script = Path(str(files("covidet.api").joinpath("static/swagger-init.js")))

    async def init(request: Request) -> FileResponse:
        headers = {k.decode(): v.decode() for k, v in _HEADERS} | {"Cache-Control": "no-cache"}
        return FileResponse(init_script, media_type="text/javascript", headers=headers)

    # Plain Starlette routes, as FastAPI's own docs route was: pages, not API operations.
    app.add_route(DOCS_URL, docs, methods=["GET"], include_in_schema=False)
    # Before the mount below, which would otherwise answer this path (404: not one of its files).
    app.add_route(f"{DOCS_ASSETS}/swagger-init.js", init, methods=["GET"], include_in_schema=False)
    app.mount(DOCS_ASSETS, _WithHeaders(StaticFiles(directory=_swagger_dir())), name="docs-assets")
