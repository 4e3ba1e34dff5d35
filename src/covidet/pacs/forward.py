"""Forward a DICOM object (a report's secondary capture, say) to a PACS over C-STORE.

One association per call: covidet sends reports one at a time, when they are issued, so a pooled
association would buy little and would have to be kept alive. The call blocks for up to a few
``timeout`` periods; run it off any event loop or association thread (a worker job, a thread pool).

Do not forward to covidet's own C-STORE receiver: it accepts Secondary Capture and would analyse the
capture again.
"""

from __future__ import annotations

import copy
import logging
import socket

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event, EventHandlerType

__all__ = ["ForwardError", "forward_to_pacs"]

logger = logging.getLogger(__name__)

SUCCESS = 0x0000


class ForwardError(RuntimeError):
    """The object could not be handed to the PACS: no association, or no answer to the C-STORE.

    ``str(err)`` is one line naming the peer (``AE@host:port``) and what went wrong.
    """


def _set_tcp_nodelay(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler: disable Nagle's algorithm on the association's socket.

    Without it, each small DIMSE PDU (the C-STORE request's command set, the release request) can wait
    for the peer's delayed ACK, about 40 ms on Linux. pynetdicom has no socket-option setting, so it is
    set here, as soon as the connection is open and before the association is negotiated.
    """
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # a socket the peer already closed: nothing to speed up
        logger.debug("could not set TCP_NODELAY: %s", exc)


def _transfer_syntaxes(tsyntax: UID) -> list[UID]:
    """What to offer: the dataset's own syntax first; for uncompressed data also the two syntaxes every
    SCP must accept (pynetdicom re-encodes between uncompressed syntaxes, never from compressed ones).
    """
    offered = [tsyntax]
    if not tsyntax.is_compressed:
        offered += [ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts != tsyntax]
    return offered


def forward_to_pacs(
    ds: Dataset,
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "COVIDET",
    timeout: float = 30,
) -> int:
    """Send ``ds`` to the Storage SCP ``called_ae`` at ``host:port`` and return the C-STORE status.

    The presentation context is ``ds.SOPClassUID`` with ``ds.file_meta.TransferSyntaxUID`` (Explicit VR
    Little Endian when the dataset has none), plus the uncompressed little-endian syntaxes when the data
    is uncompressed. ``timeout`` (seconds) bounds the TCP connect, the association negotiation, the wait
    for the C-STORE response and any silence on the network. TCP_NODELAY is set on the socket.

    Returns:
        The DICOM status of the C-STORE response: ``0x0000`` success, ``0xB000``/``0xB007``/``0xB006``
        warnings, ``0xA7xx``/``0xA9xx``/``0xCxxx`` failures. A warning or failure is logged and
        returned: whether to retry is the caller's decision.

    Raises:
        ForwardError: the association could not be made (connection refused or timed out, rejected,
            aborted), the PACS accepted no presentation context for this SOP class and transfer
            syntax, or no valid C-STORE response came back.
        ValueError: ``ds`` has no SOPClassUID or SOPInstanceUID, or an AE title is invalid.
    """
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        raise ValueError("the dataset to forward needs SOPClassUID and SOPInstanceUID")
    meta = getattr(ds, "file_meta", None)
    declared = meta.get("TransferSyntaxUID") if meta is not None else None
    tsyntax = UID(declared or ExplicitVRLittleEndian)
    if not declared:
        # pynetdicom needs to know how the dataset is encoded; set it on a copy, not on the caller's.
        ds = copy.copy(ds)
        ds.file_meta = copy.deepcopy(meta) if meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax

    peer = f"{called_ae}@{host}:{port}"
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(str(sop_class), _transfer_syntaxes(tsyntax))
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout

    rejection: list[str] = []
    connected: list[bool] = []

    def _on_connect(event: Event) -> None:
        connected.append(True)  # a failed connect is reported as an abort: this tells them apart
        _set_tcp_nodelay(event)

    def _record_rejection(event: Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if getattr(primitive, "result", None) in (1, 2):  # A-ASSOCIATE-RJ (permanent / transient)
            rejection.append(f"{primitive.result_str}: {primitive.reason_str} (by {primitive.source_str})")

    handlers: list[EventHandlerType] = [
        (evt.EVT_CONN_OPEN, _on_connect),
        (evt.EVT_ACSE_RECV, _record_rejection),
    ]
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=handlers)
    if not assoc.is_established:
        if not connected:
            why = f"cannot connect (refused, unreachable or no answer within {timeout:g} s)"
        elif assoc.is_rejected or rejection:
            why = "association rejected" + (f" ({rejection[0]})" if rejection else "")
        elif assoc.is_aborted:
            why = "association aborted by the peer"
        else:
            why = f"no answer to the association request within {timeout:g} s"
        raise ForwardError(f"forward of SOP instance {sop_instance} to {peer} failed: {why}")

    try:
        try:
            response = assoc.send_c_store(ds)
        except ValueError as exc:  # pynetdicom: no accepted context for this SOP class / syntax
            raise ForwardError(
                f"forward of SOP instance {sop_instance} to {peer} failed: the PACS accepts no "
                f"presentation context for SOP class {UID(str(sop_class)).name} in {tsyntax.name}: {exc}"
            ) from exc
        if "Status" not in response:
            raise ForwardError(
                f"forward of SOP instance {sop_instance} to {peer} failed: no valid C-STORE response "
                f"(timed out after {timeout:g} s, aborted or malformed)"
            )
        status = int(response.Status)
    finally:
        if assoc.is_established:
            assoc.release()

    if status == SUCCESS:
        logger.info("forwarded %s to %s", sop_instance, peer)
    else:
        logger.warning("forward of %s to %s returned status 0x%04X", sop_instance, peer, status)
    return status
