"""Accounts: password hashing, bearer tokens (issue, use, revoke, expire), browser sessions (login,
CSRF, logout), deactivation, the secret-key rule of the settings, and the ``users`` commands."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from typer.testing import CliRunner

from covidet.api import auth
from covidet.api.auth import hashing
from covidet.config import Settings
from covidet.store.models import ApiToken, AuditEvent, utcnow
from tests.api.conftest import PASSWORDS, ApiEnv


def test_passwords_are_argon2id_hashes() -> None:
    hashed = auth.hash_password("correct horse")
    assert hashed.startswith("$argon2id$") and "correct" not in hashed
    assert auth.verify_password(hashed, "correct horse")
    assert not auth.verify_password(hashed, "correct horsf")
    assert not auth.verify_password("not a hash", "correct horse")
    with pytest.raises(ValueError, match="at least 8"):
        auth.hash_password("short")


def test_token_flow_on_both_backends(api_env: ApiEnv) -> None:
    with api_env.client() as client:
        issued = client.post("/api/v1/auth/token", data={"username": "rad", "password": PASSWORDS["rad"]})
        assert issued.status_code == 200, issued.text
        body = issued.json()
        assert body["token_type"] == "bearer" and body["access_token"].startswith("cvt_")
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        me = client.get("/api/v1/auth/me", headers=bearer).json()
        assert me == {
            "id": api_env.users["rad"],
            "username": "rad",
            "role": "radiologist",
            "authenticated_by": "token",
            "csrf_token": None,
        }
        # Usernames are case-insensitive at login.
        assert (
            client.post(
                "/api/v1/auth/token", data={"username": "RAD", "password": PASSWORDS["rad"]}
            ).status_code
            == 200
        )

        # A named token for a script, listed without its secret, then revoked.
        named = client.post("/api/v1/auth/tokens", json={"name": "nightly export", "days": 1}, headers=bearer)
        assert named.status_code == 201, named.text
        script = {"Authorization": f"Bearer {named.json()['access_token']}"}
        assert client.get("/api/v1/auth/me", headers=script).status_code == 200
        listed = client.get("/api/v1/auth/tokens", headers=bearer).json()
        assert {t["name"] for t in listed} >= {"nightly export", "password grant"}
        assert all("access_token" not in t for t in listed)
        revoked = client.delete(f"/api/v1/auth/tokens/{named.json()['id']}", headers=bearer)
        assert revoked.status_code == 204
        refused = client.get("/api/v1/auth/me", headers=script)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")

        # An expired token fails; so does logout's revocation of the token that made the request.
        with api_env.db.session(write=True) as session:
            row = session.scalar(select(ApiToken).where(ApiToken.name == "password grant").limit(1))
            row.expires_at = utcnow() - timedelta(seconds=1)
            expired_id = row.id
        with api_env.db.session() as session:
            expired_hash = session.get(ApiToken, expired_id).token_sha256
        assert expired_hash != body["access_token"]  # only the hash is stored
        fresh = api_env.token(client, "rad")
        assert client.post("/api/v1/auth/logout", headers=fresh).status_code == 204
        assert client.get("/api/v1/auth/me", headers=fresh).status_code == 401
        assert client.get("/api/v1/auth/me", headers={"Authorization": "Bearer"}).status_code == 401
        assert (
            client.get("/api/v1/auth/me", headers={"Authorization": "Bearer cvt_forged"}).status_code == 401
        )

    with api_env.db.session() as session:
        actions = [e.action for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions.count("auth.token") >= 3 and "token.create" in actions and "token.revoke" in actions


def test_expired_tokens_fail(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        bearer = sqlite_env.token(client, "rad")
        assert client.get("/api/v1/auth/me", headers=bearer).status_code == 200
        with sqlite_env.db.session(write=True) as session:
            for row in session.scalars(select(ApiToken)):
                row.expires_at = utcnow() - timedelta(seconds=1)
        answer = client.get("/api/v1/auth/me", headers=bearer)
        assert answer.status_code == 401 and "expired" in answer.json()["detail"]


def test_wrong_password_and_unknown_user_are_indistinguishable(sqlite_env: ApiEnv, monkeypatch) -> None:
    calls: list[str] = []
    real_verify = auth.verify_password

    def counting_verify(password_hash: str, password: str) -> bool:
        calls.append(password_hash[:9])
        return real_verify(password_hash, password)

    monkeypatch.setattr(hashing, "verify_password", counting_verify)  # what authenticate calls
    with sqlite_env.client() as client:
        answers = []
        for username, password in (("rad", "wrong-password"), ("nobody", "wrong-password"), ("x" * 200, "p")):
            for path in ("/api/v1/auth/token", "/api/v1/auth/login"):
                calls.clear()
                answer = client.post(path, data={"username": username, "password": password})
                # Same argon2 work whether or not the user exists: one verification each.
                assert calls == ["$argon2id"], (username, calls)
                answers.append((answer.status_code, answer.json(), answer.headers.get("www-authenticate")))
                assert "set-cookie" not in answer.headers
        assert len(set(map(repr, answers))) == 1
        assert answers[0][:2] == (401, {"detail": "incorrect username or password"})
        # A deactivated user is refused the same way, even with the right password.
        admin = sqlite_env.token(client, "admin")
        assert (
            client.patch(
                f"/api/v1/users/{sqlite_env.users['rad']}", json={"active": False}, headers=admin
            ).status_code
            == 200
        )
        inactive = client.post("/api/v1/auth/token", data={"username": "rad", "password": PASSWORDS["rad"]})
        assert (inactive.status_code, inactive.json()) == answers[0][:2]
    with sqlite_env.db.session() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.login_failed")).all()
    assert len(failed) == 7
    assert {e.actor_username for e in failed} == {"rad", "nobody", None}  # 200 x's is no username


def test_browser_session_login_csrf_logout(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        login = client.post("/api/v1/auth/login", data={"username": "rad", "password": PASSWORDS["rad"]})
        assert login.status_code == 200, login.text
        body = login.json()
        csrf = body["csrf_token"]
        assert body["user"]["username"] == "rad" and body["user"]["authenticated_by"] == "session"
        me = client.get("/api/v1/auth/me").json()
        assert me["authenticated_by"] == "session" and me["csrf_token"] == csrf
        # Unsafe without the token: refused; with it: done.
        assert client.post("/api/v1/auth/tokens", json={"name": "from the browser"}).status_code == 403
        made = client.post(
            "/api/v1/auth/tokens", json={"name": "from the browser"}, headers={"X-CSRF-Token": csrf}
        )
        assert made.status_code == 201
        # Logout ends the session server-side: the old cookie is useless even if replayed.
        cookie = client.cookies.get("covidet_session")
        out = client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204 and 'covidet_session=""' in out.headers["set-cookie"]
        replay = client.get("/api/v1/auth/me", headers={"Cookie": f"covidet_session={cookie}"})
        assert replay.status_code == 401 and "session" in replay.json()["detail"]


def test_deactivation_ends_sessions_and_tokens_and_keeps_an_admin(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        admin = sqlite_env.token(client, "admin")
        rad_token = sqlite_env.token(client, "rad")
        login = client.post("/api/v1/auth/login", data={"username": "rad", "password": PASSWORDS["rad"]})
        assert client.get("/api/v1/auth/me").status_code == 200
        rad_id = sqlite_env.users["rad"]
        changed = client.patch(f"/api/v1/users/{rad_id}", json={"active": False}, headers=admin)
        assert changed.status_code == 200 and changed.json()["active"] is False
        assert client.get("/api/v1/auth/me").status_code == 401
        assert client.get("/api/v1/auth/me", headers=rad_token).status_code == 401
        # Reactivated: old credentials stay dead (tokens were revoked, sessions deleted).
        client.patch(f"/api/v1/users/{rad_id}", json={"active": True}, headers=admin)
        assert client.get("/api/v1/auth/me", headers=rad_token).status_code == 401
        assert login.status_code == 200
        # The last active admin cannot be deactivated or demoted.
        admin_id = sqlite_env.users["admin"]
        for change in ({"active": False}, {"role": "radiologist"}):
            refused = client.patch(f"/api/v1/users/{admin_id}", json=change, headers=admin)
            assert refused.status_code == 409 and "last active admin" in refused.json()["detail"]
        # Users: duplicate names (any case), short passwords and bad names are refused.
        good = "gentle-otter-lamp"
        taken = client.post(
            "/api/v1/users", json={"username": "RAD", "password": good, "role": "admin"}, headers=admin
        )
        assert taken.status_code == 409
        short = client.post(
            "/api/v1/users", json={"username": "eve", "password": "x" * 7, "role": "admin"}, headers=admin
        )
        assert short.status_code == 422
        bad = client.post(
            "/api/v1/users", json={"username": "e ve", "password": good, "role": "admin"}, headers=admin
        )
        assert bad.status_code == 422
        # A new password works at once, and ends the old credentials.
        new = client.patch(f"/api/v1/users/{rad_id}", json={"password": "a-new-password"}, headers=admin)
        assert new.status_code == 200
        assert (
            client.post(
                "/api/v1/auth/token", data={"username": "rad", "password": "a-new-password"}
            ).status_code
            == 200
        )


def test_settings_refuse_placeholder_secrets_in_production(tmp_path: Path) -> None:
    for secret in (None, "", "changeme", "CHANGE-ME", "short-but-random-1234"):
        with pytest.raises(ValidationError, match="secret_key"):
            Settings(home=tmp_path, environment="production", secret_key=secret)
    good = "k" * 40
    assert Settings(home=tmp_path, environment="production", secret_key=good).resolved_secret_key() == good
    # Development: generated once, kept with mode 0600, the same on the next start.
    dev = Settings(home=tmp_path / "dev")
    first = dev.resolved_secret_key()
    path = tmp_path / "dev" / "secret_key"
    assert len(first) >= 40 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Settings(home=tmp_path / "dev").resolved_secret_key() == first


def test_users_and_api_token_commands(tmp_path: Path, monkeypatch) -> None:
    from covidet.cli import app as cli_app
    from covidet.store import review_queries as rq
    from covidet.store.db import Database

    monkeypatch.setenv("COVIDET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COVIDET_DATABASE_URL", raising=False)
    runner = CliRunner()
    added = runner.invoke(cli_app, ["users", "add", "alice", "--role", "admin"], input="alice-password\n")
    assert added.exit_code == 0, added.output
    assert '"username": "alice"' in added.stdout and "alice-password" not in added.output
    short = runner.invoke(cli_app, ["users", "add", "bob", "--role", "radiologist"], input="short\n")
    assert short.exit_code == 2 and "at least 12" in short.output
    again = runner.invoke(cli_app, ["users", "add", "ALICE", "--role", "admin"], input="alice-password\n")
    assert again.exit_code == 2 and "taken" in again.output
    role = runner.invoke(cli_app, ["users", "add", "carl", "--role", "device"], input="carl-password\n")
    assert role.exit_code == 2
    listed = runner.invoke(cli_app, ["users", "list"])
    assert listed.exit_code == 0 and '"alice"' in listed.stdout and "argon2" not in listed.stdout
    token = runner.invoke(cli_app, ["api-token", "create", "alice", "--name", "ci", "--days", "2"])
    assert token.exit_code == 0 and '"access_token": "cvt_' in token.stdout
    missing = runner.invoke(cli_app, ["api-token", "create", "nobody"])
    assert missing.exit_code == 2
    db = Database(f"sqlite:///{tmp_path / 'home' / 'covidet.db'}")
    with db.session() as session:
        user = rq.user_by_username(session, "alice")
        assert user is not None and user.role == "admin"
        assert auth.verify_password(user.password_hash, "alice-password")
    db.dispose()


def test_auth_keeps_its_public_names_after_the_split() -> None:
    """Issue 20 made ``covidet.api.auth`` a package; every name it had is still there, the same
    objects as in the modules that now hold them."""
    from covidet.api.auth import audit, credentials, current_user

    assert all(hasattr(auth, name) for name in auth.__all__)
    assert auth.hash_password is hashing.hash_password and auth.authenticate is hashing.authenticate
    assert auth.issue_token is credentials.issue_token and auth.IssuedSession is credentials.IssuedSession
    assert auth.get_current_user is current_user.get_current_user
    assert auth.RadiologistUser is current_user.RadiologistUser
    assert auth.audit_in is audit.audit_in and auth.record_audit is audit.record_audit
