"""Sign-in throttling (covidet.api.ratelimit, ASVS 2.2.1): after N failures a username, or a client
address, is refused with 429 and Retry-After, even with the right password, until the window passes.

The window is a few seconds here (a setting), so waiting it out stays short.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from covidet.store.models import AuditEvent
from tests.api.conftest import PASSWORDS, ApiEnv, make_env, serve

FAILURES = 3
WINDOW = 4
PATHS = ("/api/v1/auth/token", "/api/v1/auth/login")


def _env(tmp_path: Path, **overrides: object) -> ApiEnv:
    return make_env(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}", **overrides)


@pytest.fixture
def throttled_env(tmp_path: Path) -> Iterator[ApiEnv]:
    env = _env(
        tmp_path, login_max_failures=FAILURES, login_max_failures_per_address=100, login_window_seconds=WINDOW
    )
    yield env
    env.ingest.queue.close()  # type: ignore[attr-defined]
    env.db.dispose()


def _audit_count(env: ApiEnv, action: str) -> int:
    with env.db.session() as session:
        return session.scalar(select(func.count()).where(AuditEvent.action == action))


def test_a_username_is_locked_after_n_failures(throttled_env: ApiEnv) -> None:
    env = throttled_env
    with serve(env.app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        for attempt in range(FAILURES):
            path = PATHS[attempt % 2]  # both password routes share the count
            wrong = client.post(path, data={"username": "rad", "password": f"wrong-password-{attempt}"})
            assert wrong.status_code == 401, (attempt, wrong.text)
        locked = client.post(PATHS[0], data={"username": "rad", "password": "wrong-password-x"})
        assert locked.status_code == 429, locked.text
        assert "too many failed sign-ins" in locked.json()["detail"]
        retry_after = int(locked.headers["retry-after"])
        assert 1 <= retry_after <= WINDOW
        # The right password is refused too while locked, on every sign-in route, any case of the name.
        for path in PATHS:
            right = client.post(path, data={"username": "RAD", "password": PASSWORDS["rad"]})
            assert right.status_code == 429, (path, right.text)
        web = client.get("/login")
        csrf = web.cookies["covidet_login_csrf"]
        page = client.post(
            "/login", data={"username": "rad", "password": PASSWORDS["rad"], "csrf_token": csrf}
        )
        assert page.status_code == 429 and "Too many failed sign-ins" in page.text
        assert "retry-after" in page.headers
        # Other accounts are not affected.
        other = client.post(PATHS[0], data={"username": "rad2", "password": PASSWORDS["rad2"]})
        assert other.status_code == 200, other.text
        # Failures and refusals are audited.
        assert _audit_count(env, "auth.login_failed") == FAILURES
        assert _audit_count(env, "auth.login_throttled") == 4
        # Once the window has passed, the right password is accepted again.
        time.sleep(
            int(client.post(PATHS[0], data={"username": "rad", "password": "x"}).headers["retry-after"])
        )
        deadline = time.monotonic() + WINDOW + 2
        while (
            answer := client.post(PATHS[0], data={"username": "rad", "password": PASSWORDS["rad"]})
        ).status_code == 429:
            assert time.monotonic() < deadline, "still locked after the window"
            time.sleep(0.2)
        assert answer.status_code == 200, answer.text


def test_a_client_address_is_locked_after_n_failures_over_any_usernames(tmp_path: Path) -> None:
    env = _env(tmp_path, login_max_failures=100, login_max_failures_per_address=4, login_window_seconds=60)
    try:
        with serve(env.app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
            for name in ("alice", "bob", "carol", "dave"):  # one password sprayed over many names
                assert (
                    client.post(PATHS[0], data={"username": name, "password": "Summer2026!"}).status_code
                    == 401
                )
            refused = client.post(PATHS[1], data={"username": "admin", "password": PASSWORDS["admin"]})
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["retry-after"]) <= 60
    finally:
        env.ingest.queue.close()  # type: ignore[attr-defined]
        env.db.dispose()


def test_a_success_forgives_the_username_failures(throttled_env: ApiEnv) -> None:
    with serve(throttled_env.app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        for _ in range(3):  # never FAILURES in a row: a typo now and then locks nobody out
            for _ in range(FAILURES - 1):
                assert (
                    client.post(PATHS[0], data={"username": "rad", "password": "typo-typo-typo"}).status_code
                    == 401
                )
            assert (
                client.post(PATHS[0], data={"username": "rad", "password": PASSWORDS["rad"]}).status_code
                == 200
            )
