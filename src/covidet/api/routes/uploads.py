"""``POST /api/v1/images``: a device uploads one chest X-ray (DICOM, PNG or JPEG) over HTTPS.

Contract (see docs/upload.md): multipart/form-data with a ``file`` part and an optional
``patient_id`` field; header ``X-API-Key`` of an uploader or modality device. 201 for a new image,
200 (``duplicate: true``) for one already stored; 401 / 403 / 413 / 415 / 422 with
``{"detail": reason}`` otherwise. Every refusal is logged and kept in rejected_messages.

The body is not parsed by FastAPI (no ``File``/``Form`` parameters) on purpose: that would read it
before the API key is checked and without a size limit. Here the key is checked first, a declared
``Content-Length`` above the limit is refused before one byte is read, and a body without one (or
longer than it claimed) is cut off as soon as it passes the limit.

The reads of the same resource (``GET /api/v1/images/{id}`` ...) are in :mod:`covidet.api.routes.images`;
both routers share the ``/images`` prefix and the ``images`` tag.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import NoReturn

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from covidet.api.deps import AuthenticatedDevice, DatabaseDep, IngestDep, UploaderDevice
from covidet.api.limits import capped_receive
from covidet.api.schemas import ErrorPublic, OpenApiResponses
from covidet.api.schemas_images import ImageUploadPublic
from covidet.ingest.service import ImageIngest, IngestRejected
from covidet.store import review_queries as rq
from covidet.store.db import Database

__all__ = ["FORM_OVERHEAD_BYTES", "PATIENT_ID_MAX_LENGTH", "ImageUploadPublic", "router", "upload_image"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/images", tags=["images"])

#: Bytes allowed on top of ``max_image_bytes`` for the multipart envelope (boundaries, part headers,
#: the patient_id field): the most of a request body the server ever reads.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Longest patient identifier: DICOM PatientID is a LO (64 characters), and so is the store's key.
PATIENT_ID_MAX_LENGTH = 64

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

_UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "DICOM Part 10, PNG or JPEG (detected from content)",
                        },
                        "patient_id": {
                            "type": "string",
                            "maxLength": PATIENT_ID_MAX_LENGTH,
                            "description": "patient of a PNG/JPEG; ignored for DICOM (it has PatientID)",
                        },
                    },
                }
            }
        },
    }
}

_ERRORS: OpenApiResponses = {
    200: {"model": ImageUploadPublic, "description": "Already stored: the same bytes or SOP Instance UID"},
    400: {"model": ErrorPublic, "description": "Malformed multipart body"},
    401: {"model": ErrorPublic, "description": "Missing or unknown API key"},
    403: {"model": ErrorPublic, "description": "The device's kind may not upload"},
    413: {"model": ErrorPublic, "description": "Too many bytes, or too many pixels"},
    415: {"model": ErrorPublic, "description": "Not multipart/form-data, or the file is not DICOM/PNG/JPEG"},
    422: {"model": ErrorPublic, "description": "Unreadable image: truncated, corrupt, no pixel data, ..."},
}


class _BodyTooLarge(Exception):
    """The request body went past the limit while it was being read."""


async def _refuse(
    ingest: ImageIngest, device: AuthenticatedDevice, code: int, reason: str, payload: bytes | None = None
) -> NoReturn:
    """Log and record a refusal decided here (not by ImageIngest), then answer it."""
    await run_in_threadpool(ingest.reject, "upload", device.name, reason, payload)
    raise HTTPException(code, detail=reason)


async def _read_form(request: Request, limit: int) -> FormData:
    """The multipart form of ``request``, reading at most ``limit`` bytes (+ one network chunk).

    File parts are spooled by Starlette (memory up to 1 MiB, then a temporary file).

    Raises:
        _BodyTooLarge: the body is longer than ``limit``.
    """
    capped = Request(request.scope, capped_receive(request.receive, limit, _BodyTooLarge))
    return await capped.form(max_files=1, max_fields=8, max_part_size=4096)


def _safe_filename(name: str | None) -> str | None:
    """The last path component of a client's file name, printable characters only (kept as metadata)."""
    if not name:
        return None
    base = PurePosixPath(name.replace("\\", "/")).name
    return "".join(c for c in base if c.isprintable())[:255] or None


def _is_image_format(data: bytes) -> bool:
    """Whether ``data`` starts like a format covidet reads: DICOM Part 10, PNG or JPEG."""
    return data[128:132] == b"DICM" or data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC)


