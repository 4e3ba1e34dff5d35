"""The radiologists' web pages (sign-in, image viewer with review, model card, audit log) and their
route table.

Pages are rendered on the server with Jinja2 (:mod:`covidet.web.rendering`); a little plain
JavaScript (``static/``) adds the live worklist, the image canvas and the review actions, which call
the JSON API with the session's CSRF token. The pages are plain Starlette routes, not API
operations: they answer HTML, redirect to the sign-in form instead of answering 401
(:mod:`covidet.web.access`), and stay out of the OpenAPI document.

Data comes from the same query functions as the API (:mod:`covidet.store.review_queries`), and every
page that shows patient data writes the same audit events as the API (``read.worklist``,
``read.image``, ``read.audit``) with ``"via": "web"`` in their details.

One module per screen: :mod:`~covidet.web.login_page` (``/``, ``/login``, ``/logout``),
:mod:`~covidet.web.image_page` (``/images/{id}``), :mod:`~covidet.web.model_page` (``/model``,
``/model/plots/{name}``), :mod:`~covidet.web.audit_page` (``/admin/audit``); the worklist is
:mod:`covidet.web.worklist_page`, the diagnostic viewer :mod:`covidet.web.viewer_page`. The names
this module exported before the split are re-exported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from covidet.web.audit_page import audit_page
from covidet.web.image_page import viewer_page
from covidet.web.login_page import LOGIN_CSRF_COOKIE, home, login_form, login_submit, logout
from covidet.web.model_page import model_card_path, model_page, model_plot, model_plots_dir
from covidet.web.rendering import PAGE_HEADERS, STATIC_DIR, TEMPLATES_DIR, templates

__all__ = [
    "LOGIN_CSRF_COOKIE",
    "PAGE_HEADERS",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "model_card_path",
    "model_plots_dir",
    "page_routes",
    "templates",
]

Endpoint = Callable[[Request], Awaitable[Response]]


def page_routes() -> list[Route]:
    """The web app's routes (HTML; not part of the OpenAPI document)."""
    table: tuple[tuple[str, Endpoint, list[str], str], ...] = (
        ("/", home, ["GET"], "web_home"),
        ("/login", login_form, ["GET"], "web_login"),
        ("/login", login_submit, ["POST"], "web_login_submit"),
        ("/logout", logout, ["POST"], "web_logout"),
        ("/images/{image_id:int}", viewer_page, ["GET"], "web_viewer"),
        ("/model", model_page, ["GET"], "web_model"),
        ("/model/plots/{name}", model_plot, ["GET"], "web_model_plot"),
        ("/admin/audit", audit_page, ["GET"], "web_audit"),
    )
    return [
        Route(path, endpoint, methods=methods, name=name, include_in_schema=False)
        for path, endpoint, methods, name in table
    ]
