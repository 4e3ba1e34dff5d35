"""STOW-RS (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]`` with a
``multipart/related; type="application/dicom"`` body, one DICOM Part 10 instance a part.

Each instance goes through :meth:`covidet.ingest.service.ImageIngest.accept`, the same validation,
durable storage, deduplication and analysis queue as C-STORE; an instance is listed as stored only
after its file and rows are committed. Who may store: a modality or uploader device (``X-API-Key``,
as ``POST /api/v1/images``) or an admin's bearer token. The body is at most ``max_image_bytes`` +
:data:`STOW_OVERHEAD_BYTES`, checked before and while it is read, after the credential.

Answer (application/dicom+json): 200 all stored, 202 some stored and some failed, 409 none stored;
``ReferencedSOPSequence`` items with their ``RetrieveURL``, ``FailedSOPSequence`` items with a
``FailureReason`` (:data:`FAILURE_REASONS`); every refusal is also logged and kept in
rejected_messages (channel ``dicomweb``) with its text.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydicom import dcmread
from pydicom.dataset import Dataset
from starlette.requests import ClientDisconnect

from covidet.api.audit_writer import Actor
from covidet.api.auth import get_current_user, record_audit
from covidet.api.deps import (
    API_KEY_HEADER,
    AuthenticatedDevice,
    DatabaseDep,
    IngestDep,
    client_label,
    get_current_device,
)
from covidet.api.dicomweb.common import service_root
from covidet.api.dicomweb.dicomjson import to_json
from covidet.api.dicomweb.media import parse_media_type
from covidet.api.dicomweb.stow_body import BodyTooLarge, MalformedBody, Part, boundary_of, read_parts
from covidet.ingest.service import ImageIngest, IngestRejected
from covidet.store.db import Database
from covidet.store.models import DeviceKind, Role

__all__ = ["FAILURE_REASONS", "STOW_OVERHEAD_BYTES", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["DICOMweb"])

#: Room for the multipart envelope around the instances (boundaries, part headers).
STOW_OVERHEAD_BYTES = 64 * 1024
CHANNEL = "dicomweb"
#: FailureReason (0008,1197) by cause (PS3.4 B.2.3, PS3.18 10.5.3).
FAILURE_REASONS = {
    "too_large": 0xA700,  # Refused: out of resources (bigger than max_image_bytes, too many pixels)
    "mismatch": 0xA900,  # Error: data set does not match SOP class (e.g. an image without pixels)
    "sop_class": 0x0122,  # Referenced SOP Class not supported (not a chest radiograph class)
    "undecodable": 0xC000,  # Error: cannot understand (not DICOM, truncated, unsupported encoding)
    "conflict": 0x0110,  # Processing failure: the SOP Instance UID is held for another patient/study
    "wrong_study": 0x0110,  # Processing failure: not of the study the URL names
}


@dataclass(frozen=True, slots=True)
class Sender:
    """Who stores: a device, or an admin user (then ``device_id`` is ``None``)."""

    name: str
    device_id: int | None
    user: Actor | None = None


async def _sender(request: Request, db: Database, ingest: ImageIngest) -> Sender:
    """The device (``X-API-Key``) or admin (``Authorization: Bearer``) of the request.

    Raises:
        HTTPException: 401 without a valid credential, 403 for a user who is not an admin or a device
            that is neither a modality nor an uploader.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        user = await get_current_user(request, db, token.strip(), None)
        if user.role != Role.ADMIN.value:
            logger.warning("STOW-RS by %s (%s) refused: not an admin", user.username, user.role)
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="STOW-RS needs an admin or a device key")
        return Sender(user.username, None, user)
    if request.headers.get(API_KEY_HEADER):
        device: AuthenticatedDevice = await run_in_threadpool(
            get_current_device, request, db, ingest, request.headers[API_KEY_HEADER]
        )
        if device.kind not in (DeviceKind.MODALITY.value, DeviceKind.UPLOADER.value):
            reason = f"device {device.name!r} is a {device.kind}; only modality or uploader devices may store"
            await run_in_threadpool(ingest.reject, CHANNEL, device.name, reason, None)
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=reason)
        return Sender(device.name, device.id)
    reason = f"not authenticated: send a device's {API_KEY_HEADER} or an admin's bearer token"
    await run_in_threadpool(ingest.reject, CHANNEL, client_label(request), f"STOW-RS: {reason}", None)
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=reason, headers={"WWW-Authenticate": 'Bearer realm="covidet"'}
    )


def _parse(data: bytes) -> Dataset | None:
    """The part as a dataset, or ``None`` when it is not readable DICOM (ImageIngest then says why)."""
    try:
        with warnings.catch_warnings():  # pydicom's guesses about a malformed file: the refusal says it
            warnings.simplefilter("ignore")
            return dcmread(io.BytesIO(data))
    except Exception:
        return None


def _uid(dataset: Dataset | None, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "") if dataset is not None else ""


