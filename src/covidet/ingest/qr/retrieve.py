"""C-GET and C-MOVE SCP: Patient Root and Study Root Query/Retrieve Information Model - GET / MOVE.

Both handlers are pynetdicom generators. Before anything is sent: the peer must be a workstation
(0x0124); a C-MOVE destination must be one of ``Settings.dicom_move_destinations`` (else 0xA801,
*move destination unknown*); the identifier must name the unique key of its level (a study's UIDs
at STUDY level, ...; else 0xA900); the matched instances must number at most ``max_instances``
(else 0xA702, nothing sent); the audit rows must be written (else 0xC000). Then each instance is
read from the image store one at a time (memory stays one instance) and sent as a C-STORE
sub-operation: on the same association for C-GET (the workstation took the storage SCP role), on
a new association to the destination for C-MOVE. A sub-operation that fails (the file is gone, the
peer refuses it or cannot take its transfer syntax) is counted, and the final response is
0xB000 with the Failed SOP Instance UID List, or 0xA702 when all failed (pynetdicom's accounting).
A C-GET peer that accepted only uncompressed syntaxes gets compressed X-rays decompressed.

pynetdicom needs the destination (C-MOVE) and the sub-operation count before any status, so a
refusal after those is sent as the one sub-operation's failure status with its Error Comment.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TypedDict

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from covidet.ingest.dicom_association import Peer, PeerRegistry
from covidet.ingest.qr.keys import IdentifierError, parse_request
from covidet.ingest.qr.matches import find_matches, instances_of, study_uids_of
from covidet.ingest.qr.service import GET_MODELS, MOVE_MODELS, AuditDetails, QueryRetrieve, failure
from covidet.store.archive_queries import InstanceRecord

__all__ = ["GetYield", "MoveOptions", "MoveYield", "handle_get", "handle_move"]

logger = logging.getLogger("covidet.ingest.qr")

#: Most presentation contexts one association may propose (PS3.8: odd context ids 1-255).
_MAX_CONTEXTS = 128

#: What a C-GET handler yields to pynetdicom: the sub-operation count, then (status, dataset) pairs.
GetYield = int | tuple[int | Dataset, Dataset | None]


class MoveOptions(TypedDict, total=False):
    """Keyword arguments pynetdicom passes on to ``AE.associate`` for the C-MOVE association."""

    evt_handlers: list[EventHandlerType]
    contexts: list[PresentationContext]


#: What a C-MOVE handler yields: first the destination ``(host, port, options)`` (``(None, None)``:
#: unknown), then as :data:`GetYield`.
MoveYield = GetYield | tuple[None, None] | tuple[str, int, MoveOptions]


class _Refused(Exception):
    def __init__(self, status: Dataset, count: int = 1) -> None:
        super().__init__(str(status.get("ErrorComment", "")))
        self.status = status
        self.count = count


def _prepare(
    event: Event, service: QueryRetrieve, peer: Peer | None, name: str, root: str, details: AuditDetails
) -> list[InstanceRecord]:
    """Authorise, match, bound and audit one retrieve; the instances to send. Raises :class:`_Refused`."""
    refusal = service.refusal(peer, name)
    if refusal is not None or peer is None:
        raise _Refused(refusal or failure(0x0124, "not authorised"))
    who = f"{peer.ae_title} ({peer.address})"
    try:
        keys = parse_request(event.identifier, root, retrieve=True)
    except IdentifierError as exc:
        logger.warning("%s from %s refused (0x%04X): %s", name, who, exc.status, exc.reason)
        _audit(service, name, peer, [], {**details, "model": root, "status": f"0x{exc.status:04X}"})
        raise _Refused(failure(exc.status, exc.reason)) from exc
    except Exception as exc:  # pydicom decodes lazily
        logger.warning("%s from %s refused (0xC000): identifier not decodable: %s", name, who, exc)
        raise _Refused(failure(0xC000, f"identifier cannot be decoded: {exc.__class__.__name__}")) from exc
    try:
        with service.db.session() as session:
            matches = find_matches(session, keys)
            records = instances_of(session, matches)
    except Exception as exc:
        logger.exception("%s from %s failed (0xC000)", name, who)
        raise _Refused(failure(0xC000, f"unable to process: {exc.__class__.__name__}")) from exc
    details = {**details, "level": keys.level, "model": root, "instances": len(records)}
    if len(records) > service.max_instances:
        reason = f"{len(records)} instances match, more than {service.max_instances}: narrow the request"
        logger.warning("%s from %s refused (0xA702): %s", name, who, reason)
        _audit(service, name, peer, [], {**details, "status": "0xA702"})
        raise _Refused(failure(0xA702, reason), count=min(len(records), 65535))
    if not _audit(service, name, peer, study_uids_of(matches), details):
        raise _Refused(failure(0xC000, "audit log unavailable: nothing sent"))
    logger.info("%s %s level from %s: %d instances to send", name, keys.level, who, len(records))
    return records


def _audit(service: QueryRetrieve, name: str, peer: Peer, studies: list[str], details: AuditDetails) -> bool:
    try:
        service.audit(name, peer, object_type="study", object_ids=studies, details=details)
    except Exception:
        logger.exception("%s from %s: audit rows not written", name, peer.ae_title)
        return False
    return True


def _unsendable(record: InstanceRecord) -> Dataset:
    """A stand-in for an instance that cannot be read: it names the instance but has no transfer
    syntax, so pynetdicom's C-STORE refuses it and counts it in the Failed SOP Instance UID List."""
    stand_in = Dataset()
    stand_in.SOPClassUID = record.sop_class_uid
    stand_in.SOPInstanceUID = record.sop_instance_uid
    return stand_in


