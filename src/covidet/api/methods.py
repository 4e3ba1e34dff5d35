"""``405 Method Not Allowed`` answers list every method of the path in ``Allow`` (RFC 9110 15.5.6).

Starlette answers 405 from the first route whose path matches and names only that route's methods,
but covidet declares, e.g., ``GET /users`` and ``POST /users`` as two routes: ``PUT /users`` was told
``Allow: GET``. Here the 405 is answered with the union of the methods of all routes whose path
matches, in the API's ``{"detail"}`` shape.
"""

from __future__ import annotations

import re
from functools import lru_cache

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

__all__ = ["install_allow_header"]


def _route_table(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path regex, methods) of every route of ``app`` that has methods."""
    try:  # FastAPI >= 0.13x keeps included routers as nodes of app.routes
        from fastapi.routing import iter_route_contexts

        contexts = [(c.path, c.methods) for c in iter_route_contexts(app.routes)]
    except ImportError:  # older FastAPI: the routes are flat
        contexts = [(getattr(r, "path", ""), getattr(r, "methods", None)) for r in app.routes]
    table = []
    for path, methods in contexts:
        if path and methods:
            regex, _format, _convertors = compile_path(path)
            table.append((regex, frozenset(methods)))
    return table


def install_allow_header(app: FastAPI) -> None:
    """Answer every 405 of ``app`` with the path's full ``Allow`` list (other HTTP errors unchanged)."""

    @lru_cache(maxsize=1)
    def table() -> list[tuple[re.Pattern[str], frozenset[str]]]:
        return _route_table(app)  # built on the first 405, once every route is in place

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        path = request.scope.get("path", "")
        methods = {m for regex, ms in table() if regex.match(path) for m in ms}
        if not methods:  # not a route of ours (a mount decided): keep what it said
            return await http_exception_handler(request, exc)
        return JSONResponse(
            {"detail": f"{request.method} is not allowed here: use {', '.join(sorted(methods))}"},
            status_code=405,
            headers={"Allow": ", ".join(sorted(methods))},
        )
