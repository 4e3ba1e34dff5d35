"""The DICOM C-STORE / C-ECHO receiver (SCP) that modalities and PACS send chest X-rays to.

Contract, in the order a peer meets it:

0. **Connection.** Optionally TLS, with client certificates (:mod:`.dicom_tls`); the handshake and
   the association request must come within ``acse_timeout`` seconds, so silent connections (port
   scans, health checks) are dropped quickly and never hold an association place.
1. **Association.** The called AE title must be the receiver's own (``Settings.ae_title``), and the
   calling AE title must belong to an *active* device of kind *modality* (or *workstation*: it only
   queries and retrieves, :mod:`.qr`) in the database, calling from an address tied to it if any,
   within the association limit (:mod:`.dicom_association`,
   :mod:`.dicom_checks`). The device list is read for every association request, so a device
   registered (or deactivated) while the receiver runs takes effect at its next association.
   Anything else gets an A-ASSOCIATE-RJ, a one-line WARNING (AE title, peer address, reason) and a
   ``rejected_messages`` row. A database that cannot be read, or the limit reached, gives
   rejected-transient, so the modality retries later.
2. **Presentation contexts.** Verification, and the chest radiograph storage SOP classes of
   :data:`~covidet.ingest.service.ACCEPTED_SOP_CLASSES` (CR, DX for presentation and for processing,
   Secondary Capture) in every transfer syntax of :data:`ACCEPTED_TRANSFER_SYNTAXES` (those pydicom
   can decode here). Other SOP classes are refused at negotiation: they never reach the handler.
3. **C-STORE.** :func:`handle_store` hands the object, exactly as received (file meta + data set),
   to :meth:`ImageIngest.accept <covidet.ingest.service.ImageIngest.accept>`, which validates it
   (:func:`covidet.imaging.validate.validate_image`: header, chest-radiograph rules, complete
   frame, one decode), writes the file with ``fsync``, commits the database row and enqueues the
   analysis job. Only then is *Success* returned, so an acknowledged image survives a crash and can
   be analysed. A SOP Instance UID already stored for the same patient and study is acknowledged
   with *Success* and not stored again; for another patient or study it is refused
   (:attr:`StoreStatus.CONFLICT`). A refusal returns one of the :class:`StoreStatus` failure codes
   with the reason in the response's Error Comment, is logged and kept in ``rejected_messages``;
   the association stays up and the server keeps serving.

The handlers are small module-level functions bound with their collaborators as extra arguments
(pynetdicom's ``evt_handlers=[(event, handler, [args])]``); they run on the association's thread,
so they do bounded work: one decode of the frame to validate it; analysis belongs to the worker.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time

from pynetdicom import AE, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from covidet.config import Settings
from covidet.ingest.dicom_association import PeerRegistry, handle_association_request
from covidet.ingest.dicom_checks import AssociationPolicy, parse_peer_networks
from covidet.ingest.dicom_handlers import StoreStatus, handle_echo, handle_store, set_tcp_nodelay
from covidet.ingest.dicom_syntaxes import ACCEPTED_TRANSFER_SYNTAXES, VERIFICATION_SYNTAXES
from covidet.ingest.dicom_tls import AssociationServer, server_ssl_context
from covidet.ingest.qr import QueryRetrieve, qr_handlers, workstation_contexts
from covidet.ingest.service import ACCEPTED_SOP_CLASSES, ImageIngest
from covidet.store.db import Database

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "DEFAULT_MAX_PDU",
    "DEFAULT_PORT",
    "DicomReceiver",
    "StoreStatus",
    "handle_association_request",
    "handle_echo",
    "handle_store",
    "set_tcp_nodelay",
]

logger = logging.getLogger(__name__)

#: The receiver's TCP port unless told otherwise (the IANA-registered alternative DICOM port).
DEFAULT_PORT = 11112

#: Largest P-DATA PDU the receiver accepts, bytes. pynetdicom's default (16 KiB) makes a 1 MB radiograph
#: ~64 PDUs, each decoded in Python; 1 MiB lets senders use their largest PDUs (dcmtk sends up to
#: 128 KiB), which is much cheaper per image.
DEFAULT_MAX_PDU = 1024 * 1024


class DicomReceiver:
    """A running C-STORE/C-ECHO SCP on ``host:port`` that feeds ``ingest``.

    ``port=0`` picks a free port (read :attr:`port` after :meth:`start`). The server runs on
    pynetdicom's threads (one per association); :meth:`start` returns at once. Usable as a context
    manager. See the module docstring for what peers may send and what they get back.
    """

    def __init__(
        self,
        db: Database,
        ingest: ImageIngest,
        *,
        ae_title: str = "COVIDET",
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_pdu: int = DEFAULT_MAX_PDU,
        policy: AssociationPolicy | None = None,
        max_associations: int | None = None,
        acse_timeout: float = 5.0,
        network_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        query_retrieve: QueryRetrieve | None = None,
    ) -> None:
        """``policy``: association limit and AE title -> address ties (:mod:`.dicom_checks`);
        ``acse_timeout``: seconds a new connection (or its TLS handshake) may take to send its
        association request; ``network_timeout``: seconds an association may stay silent;
        ``ssl_context``: serve DICOM over TLS (:func:`.dicom_tls.server_ssl_context`);
        ``query_retrieve``: the Q/R SCP's bounds and C-MOVE destinations (:mod:`.qr`; default: none)."""
        ae_title = ae_title.strip()
        if not ae_title or len(ae_title) > 16 or not ae_title.isascii() or "\\" in ae_title:
            raise ValueError(f"AE title {ae_title!r} must be 1-16 ASCII characters without backslash")
        self.db = db
        self.ingest = ingest
        self.ae_title = ae_title
        self.host = host
        self.port = port
        if max_associations is not None:  # the earlier signature's keyword: a policy with that limit
            policy = AssociationPolicy(max_associations, (policy or AssociationPolicy()).peer_networks)
        self.policy = policy or AssociationPolicy()
        self.ssl_context = ssl_context
        self._peers = PeerRegistry()
        self._server: AssociationServer | None = None
        self.qr = query_retrieve or QueryRetrieve(db, ingest.store, ae_title=ae_title)
        self.qr.on_connect = set_tcp_nodelay
        # Device kind -> its associations' contexts: modalities store (the AE's), workstations query.
        self._kinds = {"modality": None, "workstation": workstation_contexts()}

        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = max_pdu
        # The limit is the policy's, counted over accepted associations only (handle_association_
        # request); pynetdicom's own count includes silent connections, so it is set out of reach.
        ae.maximum_associations = 1_000_000
        ae.acse_timeout = acse_timeout
        ae.network_timeout = network_timeout
        ae.require_called_aet = True  # also enforced (and recorded) by handle_association_request
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, list(VERIFICATION_SYNTAXES))
        self._ae = ae

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        db: Database,
        ingest: ImageIngest,
        *,
        host: str,
        port: int,
        ae_title: str | None = None,
    ) -> DicomReceiver:
        """A receiver configured by :class:`~covidet.config.Settings` (``ae_title``, ``dicom_*``).

        Raises:
            ValueError: inconsistent settings (TLS key without certificate, a bad address).
        """
        if (settings.dicom_tls_cert is None) != (settings.dicom_tls_key is None):
            raise ValueError("dicom_tls_cert and dicom_tls_key go together")
        if settings.dicom_tls_ca is not None and settings.dicom_tls_cert is None:
            raise ValueError("dicom_tls_ca (client certificates) needs dicom_tls_cert and dicom_tls_key")
        context = None
        if settings.dicom_tls_cert is not None:
            context = server_ssl_context(
                settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca
            )
        policy = AssociationPolicy(
            max_associations=settings.dicom_max_associations,
            peer_networks=parse_peer_networks(settings.dicom_peer_addresses),
        )
        return cls(
            db,
            ingest,
            ae_title=ae_title or settings.ae_title,
            host=host,
            port=port,
            policy=policy,
            acse_timeout=settings.dicom_acse_timeout,
            network_timeout=settings.dicom_network_timeout,
            ssl_context=context,
            query_retrieve=QueryRetrieve.from_settings(
                settings, db, ingest.store, ae_title=ae_title or settings.ae_title
            ),
        )

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen on ``host:port`` (non-blocking). Raises ``OSError`` if the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("receiver already started")
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (
                evt.EVT_REQUESTED,
                handle_association_request,
                [self.db, self.ingest, self.ae_title, self._peers, self.policy, self._kinds],
            ),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.ingest, self._peers]),
            *qr_handlers(self.qr, self._peers),
        ]
        server = self._ae.make_server(
            (self.host, self.port),
            ssl_context=self.ssl_context,
            evt_handlers=handlers,
            server_class=AssociationServer,
        )
        assert isinstance(server, AssociationServer)
        server.handshake_timeout = float(self._ae.acse_timeout or 5.0)
        server.on_refused = lambda peer, reason: self.ingest.reject("dicom", peer, reason, None)
        self._ae._servers.append(server)  # as AE.start_server does: shutdown() removes it
        threading.Thread(target=server.serve_forever, name=f"dicom-scp:{self.port}", daemon=True).start()
        self._server = server
        self.port = int(server.server_address[1])
        logger.info(
            "DICOM receiver %s listening on %s:%d%s (%d storage SOP classes x %d transfer syntaxes, "
            "at most %d associations)",
            self.ae_title,
            self.host,
            self.port,
            " over TLS" if self.ssl_context else "",
            len(ACCEPTED_SOP_CLASSES),
            len(ACCEPTED_TRANSFER_SYNTAXES),
            self.policy.max_associations,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting associations, let C-STOREs in progress finish for up to ``timeout``
        seconds, then end every association left at once: idle and silent ones are not waited for.
        An aborted C-STORE was never acknowledged, so the sender still has it."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # closes the listening socket; live associations keep their threads
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(a in self._peers.busy for a in server.active_associations):
            time.sleep(0.02)
        left = server.active_associations
        for assoc in left:
            busy = assoc in self._peers.busy
            logger.log(
                logging.WARNING if busy else logging.INFO,
                "ending %s association from %s at shutdown",
                "a busy" if busy else "an idle",
                assoc.requestor.ae_title or assoc.requestor.address,
            )
            # Never Association.kill() here: it waits for the peer to close the connection, which a
            # dead or silent peer never does. A-ABORT is queued, then the socket is shut down.
            if assoc.is_established:
                assoc.abort(block=False)
            else:
                assoc.dul.kill_dul()
        if left:
            time.sleep(0.1)  # lets the DUL threads put the queued A-ABORTs on the wire
        for assoc in left:
            sock = getattr(assoc.dul.socket, "socket", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        logger.info("DICOM receiver %s stopped", self.ae_title)

    def __enter__(self) -> DicomReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
