"""``/api/v1/images``: devices upload chest X-rays; radiologists read them, their AI findings, a PNG
rendering of the pixels and the FHIR or DICOM report.

Reads (``GET /images/{id}``, ``/findings``, ``/pixels.png``, ``/report``) need a radiologist or admin
(:mod:`covidet.api.auth`) and are audited (``read.image``, ``read.findings``, ``read.pixels``,
``read.report``). The rendering uses :func:`covidet.imaging.read_image` (no torch in the API).

``POST /api/v1/images``: a device uploads one chest X-ray (DICOM, PNG or JPEG) over HTTPS.

Contract (see docs/upload.md): multipart/form-data with a ``file`` part and an optional
``patient_id`` field; header ``X-API-Key`` of an uploader or modality device. 201 for a new image,
200 (``duplicate: true``) for one already stored; 401 / 403 / 413 / 415 / 422 with
``{"detail": reason}`` otherwise. Every refusal is logged and kept in rejected_messages.

The body is not parsed by FastAPI (no ``File``/``Form`` parameters) on purpose: that would read it
before the API key is checked and without a size limit. Here the key is checked first, a declared
``Content-Length`` above the limit is refused before one byte is read, and a body without one (or
longer than it claimed) is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, NoReturn

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from PIL import Image as PILImage
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.types import Message

from covidet import DISCLAIMER
from covidet.api.auth import RadiologistUser, record_audit
from covidet.api.deps import AuthenticatedDevice, DatabaseDep, IngestDep, StoreDep, UploaderDevice
from covidet.api.schemas import (
    AUTH_ERRORS,
    MAX_ID,
    AiPublic,
    ErrorPublic,
    IdPath,
    PatientRef,
    error_responses,
)
from covidet.imaging.dicom_writer import dicom_bytes
from covidet.imaging.reader import ImageReadError, read_image
from covidet.ingest.service import ImageIngest, IngestRejected
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.store.models import Image, Patient

__all__ = [
    "FORM_OVERHEAD_BYTES",
    "ErrorPublic",
    "FindingPublic",
    "FindingsPublic",
    "ImagePublic",
    "ImageUploadPublic",
    "render_png",
    "router",
]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/images", tags=["images"])

#: Bytes allowed on top of ``max_image_bytes`` for the multipart envelope (boundaries, part headers,
#: the patient_id field): the most of a request body the server ever reads.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Longest patient identifier: DICOM PatientID is a LO (64 characters), and so is the store's key.
PATIENT_ID_MAX_LENGTH = 64

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageUploadPublic(BaseModel):
    """An accepted upload. IDs are covidet's own; ``patient_key`` is the identifier the device sent
    (the DICOM PatientID, or the ``patient_id`` form field of a PNG/JPEG)."""

    image_id: int
    study_id: int
    patient_id: int
    patient_key: str
    sop_instance_uid: str = Field(description="DICOM SOP Instance UID (derived from the bytes for PNG/JPEG)")
    media_type: str = Field(description="application/dicom, image/png or image/jpeg, detected from content")
    duplicate: bool = Field(description="true when the image was already stored: nothing new was written")
    status: str = Field(description="queued (waiting for analysis), analysed or failed")
    disclaimer: str = DISCLAIMER


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

_ERRORS: dict[int | str, dict[str, Any]] = {
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
    received = 0
    receive = request.receive

    async def capped_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge(received)
        return message

    capped = Request(request.scope, capped_receive)
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
        image = session.get(Image, result.image_id)
        patient = session.get(Patient, result.patient_id)
        assert image is not None and patient is not None
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


# ------------------------------------------------------------------------------ reads (radiologists)


class TriagePublic(BaseModel):
    """The newest triage of an image: priority, the rule that decided it and why."""

    priority: str
    rule: str
    news2_partial: int | None
    reasons: list[str]
    computed_at: datetime


class InferencePublic(BaseModel):
    """One run of one model version on the image (any status)."""

    id: int
    model_name: str
    model_version: str
    status: str
    attempts: int
    error: str | None
    label: str | None
    started_at: datetime
    finished_at: datetime | None


class ReviewSummaryPublic(BaseModel):
    id: int
    reviewer: str
    status: str
    label: str | None
    signed_at: datetime | None


class ImagePublic(BaseModel):
    """An image's metadata, its study and patient, its newest AI result and triage, all inferences
    and all reviews. ``rows`` x ``columns`` are the pixel size (boxes are in these pixels)."""

    id: int
    study_id: int
    study_instance_uid: str
    patient: PatientRef
    sop_instance_uid: str
    sop_class_uid: str | None
    media_type: str
    modality: str | None
    transfer_syntax_uid: str | None
    rows: int | None
    columns: int | None
    size_bytes: int
    original_filename: str | None
    source_device_id: int | None
    received_at: datetime
    status: str
    priority: str | None
    priority_updated_at: datetime | None
    ai: AiPublic | None
    triage: TriagePublic | None
    inferences: list[InferencePublic]
    reviews: list[ReviewSummaryPublic]
    disclaimer: str = DISCLAIMER


class FindingPublic(BaseModel):
    """One AI finding: ``box`` is ``[x1, y1, x2, y2]`` in original-image pixels, top-left origin."""

    id: int
    label: str
    score: float
    box: list[float] = Field(min_length=4, max_length=4)


class FindingsPublic(BaseModel):
    """The findings of one successful inference (the newest unless one was asked for); ``inference_id``
    is null, and ``findings`` empty, when the image has no successful analysis yet."""

    image_id: int
    inference_id: int | None
    model_name: str | None
    model_version: str | None
    decision_rule: str | None
    threshold: float | None
    label: str | None
    probabilities: dict[str, float] | None
    findings: list[FindingPublic]
    disclaimer: str = DISCLAIMER


class ReportFormat(StrEnum):
    FHIR = "fhir"
    DICOM = "dicom"


_READ_ERRORS = AUTH_ERRORS | error_responses(404)


def _not_found(image_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no image with id {image_id}")


@router.get("/{image_id}", response_model=ImagePublic, responses=_READ_ERRORS)
def get_image(request: Request, image_id: IdPath, user: RadiologistUser, db: DatabaseDep) -> ImagePublic:
    """An image's metadata, newest AI result, triage, inferences and reviews."""
    with db.session() as session:
        image = rq.get_image(session, image_id)
        if image is None:
            raise _not_found(image_id)
        inference = rq.latest_inference(session, image_id)
        summary = None
        if inference is not None:
            scores = [f.score for f in inference.findings]
            summary = AiPublic(
                inference_id=inference.id,
                label=inference.label,
                top_score=max(scores) if scores else None,
                probabilities=dict(inference.probabilities or {}),
                model_name=inference.model_name,
                model_version=inference.model_version,
                finished_at=inference.finished_at,
            )
        triage = rq.latest_triage(session, image_id)
        patient = image.study.patient
        body = ImagePublic(
            id=image.id,
            study_id=image.study_id,
            study_instance_uid=image.study.study_instance_uid,
            patient=PatientRef(id=patient.id, patient_key=patient.patient_key, name=patient.name),
            sop_instance_uid=image.sop_instance_uid,
            sop_class_uid=image.sop_class_uid,
            media_type=image.media_type,
            modality=image.modality,
            transfer_syntax_uid=image.transfer_syntax_uid,
            rows=image.rows,
            columns=image.columns,
            size_bytes=image.size_bytes,
            original_filename=image.original_filename,
            source_device_id=image.source_device_id,
            received_at=image.received_at,
            status=image.status,
            priority=image.priority,
            priority_updated_at=image.priority_updated_at,
            ai=summary,
            triage=TriagePublic(
                priority=triage.priority,
                rule=triage.rule,
                news2_partial=triage.news2_partial,
                reasons=list(triage.reasons or []),
                computed_at=triage.computed_at,
            )
            if triage is not None
            else None,
            inferences=[
                InferencePublic(
                    id=i.id,
                    model_name=i.model_name,
                    model_version=i.model_version,
                    status=i.status,
                    attempts=i.attempts,
                    error=i.error,
                    label=i.label,
                    started_at=i.started_at,
                    finished_at=i.finished_at,
                )
                for i in rq.image_inferences(session, image_id)
            ],
            reviews=[
                ReviewSummaryPublic(
                    id=r.id,
                    reviewer=r.reviewer.username,
                    status=r.status,
                    label=r.label,
                    signed_at=r.signed_at,
                )
                for r in rq.image_reviews(session, image_id)
            ],
        )
    record_audit(
        db,
        request,
        "read.image",
        user=user,
        object_type="image",
        object_id=image_id,
        details={"patient_id": body.patient.id},
    )
    return body


