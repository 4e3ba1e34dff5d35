"""Who may open an association with the DICOM receiver: the ``EVT_REQUESTED`` handler and the
registry of accepted peers (see :mod:`covidet.ingest.dicom_scp` for the whole contract and
:mod:`covidet.ingest.dicom_checks` for the limit and the address ties).

Every refusal sends A-ASSOCIATE-RJ before any presentation context is negotiated, is logged at
WARNING in one line (AE title, peer address, reason) and is kept in ``rejected_messages``.
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from covidet.ingest.dicom_checks import AssociationPolicy
from covidet.ingest.service import ImageIngest
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import DeviceKind

__all__ = ["Peer", "PeerRegistry", "handle_association_request"]

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): result, source, diagnostic.
_REJECTED_PERMANENT, _REJECTED_TRANSIENT = 0x01, 0x02
_SOURCE_SERVICE_USER, _SOURCE_PROVIDER_PRESENTATION = 0x01, 0x03
_DIAG_LOCAL_LIMIT = 0x02  # with the presentation-related source: local-limit-exceeded
_DIAG_NO_REASON, _DIAG_CALLING_AE, _DIAG_CALLED_AE = 0x01, 0x03, 0x07


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of an accepted association (``kind``: the device's kind)."""

    device_id: int
    ae_title: str
    address: str
    kind: str = DeviceKind.MODALITY.value


class PeerRegistry:
    """The device behind each live association, filled at association time and read per C-STORE
    (so the database is asked once per association, not once per image). Entries vanish with their
    association object (weak keys)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: weakref.WeakKeyDictionary[Association, Peer] = weakref.WeakKeyDictionary()
        #: Held from the limit check to :meth:`add`, so that simultaneous requests cannot overshoot.
        self.admission = threading.Lock()
        #: Associations inside a C-STORE handler now: the only ones shutdown waits for.
        self.busy: weakref.WeakSet[Association] = weakref.WeakSet()

    def add(self, assoc: Association, peer: Peer) -> None:
        with self._lock:
            self._peers[assoc] = peer

    def get(self, assoc: Association) -> Peer | None:
        with self._lock:
            return self._peers.get(assoc)

    def accepted(self) -> list[Association]:
        """The associations accepted so far whose objects still exist (running or not)."""
        with self._lock:
            return list(self._peers.keys())


def _peer_address(event: Event) -> str:
    info = event.assoc.requestor.address_info
    return f"{info.address}:{info.port}"


def _reject_association(
    event: Event,
    ingest: ImageIngest,
    result: int,
    diagnostic: int,
    calling: str,
    reason: str,
    source: int = _SOURCE_SERVICE_USER,
) -> None:
    """Send A-ASSOCIATE-RJ, record why (WARNING log line and ``rejected_messages`` row, both with
    the AE title and the peer's address in the reason), and end the association."""
    kind = "rejected-permanent" if result == _REJECTED_PERMANENT else "rejected-transient"
    ingest.reject("dicom", calling or None, f"association {kind}: {reason}", None)
    assoc = event.assoc
    assoc.acse.send_reject(result, source, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def handle_association_request(
    event: Event,
    db: Database,
    ingest: ImageIngest,
    ae_title: str,
    peers: PeerRegistry,
    policy: AssociationPolicy | None = None,
    kinds: Mapping[str, Sequence[PresentationContext] | None] | None = None,
) -> None:
    """``EVT_REQUESTED`` handler: accept only the registered, active devices of the ``kinds`` calling
    ``ae_title``, from their tied addresses, within the association limit (``policy``; see
    :mod:`covidet.ingest.dicom_checks`).

    ``kinds`` maps each device kind that may associate to the presentation contexts its
    associations negotiate (``None``: the server's, i.e. the modalities' storage contexts); the
    default admits modalities only. Runs before pynetdicom negotiates; a rejection sent here ends
    the association before any presentation context is accepted.
    """
    policy = policy or AssociationPolicy()
    kinds = kinds if kinds is not None else {DeviceKind.MODALITY.value: None}
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
    if device_id is None or kind not in kinds:
        allowed = " or ".join(kinds)
        what = f"is not a registered active {allowed}" if device_id is None else f"belongs to a {kind}"
        _reject_association(
            event,
            ingest,
            _REJECTED_PERMANENT,
            _DIAG_CALLING_AE,
            calling,
            f"calling AE title {calling!r} {what}; from {address}",
        )
        return
    host = str(event.assoc.requestor.address_info.address)
    if refusal := policy.address_refusal(calling, host):
        _reject_association(event, ingest, _REJECTED_PERMANENT, _DIAG_CALLING_AE, calling, refusal)
        return
    with peers.admission:
        refusal = policy.limit_refusal(event.assoc, peers.accepted())
        if refusal is None:
            peers.add(event.assoc, Peer(device_id, calling, address, str(kind)))
    if refusal is not None:
        _reject_association(
            event,
            ingest,
            _REJECTED_TRANSIENT,
            _DIAG_LOCAL_LIMIT,
            calling,
            f"{refusal}; from {address}",
            source=_SOURCE_PROVIDER_PRESENTATION,
        )
        return
    if (contexts := kinds[str(kind)]) is not None:  # this kind's services, negotiated next
        event.assoc.acceptor.supported_contexts = copy.deepcopy(list(contexts))
    logger.info("association from %s (%s, %s #%d) accepted", calling, address, kind, device_id)
