"""``Strict-Transport-Security`` on every answer sent over HTTPS (RFC 6797, OWASP ASVS 9.1.1).

The server speaks HTTPS when uvicorn runs with ``--ssl-certfile`` (the ASGI scope's scheme is
``https``), or behind a TLS-terminating proxy whose ``X-Forwarded-Proto`` uvicorn trusts
(``--proxy-headers --forwarded-allow-ips``). The header is never sent over plain HTTP, where a browser
would ignore it anyway (RFC 6797 section 8.1). ``settings.hsts_seconds`` sets ``max-age``; 0 turns
it off. ``includeSubDomains`` is not sent: the server cannot know what else runs under its domain.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["StrictTransportSecurity"]


class StrictTransportSecurity:
    """Pure ASGI middleware adding ``Strict-Transport-Security: max-age=<max_age>`` to HTTPS answers."""

    def __init__(self, app: ASGIApp, *, max_age: int) -> None:
        self.app = app
        self.header = (b"strict-transport-security", f"max-age={max_age}".encode())
        self.enabled = max_age > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)