@router.get("/{image_id}/findings", response_model=FindingsPublic, responses=_READ_ERRORS)
def get_findings(
    request: Request,
    image_id: IdPath,
    user: RadiologistUser,
    db: DatabaseDep,
    inference_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="an inference of this image; default: the newest successful"),
    ] = None,
) -> FindingsPublic:
    """The AI findings of the image (boxes in original pixels), with model name, version and
    disclaimer."""
    with db.session() as session:
        try:
            inference, findings = rq.image_findings(session, image_id, inference_id=inference_id)
        except rq.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
        body = FindingsPublic(
            image_id=image_id,
            inference_id=inference.id if inference else None,
            model_name=inference.model_name if inference else None,
            model_version=inference.model_version if inference else None,
            decision_rule=inference.decision_rule if inference else None,
            threshold=inference.threshold if inference else None,
            label=inference.label if inference else None,
            probabilities=dict(inference.probabilities or {}) if inference else None,
            findings=[
                FindingPublic(id=f.id, label=f.label, score=f.score, box=[f.x1, f.y1, f.x2, f.y2])
                for f in findings
            ],
        )
    record_audit(
        db,
        request,
        "read.findings",
        user=user,
        object_type="image",
        object_id=image_id,
        details={"inference_id": body.inference_id},
    )
    return body


