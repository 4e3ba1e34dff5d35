"""The sign-in examples of docs/api.md work as written: each shell block is read from the document and
run with bash and the real curl against a running server (only the example host is replaced)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.api.conftest import ApiEnv, add_user

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
EXAMPLE_HOST = "https://covidet.example:8443"
PASSWORD = "a long pass phrase with spaces & symbols!"


def doc_block(heading: str) -> list[str]:
    """The commands of the first ```bash block after ``heading``: comments dropped, continuation
    lines joined, placeholder assignments (``TOKEN=cvt_…``) left out (the test sets those)."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, heading
    commands, current = [], ""
    for line in block.group(1).splitlines():
        if not current and (line.lstrip().startswith("#") or re.match(r"^[A-Z_]+=\S*…", line)):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def run(command: str, base_url: str, cwd: Path, **variables: str) -> str:
    done = subprocess.run(
        ["bash", "-c", command.replace(EXAMPLE_HOST, base_url)],
        cwd=cwd,
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.fixture
def alice(sqlite_env: ApiEnv) -> ApiEnv:
    add_user(sqlite_env.db, "alice", "radiologist", PASSWORD)
    return sqlite_env


def test_the_bearer_token_example(alice: ApiEnv, tmp_path: Path) -> None:
    commands = doc_block("### Bearer tokens")
    assert len(commands) == 2 and "auth/token" in commands[0] and "worklist" in commands[1]
    with alice.client() as client:
        base_url = str(client.base_url).rstrip("/")
        issued = json.loads(run(commands[0], base_url, tmp_path, PASSWORD=PASSWORD))
        assert issued["token_type"] == "bearer" and issued["access_token"].startswith("cvt_"), issued
        worklist = json.loads(run(commands[1], base_url, tmp_path, TOKEN=issued["access_token"]))
        assert "items" in worklist, worklist


def test_the_session_cookie_example(alice: ApiEnv, tmp_path: Path) -> None:
    commands = doc_block("### Session cookies")
    assert len(commands) == 3 and "auth/login" in commands[0] and "logout" in commands[2]
    with alice.client() as client:
        base_url = str(client.base_url).rstrip("/")
        login = json.loads(run(commands[0], base_url, tmp_path, PASSWORD=PASSWORD))
        assert login["user"]["username"] == "alice" and login["csrf_token"], login
        assert "items" in json.loads(run(commands[1], base_url, tmp_path))  # the cookie jar signs in
        assert run(commands[2], base_url, tmp_path, CSRF=login["csrf_token"]) == ""  # 204
        after = json.loads(run(commands[1], base_url, tmp_path))
        assert "session expired or ended" in after["detail"]
