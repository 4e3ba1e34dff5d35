"""Request bodies are authenticated before they are read, and bounded (covidet.api.limits).

The server runs with ``max_body_bytes`` lowered to 64 KiB, so that a few megabytes are "too large";
bodies are real streams (a generator: chunked transfer encoding, no Content-Length) or raw sockets
that declare a length and then send nothing, which only an answer given before the body is read can
answer at all.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from covidet.store import queries
from tests.api.conftest import ApiEnv, dataset_jpegs, make_env, serve

LIMIT = 64 * 1024
PROTECTED = ("/api/v1/reviews", "/api/v1/users", "/api/v1/auth/tokens")


@pytest.fixture
def small_env(tmp_path: Path) -> Iterator[ApiEnv]:
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}", max_body_bytes=LIMIT)
    yield env
    env.ingest.queue.close()  # type: ignore[attr-defined]
    env.db.dispose()


def chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    """``total`` bytes of a JSON-looking body, streamed (httpx sends it chunked)."""
    yield b'{"comment": "'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


def raw_exchange(base_url: str, head: str, body: bytes = b"", timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send ``head`` (and ``body``) on a fresh socket and read one answer: (status, headers, body).

    Raises:
        TimeoutError: no complete answer within ``timeout`` (the server is waiting for the body).
    """
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        header_block, _, rest = data.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            part = sock.recv(65536)
            if not part:
                break
            rest += part
        return status, headers, rest


def test_anonymous_bodies_are_refused_before_they_are_read(small_env: ApiEnv) -> None:
    with serve(small_env.app) as base_url:
        host = urlsplit(base_url).netloc
        for path in PROTECTED:
            # 300 MB declared, not one byte sent: only an answer that does not wait for the body comes.
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Content-Length: 300000000\r\n\r\n"
            )
            status, headers, body = raw_exchange(base_url, head)
            assert status == 401, (path, status, body)
            assert "www-authenticate" in headers
            assert "not authenticated" in json.loads(body)["detail"]
            # Chunked, no length at all, one chunk sent and the body never ended.
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            )
            status, _, _ = raw_exchange(base_url, head, b'4\r\n{"a"\r\n')
            assert status == 401, path
        # A real stream of a few MB, anonymous or with a forged token: 401, not 422.
        with httpx.Client(base_url=base_url, timeout=60) as client:
            for path in PROTECTED:
                answer = client.post(path, content=chunks(4 * 1024 * 1024))
                assert answer.status_code == 401, (path, answer.text)
                forged = client.post(
                    path, content=chunks(1024 * 1024), headers={"Authorization": "Bearer cvt_forged"}
                )
                assert forged.status_code == 401 and "invalid" in forged.json()["detail"]


def test_bodies_over_the_limit_get_413(small_env: ApiEnv) -> None:
    with serve(small_env.app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        admin = small_env.token(client, "admin")
        host = urlsplit(base_url).netloc
        # Streamed (chunked, no Content-Length): cut off once past the limit.
        streamed = client.post("/api/v1/reviews", content=chunks(4 * 1024 * 1024), headers=admin)
        assert streamed.status_code == 413, streamed.text
        assert f"limit of {LIMIT} bytes" in streamed.json()["detail"]
        assert "COVIDET_MAX_BODY_BYTES" in streamed.json()["detail"]
        # Declared above the limit: refused before one byte is sent.
        head = (
            f"POST /api/v1/users HTTP/1.1\r\nHost: {host}\r\nAuthorization: {admin['Authorization']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 300000000\r\n\r\n"
        )
        status, headers, body = raw_exchange(base_url, head)
        assert status == 413 and "300000000 bytes" in json.loads(body)["detail"]
        assert headers.get("connection") == "close"
        # The password forms need no credential but have the same limit.
        form = client.post(
            "/api/v1/auth/token",
            content=(b"username=admin&password=" + b"x" * (2 * LIMIT)),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 413
        # The web app's sign-in form too. Which refusal comes first depends on how the chunks arrive:
        # the byte count past the limit (413), or the form parser's own 4 KiB part limit (400) when
        # uvicorn hands the body over in pieces under the limit; either way it is refused unread.
        urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}
        assert client.post("/login", content=chunks(2 * LIMIT), headers=urlencoded).status_code in (400, 413)
        # Under the limit, the same routes work as before.
        created = client.post(
            "/api/v1/users",
            json={"username": "zoe", "password": "zoe-strong-passphrase", "role": "radiologist"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        assert client.get("/api/v1/users", headers=admin).json()["total"] == 4


def test_a_content_length_lie_reads_only_what_was_declared(small_env: ApiEnv) -> None:
    """A body longer than its Content-Length is not read past the declared length: the rest is not
    this request's body (the server answers the declared bytes, and nothing is created)."""
    with serve(small_env.app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        admin = small_env.token(client, "admin")
        host = urlsplit(base_url).netloc
        payload = json.dumps({"username": "liar", "password": "liar-strong-passphrase", "role": "admin"})
        head = (
            f"POST /api/v1/users HTTP/1.1\r\nHost: {host}\r\nAuthorization: {admin['Authorization']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
        )
        status, _, body = raw_exchange(base_url, head, payload.encode() + b" " * (3 * 1024 * 1024))
        assert status in (400, 422), (status, body)  # 10 bytes of JSON: not a valid body
        assert client.get("/api/v1/users", headers=admin).json()["total"] == 3
        assert client.get("/api/v1/health").status_code == 200


def test_image_uploads_keep_their_own_larger_limit(small_env: ApiEnv, data_root: Path) -> None:
    jpeg = dataset_jpegs(data_root, 1)[0].read_bytes()
    assert len(jpeg) > LIMIT  # larger than any JSON body may be
    with small_env.db.session(write=True) as session:
        key = queries.create_device(session, "ward-phone", "uploader").api_key
    with serve(small_env.app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        answer = client.post(
            "/api/v1/images",
            files={"file": ("x.jpg", jpeg, "image/jpeg")},
            data={"patient_id": "P-1"},
            headers={"X-API-Key": key},
        )
        assert answer.status_code == 201, answer.text