def render_png(
    path: Path,
    *,
    window_center: float | None = None,
    window_width: float | None = None,
    max_size: int | None = None,
) -> bytes:
    """The X-ray at ``path`` as an 8-bit grayscale PNG.

    The image is first rendered as :func:`covidet.imaging.read_image` displays it (DICOM modality and
    VOI LUT or the file's window, MONOCHROME1 inverted), as grey levels 0-255. ``window_center`` and
    ``window_width`` then re-window those grey levels (default 127.5 and 255: unchanged), e.g. center
    100, width 120 to stretch the lungs' contrast. ``max_size`` shrinks the longer side to at most
    that many pixels (aspect kept), for thumbnails.

    Raises:
        ImageReadError: the stored file cannot be read.
    """
    xray = read_image(path, name=path.name)
    grey = xray.pixels.astype(np.float32) * 255.0
    if window_center is not None or window_width is not None:
        center = 127.5 if window_center is None else window_center
        width = 255.0 if window_width is None else window_width
        grey = (grey - (center - width / 2.0)) / width * 255.0
    picture = PILImage.fromarray(np.round(np.clip(grey, 0.0, 255.0)).astype(np.uint8))  # 2-D uint8: mode L
    if max_size is not None and max(picture.size) > max_size:
        picture.thumbnail((max_size, max_size), PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # speed over size: it is sent once per view
    return buffer.getvalue()


_PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "PNG"}
}


@router.get(
    "/{image_id}/pixels.png",
    response_class=Response,
    responses=_PNG_RESPONSE | _READ_ERRORS | error_responses(409),
)
def get_pixels(
    request: Request,
    image_id: IdPath,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
    window_center: Annotated[
        float | None, Query(ge=0, le=255, allow_inf_nan=False, description="grey level 0-255; default 127.5")
    ] = None,
    window_width: Annotated[
        float | None, Query(ge=1, le=1024, allow_inf_nan=False, description="grey levels; default 255")
    ] = None,
    max_size: Annotated[int | None, Query(ge=16, le=8192)] = None,
) -> Response:
    """The X-ray as a PNG (grey levels of the default display, optionally re-windowed and shrunk).
    409 when the stored file cannot be read."""
    with db.session() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise _not_found(image_id)
        relative = image.path
    try:
        data = render_png(
            store.path(relative), window_center=window_center, window_width=window_width, max_size=max_size
        )
    except (ImageReadError, OSError, ValueError) as exc:
        logger.error("image %d cannot be rendered: %s", image_id, exc)
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"image {image_id} cannot be rendered: {exc}"
        ) from None
    record_audit(
        db,
        request,
        "read.pixels",
        user=user,
        object_type="image",
        object_id=image_id,
        details={"window_center": window_center, "window_width": window_width, "max_size": max_size},
    )
    # Patient data: never kept by shared caches or the browser's disk cache.
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, no-store"})


_REPORT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "FHIR R4B DiagnosticReport (format=fhir) or DICOM Secondary Capture (format=dicom)",
        "content": {
            "application/fhir+json": {"schema": {"type": "object"}},
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.get(
    "/{image_id}/report",
    response_class=Response,
    responses=_REPORT_RESPONSE | _READ_ERRORS | error_responses(409),
)
def get_report(
    request: Request,
    image_id: IdPath,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
    format: Annotated[
        ReportFormat, Query(description="fhir (JSON) or dicom (Part 10 file)")
    ] = ReportFormat.FHIR,
) -> Response:
    """The preliminary AI report of the image: FHIR ``DiagnosticReport`` JSON, or a DICOM Secondary
    Capture with the boxes burned in. 409 while the image has no successful analysis."""
    from covidet.assessment.reports import dicom_secondary_capture, fhir_diagnostic_report
    from covidet.worker.reporting import ReportNotAvailable, build_report  # torch-free

    with db.session() as session:
        if session.get(Image, image_id) is None:
            raise _not_found(image_id)
    try:
        ctx, pixels, source = build_report(db, store, image_id)
    except ReportNotAvailable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    except (ImageReadError, OSError) as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"image {image_id} cannot be read: {exc}"
        ) from None
    if format is ReportFormat.FHIR:
        content = json.dumps(fhir_diagnostic_report(ctx), ensure_ascii=False).encode()
        media_type, filename = "application/fhir+json", f"report-{image_id}.json"
    else:
        content = dicom_bytes(dicom_secondary_capture(ctx, pixels, source=source))
        media_type, filename = "application/dicom", f"report-{image_id}.dcm"
    record_audit(
        db,
        request,
        "read.report",
        user=user,
        object_type="image",
        object_id=image_id,
        details={"format": format.value, "report_id": ctx.report_id},
    )
    return Response(
        content,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "private, no-store",
        },
    )
