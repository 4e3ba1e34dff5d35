"""The event handlers of the DICOM receiver (:mod:`covidet.ingest.dicom_scp`): C-STORE, C-ECHO and the
socket option of a new connection, with the C-STORE statuses they return.

:func:`handle_store` is the receiver's step 3 (see :mod:`.dicom_scp`): it hands the object, exactly as
received, to :meth:`ImageIngest.accept <covidet.ingest.service.ImageIngest.accept>` and returns
*Success* only once the file is on disk and its row committed; any refusal is a :class:`StoreStatus`
failure with the reason as Error Comment, logged and kept in ``rejected_messages``. The handlers are
module-level functions that pynetdicom calls on the association's thread with their collaborators
bound as extra arguments; they never raise.
"""

from __future__ import annotations

import logging
import socket
from enum import IntEnum

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from covidet.ingest.dicom_association import PeerRegistry
from covidet.ingest.service import ImageIngest, IngestRejected
from covidet.store.db import database_unavailable

__all__ = ["StoreStatus", "handle_echo", "handle_store", "set_tcp_nodelay"]

# The receiver's logger name, as before these handlers had a module of their own: log filters and the
# load benchmark's counted log lines name it.
logger = logging.getLogger("covidet.ingest.dicom_scp")

#: The Error Comment of a DIMSE response is a LO element: at most 64 characters.
_ERROR_COMMENT_LIMIT = 64


class StoreStatus(IntEnum):
    """C-STORE response statuses the receiver returns (PS3.4 Table B.2-1 ranges)."""

    #: Stored durably and recorded (or already stored: a re-send of the same SOP Instance UID).
    SUCCESS = 0x0000
    #: Refused: not authorised - the peer is a workstation (it queries and retrieves; only modalities send).
    NOT_AUTHORISED = 0x0124
    #: Refused: out of resources - the object exceeds ``max_image_bytes`` or ``max_image_pixels``.
    OUT_OF_RESOURCES = 0xA700
    #: Refused: out of resources - the file or its database row could not be written (disk full,
    #: database down). Nothing was acknowledged; the sender may retry.
    STORAGE_FAILURE = 0xA701
    #: Error: the data set does not match the SOP class - no pixel data, missing UIDs, a SOP class
    #: or instance other than the one the request names, or not a chest radiograph class.
    DATASET_MISMATCH = 0xA900
    #: Error: cannot understand - truncated, corrupt or undecodable data set or pixel data.
    CANNOT_UNDERSTAND = 0xC000
    #: Error (covidet-specific, in the "cannot understand" range): the SOP Instance UID is already
    #: stored for another patient or study; a correction is not applied silently.
    CONFLICT = 0xC001


def _status(code: StoreStatus, comment: str | None = None) -> Dataset | StoreStatus:
    """A response status; failures carry ``comment`` (cut to 64 characters) as Error Comment."""
    if not comment:
        return code
    status = Dataset()
    status.Status = int(code)
    status.ErrorComment = comment[:_ERROR_COMMENT_LIMIT]
    return status


def _status_for_rejection(exc: IngestRejected) -> StoreStatus:
    """Map an :class:`IngestRejected` to the C-STORE status of its kind (docs/dicom.md)."""
    return {
        "too_large": StoreStatus.OUT_OF_RESOURCES,
        "mismatch": StoreStatus.DATASET_MISMATCH,
        "conflict": StoreStatus.CONFLICT,
    }.get(exc.kind, StoreStatus.CANNOT_UNDERSTAND)


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


def handle_echo(event: Event) -> int:
    """``EVT_C_ECHO`` handler: the association was accepted, so the peer is verified."""
    return 0x0000


def handle_store(event: Event, ingest: ImageIngest, peers: PeerRegistry) -> Dataset | StoreStatus:
    """``EVT_C_STORE`` handler: accept one object through ``ingest``; see the module docstring.

    Returns :attr:`StoreStatus.SUCCESS` only after the file is on disk and its row committed;
    otherwise a failure status whose Error Comment says why. Never raises.
    """
    peer = peers.get(event.assoc)
    if peer is None:  # cannot happen for an association that passed handle_association_request
        return _status(StoreStatus.STORAGE_FAILURE, "association not registered")
    if peer.kind != "modality":  # a workstation's storage contexts are for C-GET, covidet sending
        logger.warning("C-STORE from %s (%s, %s) refused (0x0124)", peer.ae_title, peer.kind, peer.address)
        return _status(StoreStatus.NOT_AUTHORISED, f"{peer.ae_title} is a {peer.kind}: only modalities send")
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
    peers.busy.add(event.assoc)
    try:
        result = ingest.accept(
            data, channel="dicom", device_id=peer.device_id, source=peer.ae_title, dataset=ds
        )
    except IngestRejected as exc:  # already logged and recorded by ImageIngest
        return _status(_status_for_rejection(exc), exc.reason)
    except Exception as exc:  # disk full, database down...: refuse, so the sender keeps its copy
        if (busy := database_unavailable(exc)) is not None:  # transient: out of resources, no traceback
            logger.warning("C-STORE of %s from %s refused (0xA700): %s", sop_instance, peer, busy)
            return _status(StoreStatus.OUT_OF_RESOURCES, busy)
        logger.exception("could not store SOP instance %s from %s", sop_instance, peer.ae_title)
        reason = f"storage failure: {exc.__class__.__name__}"
        ingest.reject("dicom", peer.ae_title, f"{reason}: {exc}", data)
        return _status(StoreStatus.STORAGE_FAILURE, reason)
    finally:
        peers.busy.discard(event.assoc)
    if result.duplicate:
        logger.debug(
            "SOP instance %s re-sent by %s: already image %d", sop_instance, peer.ae_title, result.image_id
        )
    return StoreStatus.SUCCESS
