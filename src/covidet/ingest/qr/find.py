"""C-FIND SCP: Patient Root and Study Root Query/Retrieve Information Model - FIND.

:func:`handle_find` is pynetdicom's ``EVT_C_FIND`` handler (a generator of ``(status, identifier)``).
In order: the peer must be a workstation (else 0x0124); the identifier must be readable for the model
(else 0xA900, or 0xC000 when it cannot be decoded); the matches are searched in one read session and
bounded by ``max_matches`` (more: 0xA700, nothing sent); the audit rows are written (failing that:
0xC000, nothing sent); then one pending response per match (0xFF00, or 0xFF01 when the request had
values in keys covidet does not match on), checking for C-CANCEL before each (0xFE00). Every
refusal carries an Error Comment and logs one WARNING line with the peer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from covidet.ingest.dicom_association import Peer, PeerRegistry
from covidet.ingest.qr.keys import IdentifierError, parse_request
from covidet.ingest.qr.matches import (
    PatientMatch,
    TooManyMatches,
    find_matches,
    response_identifier,
    study_uids_of,
)
from covidet.ingest.qr.service import FIND_MODELS, AuditDetails, QueryRetrieve, failure

__all__ = ["handle_find"]

logger = logging.getLogger("covidet.ingest.qr")

FindResult = tuple[int | Dataset, Dataset | None]


def handle_find(event: Event, service: QueryRetrieve, peers: PeerRegistry) -> Iterator[FindResult]:
    """``EVT_C_FIND`` handler; see the module docstring. Never raises."""
    peer = peers.get(event.assoc)
    refusal = service.refusal(peer, "C-FIND")
    if refusal is not None or peer is None:
        yield refusal or failure(0x0124, "not authorised"), None
        return
    who = f"{peer.ae_title} ({peer.address})"
    root = FIND_MODELS.get(str(event.request.AffectedSOPClassUID), "study")
    try:
        request = event.identifier
        keys = parse_request(request, root)
    except IdentifierError as exc:
        logger.warning("C-FIND from %s refused (0x%04X): %s", who, exc.status, exc.reason)
        _audit(service, peer, [], {"model": root, "status": f"0x{exc.status:04X}", "reason": exc.reason})
        yield failure(exc.status, exc.reason), None
        return
    except Exception as exc:  # pydicom decodes lazily: any element may be the broken one
        logger.warning("C-FIND from %s refused (0xC000): identifier not decodable: %s", who, exc)
        yield failure(0xC000, f"identifier cannot be decoded: {exc.__class__.__name__}"), None
        return
    details: AuditDetails = {"level": keys.level, "model": root}
    try:
        with service.db.session() as session:
            matches = find_matches(session, keys, limit=service.max_matches)
    except TooManyMatches as exc:
        logger.warning("C-FIND from %s refused (0xA700): %s", who, exc)
        _audit(service, peer, [], {**details, "status": "0xA700"})
        yield failure(0xA700, str(exc)), None
        return
    except Exception as exc:
        logger.exception("C-FIND from %s failed (0xC000)", who)
        yield failure(0xC000, f"unable to process: {exc.__class__.__name__}"), None
        return
    patient_level = keys.level == "PATIENT"
    objects = (
        [m.patient_key for m in matches if isinstance(m, PatientMatch)]
        if patient_level
        else study_uids_of(matches)
    )
    if not _audit(
        service, peer, objects, {**details, "matches": len(matches)}, "patient" if patient_level else "study"
    ):
        yield failure(0xC000, "audit log unavailable: nothing disclosed"), None
        return
    pending = 0xFF01 if keys.unsupported else 0xFF00
    if keys.unsupported:
        logger.info(
            "C-FIND from %s: keys not matched on (returned empty): %s", who, ", ".join(keys.unsupported)
        )
    for sent, match in enumerate(matches):
        if event.is_cancelled:
            logger.info("C-FIND from %s cancelled after %d of %d matches", who, sent, len(matches))
            yield 0xFE00, None
            return
        yield pending, response_identifier(request, match, keys, service.ae_title)
    logger.info("C-FIND %s level from %s: %d matches", keys.level, who, len(matches))


def _audit(
    service: QueryRetrieve,
    peer: Peer,
    objects: list[str],
    details: AuditDetails,
    object_type: str = "study",
) -> bool:
    """Write the audit rows; ``False`` (logged) when they cannot be written."""
    try:
        service.audit("C-FIND", peer, object_type=object_type, object_ids=objects, details=details)
    except Exception:
        logger.exception("C-FIND from %s: audit rows not written", peer.ae_title)
        return False
    return True
