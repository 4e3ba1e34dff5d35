"""HTTPS and the interactive docs: HSTS on answers over TLS (and only there); ``/docs`` loads Swagger UI
from this server alone under a Content-Security-Policy; full ``Allow`` lists on 405."""

from __future__ import annotations

import contextlib
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from tests.api.conftest import ApiEnv, serve
from tests.servers import free_port


@contextlib.contextmanager
def serve_tls(app: FastAPI, certfile: Path, keyfile: Path) -> Iterator[str]:
    """``app`` on uvicorn with ``--ssl-certfile`` / ``--ssl-keyfile``, as in production: the base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ssl_certfile=certfile, ssl_keyfile=keyfile
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-tls-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn (TLS) did not start"
        time.sleep(0.01)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def test_hsts_is_sent_over_tls_only(sqlite_env: ApiEnv, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    verify = ssl.create_default_context(cafile=str(cert))  # the client checks the server's certificate
    with (
        serve_tls(sqlite_env.app, cert, key) as base_url,
        httpx.Client(base_url=base_url, verify=verify) as client,
    ):
        for path in ("/api/v1/health", "/login", "/docs", "/openapi.json"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["strict-transport-security"] == "max-age=31536000", path
        refused = client.get("/api/v1/worklist")  # errors carry it too
        assert refused.status_code == 401 and "strict-transport-security" in refused.headers
    with serve(sqlite_env.app) as base_url:  # plain HTTP: a browser must not be told (RFC 6797 8.1)
        assert "strict-transport-security" not in httpx.get(f"{base_url}/api/v1/health").headers


def test_docs_load_only_same_origin_assets_under_a_csp(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "<script>" not in page.text  # no inline script: the CSP allows none
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(urls) >= 3
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url  # this origin, nothing else
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["x-content-type-options"] == "nosniff"
            assert "content-security-policy" in asset.headers
        bundle = client.get("/docs/assets/swagger-ui-bundle.js")
        assert "SwaggerUIBundle" in bundle.text and len(bundle.content) > 500_000
        init = client.get("/docs/assets/swagger-init.js")
        assert "javascript" in init.headers["content-type"] and "/openapi.json" in page.text
        # The web app's pages keep their own policy and work as before.
        login = client.get("/login")
        assert login.status_code == 200 and "script-src 'self'" in login.headers["content-security-policy"]
        assert client.get("/openapi.json").status_code == 200


def test_405_lists_every_method_of_the_path(sqlite_env: ApiEnv) -> None:
    with sqlite_env.client() as client:
        admin = sqlite_env.token(client, "admin")
        for path, methods in (
            ("/api/v1/users", {"GET", "POST"}),
            ("/api/v1/reviews", {"GET", "POST"}),
            ("/api/v1/auth/tokens", {"GET", "POST"}),
            ("/api/v1/reviews/1", {"GET", "PATCH"}),
            ("/api/v1/devices", {"GET", "POST"}),
        ):
            for method in ("PUT", "OPTIONS"):
                answer = client.request(method, path, headers=admin)
                assert answer.status_code == 405, (method, path)
                assert {m.strip() for m in answer.headers["allow"].split(",")} == methods, (method, path)
                assert isinstance(answer.json()["detail"], str)
