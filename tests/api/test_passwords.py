"""The password policy (covidet.api.passwords, ASVS 2.1.1 / 2.1.2 / 2.1.7) wherever a password is set:
``POST /users``, ``PATCH /users/{id}`` and ``covidet users add``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidet.api.passwords import MAX_LENGTH, WeakPassword, check_password, common_passwords
from tests.api.conftest import ApiEnv

#: Each refused, with the words of its reason.
WEAK = {
    "password": "at least 12",
    "aaaaaaaa": "at least 12",
    "aaaaaaaaaaaa": "choose another",
    "Password2024!": "common passwords",
    "password1234": "common passwords",
    "passwordpassword": "common passwords",
    "qwerty123456": "common passwords",
    "123456789012": "keyboard sequence",
    "x" * (MAX_LENGTH + 1): f"at most {MAX_LENGTH}",
}
STRONG = ("gentle otter reads maps", "radiologist-pw-1", "Vq7#mZ2!pL9@wR4")


def test_the_bundled_list_is_there_and_lowercased() -> None:
    common = common_passwords()
    assert len(common) > 19_000
    assert {"password", "123456", "qwerty", "iloveyou"} <= common
    assert all(entry == entry.lower() for entry in common)


@pytest.mark.parametrize("password", sorted(WEAK))
def test_weak_passwords_are_refused(password: str) -> None:
    with pytest.raises(WeakPassword, match=WEAK[password]):
        check_password(password)


@pytest.mark.parametrize("password", STRONG)
def test_strong_passwords_pass(password: str) -> None:
    check_password(password)


def test_the_api_refuses_weak_passwords_for_new_users_and_changes(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        admin = sqlite_env.token(client, "admin")
        for password, reason in WEAK.items():
            answer = client.post(
                "/api/v1/users",
                json={"username": "eve", "password": password, "role": "admin"},
                headers=admin,
            )
            assert answer.status_code == 422, (password, answer.text)
            assert reason in answer.json()["detail"]
            assert password == "password" or password not in answer.text  # never echoed back
            change = client.patch(
                f"/api/v1/users/{sqlite_env.users['rad']}", json={"password": password}, headers=admin
            )
            assert change.status_code == 422, (password, change.text)
        assert client.get("/api/v1/users", headers=admin).json()["total"] == 3  # nobody was created
        created = client.post(
            "/api/v1/users", json={"username": "eve", "password": STRONG[0], "role": "admin"}, headers=admin
        )
        assert created.status_code == 201, created.text
        assert (
            client.post("/api/v1/auth/token", data={"username": "eve", "password": STRONG[0]}).status_code
            == 200
        )
        spec = client.get("/openapi.json").json()["components"]["schemas"]["UserCreate"]["properties"][
            "password"
        ]
        assert (spec["minLength"], spec["maxLength"]) == (12, MAX_LENGTH)


def test_the_cli_refuses_weak_passwords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from covidet.cli import app as cli_app

    monkeypatch.setenv("COVIDET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COVIDET_DATABASE_URL", raising=False)
    runner = CliRunner()
    for password in ("aaaaaaaa", "aaaaaaaaaaaa", "Password2024!"):
        refused = runner.invoke(cli_app, ["users", "add", "root", "--role", "admin"], input=f"{password}\n")
        assert refused.exit_code == 2, refused.output
        assert "password" in refused.output and password not in refused.output
    added = runner.invoke(cli_app, ["users", "add", "root", "--role", "admin"], input=f"{STRONG[0]}\n")
    assert added.exit_code == 0, added.output
