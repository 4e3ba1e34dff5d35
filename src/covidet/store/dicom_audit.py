"""Audit rows of DICOM Query/Retrieve: who (device) asked for which studies, from where.

Patient data leaves covidet through C-FIND identifiers and C-GET / C-MOVE instances, so each request
is written to ``audit_events`` *before* anything is disclosed (the Q/R handlers refuse the request
when this write fails). One row per study the request touches (``object_type`` ``study``,
``object_id`` its Study Instance UID), or per patient for a patient-level C-FIND, or one row with no
object when nothing matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from covidet.store.review_queries import add_audit_event

__all__ = ["QR_ACTIONS", "record_qr_request"]

#: The audit action of each DIMSE service.
QR_ACTIONS = {"C-FIND": "dicom.find", "C-GET": "dicom.get", "C-MOVE": "dicom.move"}


def record_qr_request(
    session: Session,
    service: str,
    *,
    device_id: int,
    peer_host: str,
    object_type: str,
    object_ids: Sequence[str],
    details: dict[str, Any],
) -> int:
    """Add the audit rows of one Q/R request (``service``: ``C-FIND``, ``C-GET`` or ``C-MOVE``) and
    return how many were added. ``details`` (JSON-serialisable) is stored on every row."""
    action = QR_ACTIONS[service]
    targets: Sequence[str | None] = object_ids or [None]
    for object_id in targets:
        add_audit_event(
            session,
            action,
            actor_device_id=device_id,
            object_type=object_type if object_id is not None else None,
            object_id=object_id,
            ip=peer_host,
            details=details,
        )
    return len(targets)