def _failed(sop_class: str, sop_uid: str, reason: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    item.FailureReason = reason
    return item


def _store_all(
    ingest: ImageIngest, sender: Sender, parts: list[Part], study: str | None, root: str
) -> tuple[list[Dataset], list[Dataset], list[str]]:
    """Accept every part (on the thread pool): (stored items, failed items, stored study UIDs)."""
    stored: list[Dataset] = []
    failed: list[Dataset] = []
    studies: list[str] = []
    for number, part in enumerate(parts, start=1):
        data = bytes(part.data)
        part.data = bytearray()  # one copy of each instance at a time, not two of the whole body
        dataset = _parse(data)
        sop_class, sop_uid = _uid(dataset, "SOPClassUID"), _uid(dataset, "SOPInstanceUID")
        study_uid, series_uid = _uid(dataset, "StudyInstanceUID"), _uid(dataset, "SeriesInstanceUID")
        if part.content_type != "application/dicom":
            reason = f"part {number} is {part.content_type}, not application/dicom"
            ingest.reject(CHANNEL, sender.name, reason, None)
            failed.append(_failed(sop_class, sop_uid, FAILURE_REASONS["undecodable"]))
            continue
        if study is not None and study_uid and study_uid != study:
            reason = f"part {number}: instance {sop_uid} is of study {study_uid}, not {study}"
            ingest.reject(CHANNEL, sender.name, reason, None)
            failed.append(_failed(sop_class, sop_uid, FAILURE_REASONS["wrong_study"]))
            continue
        try:
            # The parsed dataset goes along (as from the C-STORE receiver): the SOP class is checked
            # first, and the file is not parsed twice.
            result = ingest.accept(
                data, channel=CHANNEL, device_id=sender.device_id, source=sender.name, dataset=dataset
            )
        except IngestRejected as exc:  # logged and recorded by ImageIngest
            kind = "sop_class" if exc.kind == "mismatch" and "SOP class" in exc.reason else exc.kind
            failed.append(_failed(sop_class, sop_uid, FAILURE_REASONS[kind]))
            continue
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = result.sop_instance_uid
        item.RetrieveURL = (
            f"{root}/studies/{study_uid}/series/{series_uid}/instances/{result.sop_instance_uid}"
        )
        stored.append(item)
        studies.append(study_uid)
    return stored, failed, studies


@router.post("/studies", summary="STOW-RS: store instances")
@router.post("/studies/{study}", summary="STOW-RS: store instances of a study")
async def store_instances(
    request: Request, db: DatabaseDep, ingest: IngestDep, study: str | None = None
) -> JSONResponse:
    sender = await _sender(request, db, ingest)
    limit = ingest.max_bytes + STOW_OVERHEAD_BYTES
    content_type = request.headers.get("content-type", "")
    declared = parse_media_type(content_type)
    root_type = declared.params.get("type", "application/dicom").lower()
    if declared.media_type != "multipart/related" or root_type != "application/dicom":
        reason = (
            'send multipart/related; type="application/dicom" (one Part 10 instance a part), '
            f"not {content_type or 'no Content-Type'}"
        )
        await run_in_threadpool(ingest.reject, CHANNEL, sender.name, reason, None)
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, detail=reason)
    length = request.headers.get("content-length", "")
    too_large = (
        f"the request body is more than the limit of {limit} bytes (COVIDET_MAX_IMAGE_BYTES + envelope)"
    )
    if length.isdigit() and int(length) > limit:
        await run_in_threadpool(ingest.reject, CHANNEL, sender.name, too_large, None)
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=too_large)
    try:
        parts = await read_parts(request.stream(), boundary_of(content_type), limit)
    except BodyTooLarge:
        await run_in_threadpool(ingest.reject, CHANNEL, sender.name, too_large, None)
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=too_large) from None
    except MalformedBody as exc:
        await run_in_threadpool(ingest.reject, CHANNEL, sender.name, str(exc), None)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    except ClientDisconnect:
        await run_in_threadpool(
            ingest.reject, CHANNEL, sender.name, "client disconnected during STOW-RS", None
        )
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="client disconnected") from None

    root = service_root(request)
    stored, failed, studies = await run_in_threadpool(_store_all, ingest, sender, parts, study, root)
    answer = Dataset()
    only = study or (studies[0] if studies and len(set(studies)) == 1 else None)
    if only:
        answer.RetrieveURL = f"{root}/studies/{only}"
    answer.ReferencedSOPSequence = stored
    if failed:
        answer.FailedSOPSequence = failed
    code = (
        status.HTTP_200_OK if not failed else status.HTTP_202_ACCEPTED if stored else status.HTTP_409_CONFLICT
    )
    await run_in_threadpool(
        record_audit,
        db,
        request,
        "dicomweb.store",
        user=sender.user,
        username=sender.name,
        object_type="study" if only else None,
        object_id=only,
        details={"study_uids": sorted(set(studies)), "stored": len(stored), "failed": len(failed)},
    )
    logger.info("STOW-RS by %s: %d stored, %d failed", sender.name, len(stored), len(failed))
    return JSONResponse(to_json(answer), status_code=code, media_type="application/dicom+json")