def _sub_operations(
    event: Event,
    service: QueryRetrieve,
    records: list[InstanceRecord],
    who: str,
    name: str,
    fit: Callable[[Dataset], Dataset] | None = None,
) -> Iterator[tuple[int, Dataset | None]]:
    """One pending status and dataset per instance, read one at a time; C-CANCEL checked before each."""
    # Imported here: covidet.archive pulls in the SR builders (highdicom), which a receiver that only
    # stores images never needs.
    from covidet.archive.instances import instance_dataset

    unsent = 0
    for index, record in enumerate(records):
        if event.is_cancelled:
            logger.info("%s from %s cancelled after %d of %d instances", name, who, index, len(records))
            yield 0xFE00, None
            return
        try:
            dataset = instance_dataset(service.db, service.store, record)
            if fit is not None:
                dataset = fit(dataset)
        except Exception as exc:  # a missing or unreadable file fails this sub-operation only
            unsent += 1
            logger.warning("%s from %s: instance %s not sent: %s", name, who, record.sop_instance_uid, exc)
            yield 0xFF00, _unsendable(record)
            continue
        yield 0xFF00, dataset
    logger.info("%s from %s: %d instances offered, %d unreadable", name, who, len(records), unsent)


def _fit_to(assoc: Association) -> Callable[[Dataset], Dataset]:
    """Decompress a compressed instance when the C-GET peer accepted its SOP class only uncompressed."""

    def fit(dataset: Dataset) -> Dataset:
        syntax = UID(dataset.file_meta.TransferSyntaxUID)
        if not syntax.is_compressed:
            return dataset
        offered = [
            UID(cx.transfer_syntax[0])
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == dataset.SOPClassUID and cx.as_scu
        ]
        if syntax not in offered and any(not ts.is_compressed for ts in offered):
            # The peer cannot take the stored compression: the same instance (same UID: only its
            # encoding changes, PS3.5 10), sent uncompressed.
            dataset.decompress(generate_instance_uid=False)
        return dataset

    return fit


def handle_get(event: Event, service: QueryRetrieve, peers: PeerRegistry) -> Iterator[GetYield]:
    """``EVT_C_GET`` handler; see the module docstring. Never raises."""
    peer = peers.get(event.assoc)
    root = GET_MODELS.get(str(event.request.AffectedSOPClassUID), "study")
    try:
        records = _prepare(event, service, peer, "C-GET", root, {})
    except _Refused as refused:
        yield refused.count
        yield refused.status, None
        return
    assert peer is not None
    yield len(records)
    yield from _sub_operations(
        event, service, records, f"{peer.ae_title} ({peer.address})", "C-GET", _fit_to(event.assoc)
    )


def _move_contexts(records: list[InstanceRecord]) -> list[PresentationContext]:
    """Contexts for the C-MOVE association: per SOP class one uncompressed context, and one per
    stored compressed transfer syntax (so the destination can accept the stored form)."""
    compressed: dict[str, set[str]] = defaultdict(set)
    for record in records:
        syntax = UID(record.transfer_syntax_uid or ExplicitVRLittleEndian)
        compressed[record.sop_class_uid]
        if syntax.is_compressed:
            compressed[record.sop_class_uid].add(str(syntax))
    contexts = []
    for sop_class, syntaxes in compressed.items():
        contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        contexts.extend(build_context(sop_class, syntax) for syntax in sorted(syntaxes))
    return contexts[:_MAX_CONTEXTS] or [build_context(Verification)]


def handle_move(event: Event, service: QueryRetrieve, peers: PeerRegistry) -> Iterator[MoveYield]:
    """``EVT_C_MOVE`` handler; see the module docstring. Never raises."""
    peer = peers.get(event.assoc)
    destination = (event.move_destination or "").strip()
    root = MOVE_MODELS.get(str(event.request.AffectedSOPClassUID), "study")
    address = service.destinations.get(destination)
    who = f"{peer.ae_title} ({peer.address})" if peer else "an unregistered association"
    if address is None:
        logger.warning("C-MOVE from %s refused (0xA801): move destination %r unknown", who, destination)
        if peer is not None and service.refusal(peer, "C-MOVE") is None:
            _audit(service, "C-MOVE", peer, [], {"destination": destination, "status": "0xA801"})
        yield None, None  # pynetdicom answers 0xA801 Refused: Move Destination unknown
        return
    options: MoveOptions = {}
    if service.on_connect is not None:
        options["evt_handlers"] = [(evt.EVT_CONN_OPEN, service.on_connect)]
    try:
        records = _prepare(event, service, peer, "C-MOVE", root, {"destination": destination})
    except _Refused as refused:
        yield (*address, {**options, "contexts": [build_context(Verification)]})
        yield refused.count
        yield refused.status, None
        return
    assert peer is not None
    yield (*address, {**options, "contexts": _move_contexts(records)})
    yield len(records)
    yield from _sub_operations(event, service, records, who, f"C-MOVE to {destination}")
