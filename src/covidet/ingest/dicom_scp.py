"""The DICOM C-STORE / C-ECHO receiver (SCP) that modalities and PACS send chest X-rays to.

Contract, in the order a peer meets it:

1. **Association.** The called AE title must be the receiver's own (``Settings.ae_title``), and the
   calling AE title must belong to an *active* device of kind *modality* in the database. The
   device list is read for every association request, so a device registered (or deactivated)
   while the receiver runs takes effect at its next association, without a restart. Anything else
   gets an A-ASSOCIATE-RJ (rejected-permanent, "calling/called AE title not recognised"), a log
   line and a ``rejected_messages`` row. A database that cannot be read gives rejected-transient,
   so the modality retries later.
2. **Presentation contexts.** Verification, and the chest radiograph storage SOP classes of
   :data:`~covidet.ingest.service.ACCEPTED_SOP_CLASSES` (CR, DX for presentation and for processing,
   Secondary Capture) in every transfer syntax of :data:`ACCEPTED_TRANSFER_SYNTAXES` (those pydicom
   can decode here). Other SOP classes are refused at negotiation: they never reach the handler.
3. **C-STORE.** :func:`handle_store` hands the object, exactly as received (file meta + data set),
   to :meth:`ImageIngest.accept <covidet.ingest.service.ImageIngest.accept>`, which checks the
   header (no pixel decoding), writes the file with ``fsync``, commits the database row and
   enqueues the analysis job. Only then is *Success* returned, so an acknowledged image survives a
   crash. A SOP Instance UID already stored is acknowledged with *Success* and not stored again. A
   refusal returns one of the :class:`StoreStatus` failure codes with the reason in the response's
   Error Comment, is logged and kept in ``rejected_messages``; the association stays up and the
   server keeps serving.

The handlers are small module-level functions bound with their collaborators as extra arguments
(pynetdicom's ``evt_handlers=[(event, handler, [args])]``); they run on the association's thread,
so they do only bounded header work: pixel decoding and analysis belong to the analysis worker.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from covidet.ingest.service import ACCEPTED_SOP_CLASSES, ImageIngest, IngestRejected
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import DeviceKind

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


def _decodable(candidates: tuple[UID, ...]) -> tuple[UID, ...]:
    """The candidates for which a pydicom pixel decoder (plugin) is installed and usable."""
    from pydicom.pixels import get_decoder

    usable = []
    for uid in candidates:
        if not uid.is_encapsulated:  # native pixel data: pydicom reads it itself
            usable.append(uid)
            continue
        try:
            if get_decoder(uid).is_available:
                usable.append(uid)
        except NotImplementedError:
            continue
    return tuple(usable)


#: Transfer syntaxes accepted for the storage SOP classes, in the receiver's order of preference.
#: Only those pydicom can decode with the installed plugins (pylibjpeg-libjpeg, -openjpeg, -rle)
#: are offered, so everything acknowledged can later be analysed.
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = _decodable(
    (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLossless,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        HTJ2K,
        RLELossless,
        ExplicitVRBigEndian,  # retired, still sent by some old modalities; pydicom reads it
    )
)

#: Verification is offered in the uncompressed syntaxes only (there is no data set to compress).
_VERIFICATION_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): result, source, diagnostic.
_REJECTED_PERMANENT, _REJECTED_TRANSIENT = 0x01, 0x02
_SOURCE_SERVICE_USER = 0x01
_DIAG_NO_REASON, _DIAG_CALLING_AE, _DIAG_CALLED_AE = 0x01, 0x03, 0x07

#: The Error Comment of a DIMSE response is a LO element: at most 64 characters.
_ERROR_COMMENT_LIMIT = 64


class StoreStatus(IntEnum):
    """C-STORE response statuses the receiver returns (PS3.4 Table B.2-1 ranges)."""

    #: Stored durably and recorded (or already stored: a re-send of the same SOP Instance UID).
    SUCCESS = 0x0000
    #: Refused: out of resources - the object exceeds ``max_image_bytes`` or ``max_image_pixels``.
    OUT_OF_RESOURCES = 0xA700
    #: Refused: out of resources - the file or its database row could not be written (disk full,
    #: database down). Nothing was acknowledged; the sender may retry.
    STORAGE_FAILURE = 0xA701
    #: Error: the data set does not match the SOP class - no pixel data, missing UIDs, a SOP class
    #: or instance other than the one the request names, or not a chest radiograph class.
    DATASET_MISMATCH = 0xA900
    #: Error: cannot understand - truncated or corrupt data set or pixel data, multi-frame images.
    CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True, slots=True)
class _Peer:
    """Who is on the other end of an accepted association."""

    device_id: int
    ae_title: str
    address: str


class _PeerRegistry:
    """The device behind each live association, filled at association time and read per C-STORE
    (so the database is asked once per association, not once per image). Entries vanish with their
    association object (weak keys)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: weakref.WeakKeyDictionary[Any, _Peer] = weakref.WeakKeyDictionary()

    def add(self, assoc: Any, peer: _Peer) -> None:
        with self._lock:
            self._peers[assoc] = peer

    def get(self, assoc: Any) -> _Peer | None:
        with self._lock:
            return self._peers.get(assoc)


