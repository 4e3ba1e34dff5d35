"""What every DICOMweb route shares: the URL prefix, who may read, the audit event of a read, the
lookup of the instances a URL names, and absolute URLs for RetrieveURL / BulkDataURI.

Reads need a radiologist or an admin, by bearer token or by the web session cookie (the browser
viewer), exactly as the JSON API (:mod:`covidet.api.auth`). Every read of patient data is answered
only after its one audit event is committed (``record_audit``), with the study UID(s) it touched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, Request, status

from covidet.api.auth import AuthenticatedUser, record_audit
from covidet.store import archive_queries as aq
from covidet.store.db import Database

__all__ = [
    "DICOMWEB_PREFIX",
    "PATIENT_DATA_HEADERS",
    "audit_read",
    "bad_request",
    "find_instances",
    "instance_url",
    "not_acceptable",
    "not_found",
    "service_root",
    "study_url",
]

logger = logging.getLogger(__name__)

#: Where the DICOMweb services live (the "service root" of PS3.18).
DICOMWEB_PREFIX = "/dicom-web"
#: Headers of every answer that holds patient data: kept by no cache, never sniffed as another type
#: (the JSON API's middleware sets these under /api/v1 only).
PATIENT_DATA_HEADERS = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}


def bad_request(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=reason)


def not_found(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=reason)


def not_acceptable(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_406_NOT_ACCEPTABLE, detail=reason)


def service_root(request: Request) -> str:
    """The absolute URL of the service root as the client reached it (scheme and host from the
    request; behind a proxy, run uvicorn with ``--proxy-headers`` so that they are the client's)."""
    return str(request.base_url).rstrip("/") + DICOMWEB_PREFIX


def study_url(request: Request, study_uid: str) -> str:
    return f"{service_root(request)}/studies/{study_uid}"


def instance_url(request: Request, record: aq.InstanceRecord) -> str:
    return (
        f"{study_url(request, record.study_instance_uid)}/series/{record.series_instance_uid}"
        f"/instances/{record.sop_instance_uid}"
    )


def find_instances(
    db: Database, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[aq.InstanceRecord]:
    """The instances the URL names (a study, a series of it, or one instance), in archive order.

    Raises:
        HTTPException: 404 naming the level that does not exist.
    """
    with db.session() as session:
        found = aq.instances(session, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
        if found:
            return found
        if not aq.instances(session, study_uid=study_uid):
            raise not_found(f"no study {study_uid}")
        if series_uid is not None and not aq.instances(session, study_uid=study_uid, series_uid=series_uid):
            raise not_found(f"no series {series_uid} in study {study_uid}")
    raise not_found(f"no instance {sop_uid} in series {series_uid} of study {study_uid}")


def audit_read(
    db: Database,
    request: Request,
    user: AuthenticatedUser,
    action: str,
    *,
    study_uids: Sequence[str],
    details: dict[str, Any] | None = None,
) -> None:
    """The one audit event of a DICOMweb read: ``object_id`` is the study UID when one study was
    read, and ``details["study_uids"]`` lists every study the answer holds (searches)."""
    unique = list(dict.fromkeys(study_uids))
    record_audit(
        db,
        request,
        action,
        user=user,
        object_type="study" if len(unique) == 1 else None,
        object_id=unique[0] if len(unique) == 1 else None,
        details={"study_uids": unique, "path": request.url.path, **(details or {})},
    )
