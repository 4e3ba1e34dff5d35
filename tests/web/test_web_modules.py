"""The web package after its split into one module per screen (issue 20): the old import path
``covidet.web.pages`` keeps its names and routes, and the worklist's filters read and write the same
query strings. No server: these pin the public surface, the browser and API tests the behaviour."""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.routing import Route

from covidet.web import pages, rendering, worklist_page
from covidet.web.worklist_filters import PAGE_SIZE, StudyFilters


def test_pages_keeps_its_old_names_and_routes() -> None:
    assert sorted(pages.__all__) == [
        "LOGIN_CSRF_COOKIE",
        "PAGE_HEADERS",
        "STATIC_DIR",
        "TEMPLATES_DIR",
        "model_card_path",
        "model_plots_dir",
        "page_routes",
        "templates",
    ]
    for name in pages.__all__:
        assert getattr(pages, name) is not None
    assert pages.templates is rendering.templates and pages.STATIC_DIR.is_dir()
    assert pages.LOGIN_CSRF_COOKIE == "covidet_login_csrf"
    routes = pages.page_routes()
    assert all(isinstance(route, Route) and not route.include_in_schema for route in routes)
    assert [(r.path, sorted(r.methods or ()), r.name) for r in routes] == [
        ("/", ["GET", "HEAD"], "web_home"),
        ("/login", ["GET", "HEAD"], "web_login"),
        ("/login", ["POST"], "web_login_submit"),
        ("/logout", ["POST"], "web_logout"),
        ("/images/{image_id:int}", ["GET", "HEAD"], "web_viewer"),
        ("/model", ["GET", "HEAD"], "web_model"),
        ("/model/plots/{name}", ["GET", "HEAD"], "web_model_plot"),
        ("/admin/audit", ["GET", "HEAD"], "web_audit"),
    ]
    assert worklist_page.StudyFilters is StudyFilters  # the old import path of the filters


def test_worklist_filters_round_trip_and_ignore_unknown_values() -> None:
    query = (
        "priority=urgent&priority=bogus&status=failed&reviewed=no&patient=P-1&q=acc"
        "&sort=waiting&order=desc&offset=100"
    )
    filters = StudyFilters.from_query(QueryParams(query))
    assert filters == StudyFilters(
        priority=("urgent",),
        status=("failed",),
        reviewed=False,
        patient="P-1",
        q="acc",
        sort="waiting",
        order="desc",
        offset=100,
    )
    assert filters.active and filters.limit == PAGE_SIZE
    assert StudyFilters.from_query(QueryParams(filters.query())) == filters
    # Paging and sorting links change one thing; sorting goes back to the first page.
    assert StudyFilters.from_query(QueryParams(filters.query(offset=150))).offset == 150
    resorted = StudyFilters.from_query(QueryParams(filters.sort_link("waiting")))
    assert (resorted.sort, resorted.order, resorted.offset) == ("waiting", "asc", 0)
    assert filters.aria_sort("waiting") == "descending" and filters.aria_sort("patient") == "none"
    # Unknown sort, bad offset, control characters: ignored, never an error.
    odd = StudyFilters.from_query(QueryParams("sort=nope&offset=abc&q=%00x&reviewed=maybe&offset=-3"))
    assert odd == StudyFilters() and not odd.active and odd.query() == ""
    assert StudyFilters.from_query(QueryParams("offset=99999999")).offset == 1_000_000
