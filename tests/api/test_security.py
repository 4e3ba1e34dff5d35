"""Access control of every route: authentication, roles, CSRF, device keys, ownership, id bounds.

The route lists are read from the app itself (``app.routes``), so a route added later without
authentication fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from covidet.store import queries
from tests.api.conftest import PASSWORDS, ApiEnv, dataset_jpegs, seed_image

#: The only routes reachable without a user's credential (the upload takes a device key instead).
PUBLIC = {("POST", "/api/v1/auth/token"), ("POST", "/api/v1/auth/login"), ("GET", "/api/v1/health")}
#: Routes that take a device key: the upload, and STOW-RS (which also takes an admin's bearer token but
#: never a session cookie, so it has no CSRF gate: docs/dicomweb.md).
DEVICE_ONLY = {
    ("POST", "/api/v1/images"),
    ("POST", "/dicom-web/studies"),
    ("POST", "/dicom-web/studies/{study}"),
}
ADMIN_TAGS = {"devices", "users", "audit"}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def api_routes(app: FastAPI) -> list[tuple[str, set[str], APIRoute]]:
    """(full path, methods, route) of every APIRoute of ``app``, included routers flattened."""
    try:  # FastAPI >= 0.13x keeps included routers as nodes of app.routes
        from fastapi.routing import iter_route_contexts

        contexts: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:
        contexts = list(app.routes)
    result = []
    for context in contexts:
        route = getattr(context, "original_route", context)
        if isinstance(route, APIRoute):
            result.append((context.path, set(context.methods), route))
    return result


def operations(env: ApiEnv) -> list[tuple[str, str, Any]]:
    """(method, concrete path, route) of every API operation; path parameters set to 1. ``route.path``
    is compared as the full template through the returned path's template twin."""
    result = []
    for template, methods, route in api_routes(env.app):
        path = re.sub(r"\{[^}]+\}", "1", template)
        result.extend((method, path, _Named(route, template)) for method in sorted(methods))
    assert len(result) >= 30
    return result


class _Named:
    """An APIRoute seen with its full path (the route object itself keeps the router-relative one)."""

    def __init__(self, route: APIRoute, path: str) -> None:
        self.route, self.path, self.tags = route, path, list(route.tags)


def test_every_route_needs_credentials(sqlite_env: ApiEnv) -> None:
    """No credential: 401 with a WWW-Authenticate challenge, everywhere but login, token and health."""
    seen = set()
    with sqlite_env.client() as client:
        for method, path, route in operations(sqlite_env):
            seen.add((method, route.path))
            if (method, route.path) in PUBLIC:
                continue
            answer = client.request(method, path)
            assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
            assert "www-authenticate" in answer.headers
            assert isinstance(answer.json()["detail"], str)
        assert client.get("/api/v1/health").status_code == 200
    assert seen >= PUBLIC


def test_a_device_key_cannot_read_patient_data(sqlite_env: ApiEnv, data_root: Path) -> None:
    with sqlite_env.db.session(write=True) as session:
        uploader = queries.create_device(session, "ward-phone", "uploader")
    seed_image(sqlite_env, dataset_jpegs(data_root, 1)[0].read_bytes(), patient_key="P-1")
    key = {"X-API-Key": uploader.api_key}
    with sqlite_env.client() as client:
        for method, path, route in operations(sqlite_env):
            if (method, route.path) in PUBLIC | DEVICE_ONLY:
                continue
            answer = client.request(method, path, headers=key)
            assert answer.status_code == 401, (method, path, answer.text)
            assert "device API key" in answer.json()["detail"]
        # Nor can a device key pass as a bearer token.
        assert (
            client.get(
                "/api/v1/worklist", headers={"Authorization": f"Bearer {uploader.api_key}"}
            ).status_code
            == 401
        )