def _status(code: StoreStatus, comment: str | None = None) -> Dataset | StoreStatus:
    """A response status; failures carry ``comment`` (cut to 64 characters) as Error Comment."""
    if not comment:
        return code
    status = Dataset()
    status.Status = int(code)
    status.ErrorComment = comment[:_ERROR_COMMENT_LIMIT]
    return status


def _status_for_rejection(exc: IngestRejected) -> StoreStatus:
    """Map an :class:`IngestRejected` to the most precise C-STORE status.

    ``too_large`` is explicit; the other classes are recognised from the reason wording of
    ``ImageIngest.accept`` / ``inspect_image`` (anything unrecognised is "cannot understand").
    """
    if exc.too_large:
        return StoreStatus.OUT_OF_RESOURCES
    reason = exc.reason.lower()
    if any(marker in reason for marker in ("no pixel data", "sop class", "lacks sopinstanceuid")):
        return StoreStatus.DATASET_MISMATCH
    return StoreStatus.CANNOT_UNDERSTAND


def _peer_address(event: Event) -> str:
    info = event.assoc.requestor.address_info
    return f"{info.address}:{info.port}"


def set_tcp_nodelay(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler: disable Nagle's algorithm on the association's socket.

    DIMSE sends small PDUs (a C-STORE response is ~200 bytes); with Nagle on, each waits for the
    peer's delayed ACK (~40 ms on Linux), capping any sender at ~20 images/s. pynetdicom has no
    socket-option setting, so the option is set here, before the association starts.
    """
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # e.g. a socket already closed by the peer: nothing to speed up
        logger.debug("could not set TCP_NODELAY: %s", exc)


def _reject_association(
    event: Event, ingest: ImageIngest, result: int, diagnostic: int, calling: str, reason: str
) -> None:
    """Send A-ASSOCIATE-RJ, record why, and end the association (as pynetdicom does itself)."""
    kind = "rejected-permanent" if result == _REJECTED_PERMANENT else "rejected-transient"
    ingest.reject("dicom", calling or None, f"association {kind}: {reason}", None)
    assoc = event.assoc
    assoc.acse.send_reject(result, _SOURCE_SERVICE_USER, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def handle_association_request(
    event: Event, db: Database, ingest: ImageIngest, ae_title: str, peers: _PeerRegistry
) -> None:
    """``EVT_REQUESTED`` handler: accept only the registered, active modalities calling ``ae_title``.

    Runs before pynetdicom negotiates; a rejection sent here ends the association before any
    presentation context is accepted.
    """
    request = event.assoc.requestor.primitive
    calling = str(request.calling_ae_title or "").strip()
    called = str(request.called_ae_title or "").strip()
    address = _peer_address(event)
    if called != ae_title:
        _reject_association(
            event,
            ingest,
            _REJECTED_PERMANENT,
            _DIAG_CALLED_AE,
            calling,
            f"called AE title {called!r} is not this receiver's ({ae_title!r}); from {address}",
        )
        return
    try:
        with db.session() as session:
            device = queries.device_by_ae_title(session, calling) if calling else None
            device_id = device.id if device is not None else None
            kind = device.kind if device is not None else None
    except Exception as exc:  # the database is down: say "try later", not "never"
        logger.exception("cannot look up calling AE title %r", calling)
        _reject_association(
            event,
            ingest,
            _REJECTED_TRANSIENT,
            _DIAG_NO_REASON,
            calling,
            f"device registry unavailable ({exc.__class__.__name__}); from {address}",
        )
        return
    if device_id is None or kind != DeviceKind.MODALITY.value:
        what = "is not a registered active modality" if device_id is None else f"belongs to a {kind}"
        _reject_association(
            event,
            ingest,
            _REJECTED_PERMANENT,
            _DIAG_CALLING_AE,
            calling,
            f"calling AE title {calling!r} {what}; from {address}",
        )
        return
    peers.add(event.assoc, _Peer(device_id, calling, address))
    logger.info("association from %s (%s, device #%d) accepted", calling, address, device_id)


def handle_echo(event: Event) -> int:
    """``EVT_C_ECHO`` handler: the association was accepted, so the peer is verified."""
    return 0x0000


def handle_store(event: Event, ingest: ImageIngest, peers: _PeerRegistry) -> Dataset | StoreStatus:
    """``EVT_C_STORE`` handler: accept one object through ``ingest``; see the module docstring.

    Returns :attr:`StoreStatus.SUCCESS` only after the file is on disk and its row committed;
    otherwise a failure status whose Error Comment says why. Never raises.
    """
    peer = peers.get(event.assoc)
    if peer is None:  # cannot happen for an association that passed handle_association_request
        return _status(StoreStatus.STORAGE_FAILURE, "association not registered")
    data = event.encoded_dataset()  # preamble + file meta + data set exactly as sent
    request = event.request
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        sop_class = str(ds.get("SOPClassUID") or "")
        sop_instance = str(ds.get("SOPInstanceUID") or "")
    except Exception as exc:  # pydicom decodes lazily: any element may be the broken one
        reason = f"data set cannot be decoded: {exc.__class__.__name__}: {exc}"
        ingest.reject("dicom", peer.ae_title, reason, data)
        return _status(StoreStatus.CANNOT_UNDERSTAND, reason)
    if sop_class != str(request.AffectedSOPClassUID) or sop_instance != str(request.AffectedSOPInstanceUID):
        reason = (
            f"data set is SOP class {sop_class or '(none)'} instance {sop_instance or '(none)'}, the "
            f"request names {request.AffectedSOPClassUID} {request.AffectedSOPInstanceUID}"
        )
        ingest.reject("dicom", peer.ae_title, reason, data)
        return _status(StoreStatus.DATASET_MISMATCH, reason)
    try:
        result = ingest.accept(
            data, channel="dicom", device_id=peer.device_id, source=peer.ae_title, dataset=ds
        )
    except IngestRejected as exc:  # already logged and recorded by ImageIngest
        return _status(_status_for_rejection(exc), exc.reason)
    except Exception as exc:  # disk full, database down...: refuse, so the sender keeps its copy
        logger.exception("could not store SOP instance %s from %s", sop_instance, peer.ae_title)
        reason = f"storage failure: {exc.__class__.__name__}"
        ingest.reject("dicom", peer.ae_title, f"{reason}: {exc}", data)
        return _status(StoreStatus.STORAGE_FAILURE, reason)
    if result.duplicate:
        logger.debug(
            "SOP instance %s re-sent by %s: already image %d", sop_instance, peer.ae_title, result.image_id
        )
    return StoreStatus.SUCCESS


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
        max_associations: int = 10,
        network_timeout: float = 60.0,
    ) -> None:
        ae_title = ae_title.strip()
        if not ae_title or len(ae_title) > 16 or not ae_title.isascii() or "\\" in ae_title:
            raise ValueError(f"AE title {ae_title!r} must be 1-16 ASCII characters without backslash")
        self.db = db
        self.ingest = ingest
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self._peers = _PeerRegistry()
        self._server: ThreadedAssociationServer | None = None

        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = max_pdu
        ae.maximum_associations = max_associations
        ae.network_timeout = network_timeout
        ae.require_called_aet = True  # also enforced (and recorded) by handle_association_request
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, list(_VERIFICATION_SYNTAXES))
        self._ae = ae

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen on ``host:port`` (non-blocking). Raises ``OSError`` if the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("receiver already started")
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (
                evt.EVT_REQUESTED,
                handle_association_request,
                [self.db, self.ingest, self.ae_title, self._peers],
            ),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.ingest, self._peers]),
        ]
        server = self._ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        assert server is not None  # block=False always returns the server
        self._server = server
        self.port = int(server.server_address[1])
        logger.info(
            "DICOM receiver %s listening on %s:%d (%d storage SOP classes x %d transfer syntaxes)",
            self.ae_title,
            self.host,
            self.port,
            len(ACCEPTED_SOP_CLASSES),
            len(ACCEPTED_TRANSFER_SYNTAXES),
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting associations, let running ones finish for up to ``timeout`` seconds, then
        abort what is left. An aborted C-STORE was never acknowledged, so the sender still has it."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # closes the listening socket; live associations keep their threads
        deadline = time.monotonic() + timeout
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            logger.warning("aborting association from %s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        logger.info("DICOM receiver %s stopped", self.ae_title)

    def __enter__(self) -> DicomReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