def _accept(
    ingest: ImageIngest,
    db: Database,
    data: bytes,
    device: AuthenticatedDevice,
    filename: str | None,
    patient_key: str | None,
) -> tuple[ImageUploadPublic, bool]:
    """Blocking part of an upload (decode check, fsync, commit): runs on the thread pool."""
    result = ingest.accept(
        data,
        channel="upload",
        device_id=device.id,
        source=device.name,
        filename=filename,
        patient_key=patient_key,
    )
    with db.session() as session:
        image = rq.get_image(session, result.image_id)  # with its study and patient
        assert image is not None
        patient = image.study.patient
        body = ImageUploadPublic(
            image_id=result.image_id,
            study_id=result.study_id,
            patient_id=result.patient_id,
            patient_key=patient.patient_key,
            sop_instance_uid=result.sop_instance_uid,
            media_type=image.media_type,
            duplicate=result.duplicate,
            status=image.status,
        )
    return body, result.duplicate


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ImageUploadPublic,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_FORM,
    summary="Upload a chest X-ray",
)
async def upload_image(
    request: Request,
    response: Response,
    device: UploaderDevice,
    ingest: IngestDep,
    db: DatabaseDep,
) -> ImageUploadPublic:
    """Store one DICOM, PNG or JPEG chest X-ray and queue it for analysis.

    The image is acknowledged (201) only after its file is on disk and its rows are committed;
    re-sending it answers 200 with ``duplicate: true`` and the same IDs.
    """
    limit = ingest.max_bytes + FORM_OVERHEAD_BYTES
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        await _refuse(
            ingest,
            device,
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send multipart/form-data with a 'file' part, not {content_type or 'no Content-Type'}",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        # Refused before reading: a client sending 'Expect: 100-continue' (curl does for large
        # files) never has to transmit the body at all.
        await _refuse(
            ingest,
            device,
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"request body of {declared} bytes is more than the limit of {limit} "
            f"({ingest.max_bytes} bytes of image + {FORM_OVERHEAD_BYTES} of form)",
        )

    try:
        form = await _read_form(request, limit)
    except _BodyTooLarge:
        await _refuse(
            ingest,
            device,
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"request body is more than the limit of {limit} bytes "
            f"({ingest.max_bytes} bytes of image + {FORM_OVERHEAD_BYTES} of form)",
        )
    except (MultiPartException, HTTPException) as exc:  # Starlette turns parser errors into 400s
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        await _refuse(ingest, device, status.HTTP_400_BAD_REQUEST, f"malformed multipart body: {detail}")
    except ClientDisconnect:
        await _refuse(ingest, device, status.HTTP_400_BAD_REQUEST, "client disconnected during the upload")

    try:
        upload = form.get("file")
        patient_field = form.get("patient_id")
        if not isinstance(upload, UploadFile):
            reason = (
                "form field 'file' must be a file part (curl: -F file=@image.dcm)"
                if upload is not None
                else "multipart form has no 'file' part"
            )
            await _refuse(ingest, device, status.HTTP_422_UNPROCESSABLE_CONTENT, reason)
        data = await upload.read()
        filename = _safe_filename(upload.filename)
    finally:
        await form.close()

    patient_key: str | None = None
    if isinstance(patient_field, str) and patient_field.strip():
        patient_key = patient_field.strip()
        if len(patient_key) > PATIENT_ID_MAX_LENGTH or not patient_key.isprintable() or "\\" in patient_key:
            await _refuse(
                ingest,
                device,
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"patient_id must be 1-{PATIENT_ID_MAX_LENGTH} printable characters without backslash",
            )
    if not data:
        await _refuse(ingest, device, status.HTTP_422_UNPROCESSABLE_CONTENT, "the uploaded file is empty")

    try:
        body, duplicate = await run_in_threadpool(_accept, ingest, db, data, device, filename, patient_key)
    except IngestRejected as exc:  # already logged and recorded by ImageIngest
        if exc.too_large:
            code = status.HTTP_413_CONTENT_TOO_LARGE
        elif not _is_image_format(data):
            code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
        else:
            code = status.HTTP_422_UNPROCESSABLE_CONTENT
        raise HTTPException(code, detail=exc.reason) from None
    if duplicate:
        response.status_code = status.HTTP_200_OK
    return body