def test_radiologists_cannot_reach_admin_routes(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        radiologist = sqlite_env.token(client, "rad")
        admin = sqlite_env.token(client, "admin")
        admin_routes = [
            (method, path) for method, path, route in operations(sqlite_env) if ADMIN_TAGS & set(route.tags)
        ]
        assert len(admin_routes) == 6
        for method, path in admin_routes:
            body = {} if method in UNSAFE else None
            answer = client.request(method, path, headers=radiologist, json=body)
            assert answer.status_code == 403, (method, path, answer.text)
            assert "admin" in answer.json()["detail"]
        # The admin passes the same gate (and then meets validation or a result).
        assert client.get("/api/v1/users", headers=admin).status_code == 200
        assert client.get("/api/v1/audit", headers=admin).status_code == 200
        assert client.get("/api/v1/devices", headers=admin).status_code == 200
        # Radiologists do reach clinical routes.
        assert client.get("/api/v1/worklist", headers=radiologist).status_code == 200


def test_cookie_requests_need_the_csrf_token_on_every_unsafe_route(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        login = client.post("/api/v1/auth/login", data={"username": "admin", "password": PASSWORDS["admin"]})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf_token"]
        unsafe = [
            (method, path)
            for method, path, route in operations(sqlite_env)
            if method in UNSAFE and (method, route.path) not in PUBLIC | DEVICE_ONLY
        ]
        assert len(unsafe) >= 10
        for method, path in unsafe:
            answer = client.request(method, path, json={})
            assert answer.status_code == 403, (method, path, answer.text)
            assert "CSRF" in answer.json()["detail"]
            wrong = client.request(method, path, json={}, headers={"X-CSRF-Token": csrf[:-2] + "xx"})
            assert wrong.status_code == 403, (method, path)
        # Safe methods need no token; with the token an unsafe request passes the gate.
        assert client.get("/api/v1/auth/me").json()["authenticated_by"] == "session"
        created = client.post(
            "/api/v1/users",
            json={"username": "carol", "password": "carol-password", "role": "radiologist"},
            headers={"X-CSRF-Token": csrf},
        )
        assert created.status_code == 201, created.text
        # A form post may carry the token as a field (HTML forms of the web app).
        form_logout = client.post("/api/v1/auth/logout", data={"csrf_token": csrf})
        assert form_logout.status_code == 204
        assert client.get("/api/v1/auth/me").status_code == 401


def test_bearer_requests_are_csrf_immune(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        admin = sqlite_env.token(client, "admin")
        created = client.post(
            "/api/v1/users",
            json={"username": "dave", "password": "dave-password", "role": "admin"},
            headers=admin,
        )
        assert created.status_code == 201, created.text


def test_objects_of_other_users_and_bad_ids(sqlite_env: ApiEnv, data_root: Path) -> None:
    seeded = seed_image(
        sqlite_env,
        dataset_jpegs(data_root, 1)[0].read_bytes(),
        patient_key="P-9",
        findings=[("covid19", 0.9, (10, 10, 50, 50))],
    )
    with sqlite_env.client() as client:
        rad, rad2 = sqlite_env.token(client, "rad"), sqlite_env.token(client, "rad2")
        draft = client.post(
            "/api/v1/reviews", json={"image_id": seeded.image_id, "label": "normal"}, headers=rad
        )
        assert draft.status_code == 201, draft.text
        review_id = draft.json()["id"]
        # Another radiologist may read it but neither change nor sign it.
        assert client.get(f"/api/v1/reviews/{review_id}", headers=rad2).status_code == 200
        assert (
            client.patch(f"/api/v1/reviews/{review_id}", json={"comment": "x"}, headers=rad2).status_code
            == 403
        )
        assert client.post(f"/api/v1/reviews/{review_id}/sign", headers=rad2).status_code == 403
        # Another user's token is "not found", so token ids reveal nothing.
        tokens = client.get("/api/v1/auth/tokens", headers=rad).json()
        assert client.delete(f"/api/v1/auth/tokens/{tokens[0]['id']}", headers=rad2).status_code == 404
        # Ids are positive 32-bit integers: anything else is a 422, never a database error.
        for bad in ("0", "-1", "2147483648", "99999999999999999999", "abc", "1.5"):
            answer = client.get(f"/api/v1/images/{bad}", headers=rad)
            assert answer.status_code == 422, (bad, answer.text)
            assert isinstance(answer.json()["detail"], str) and answer.json()["errors"]
        assert client.get("/api/v1/images/2147483647", headers=rad).status_code == 404
        for query in ("limit=0", "limit=201", "offset=-1", "priority=soon", "patient=%00x", "reviewed=maybe"):
            assert client.get(f"/api/v1/worklist?{query}", headers=rad).status_code == 422, query
        nul = client.post("/api/v1/auth/token", data={"username": "ad\x00min", "password": "whatever-123"})
        assert nul.status_code == 401


def test_the_api_never_imports_torch() -> None:
    code = (
        "import sys; from covidet.api import create_app; import covidet.api.routes.images, "
        "covidet.api.routes.exports; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_session_cookie_attributes(sqlite_env: ApiEnv, scheme: str) -> None:
    # Behind a TLS-terminating proxy uvicorn (--proxy-headers) takes the scheme from X-Forwarded-Proto.
    with sqlite_env.client(headers={"X-Forwarded-Proto": scheme}) as client:
        login = client.post("/api/v1/auth/login", data={"username": "rad", "password": PASSWORDS["rad"]})
        assert login.status_code == 200
        cookie = login.headers["set-cookie"].lower()
        assert cookie.startswith("covidet_session=")
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert ("secure" in cookie) == (scheme == "https")
        assert login.headers["cache-control"] == "no-store"
