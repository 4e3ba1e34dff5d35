"""DICOM over TLS for the receiver, and the server that accepts its connections safely.

**TLS** (PS3.15 Annex B, the "BCP 195" profile in spirit): :func:`server_ssl_context` builds a server
context from a certificate and key (PEM); with a CA file, every client must present a certificate
that CA signed (mutual TLS), so only devices holding a key issued to them can even open an
association. TLS 1.2 is the minimum (dcmtk 3.6.7's ``+tls`` negotiates 1.2 or 1.3).

**Handshake off the accept loop.** pynetdicom wraps each accepted socket with
``SSLContext.wrap_socket`` inside its accept loop, which performs the handshake there, without a
timeout: a single client that connects and sends nothing would stop the receiver accepting anyone.
:class:`AssociationServer` wraps without the handshake and performs it on the connection's own
thread, under ``handshake_timeout``; a failed or timed-out handshake is reported to ``on_refused``
(peer address, reason) and the connection closed.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["AssociationServer", "server_ssl_context"]

logger = logging.getLogger(__name__)


def server_ssl_context(certfile: Path, keyfile: Path, cafile: Path | None = None) -> ssl.SSLContext:
    """A TLS server context; with ``cafile``, client certificates signed by it are *required*.

    Raises:
        ValueError: a file is missing or unreadable, or the key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(certfile), keyfile=str(keyfile))
        if cafile is not None:
            context.load_verify_locations(cafile=str(cafile))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"DICOM TLS: cannot load {certfile}, {keyfile} or {cafile}: {exc}") from exc
    return context


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake moved to the connection's thread.

    ``on_refused(address, reason)`` is called for a connection dropped before any association
    (failed TLS handshake). Set :attr:`handshake_timeout` and :attr:`on_refused` after creation.
    """

    handshake_timeout: float = 10.0
    on_refused: Callable[[str, str], None] | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        if isinstance(request, ssl.SSLSocket):
            peer = f"{client_address[0]}:{client_address[1]}"
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(None)  # pynetdicom sets its network timeout on the socket
            except (OSError, ValueError) as exc:  # ssl.SSLError and socket.timeout are OSErrors
                reason = f"TLS handshake failed: {exc.__class__.__name__}: {exc}"
                if self.on_refused is not None:
                    self.on_refused(peer, reason)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)
