"""``/api/v1/images``: radiologists read chest X-rays, their AI findings, a PNG rendering of the
pixels and the FHIR or DICOM report.

Reads (``GET /images/{id}``, ``/findings``, ``/pixels.png``, ``/report``) need a radiologist or admin
(:mod:`covidet.api.auth`) and are audited (``read.image``, ``read.findings``, ``read.pixels``,
``read.report``). The rendering (:mod:`covidet.api.rendering`) uses :func:`covidet.imaging.read_image`
(no torch in the API).

The device upload, ``POST /api/v1/images``, is in :mod:`covidet.api.routes.uploads`, the response
schemas in :mod:`covidet.api.schemas_images`; their public names are re-exported here, where they
were first defined.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from covidet.api.auth import RadiologistUser, record_audit
from covidet.api.deps import DatabaseDep, StoreDep
from covidet.api.rendering import render_png
from covidet.api.routes.uploads import FORM_OVERHEAD_BYTES, PATIENT_ID_MAX_LENGTH
from covidet.api.schemas import (
    AUTH_ERRORS,
    MAX_ID,
    AiPublic,
    ErrorPublic,
    IdPath,
    OpenApiResponses,
    PatientRef,
    error_responses,
)
from covidet.api.schemas_images import (
    FindingPublic,
    FindingsPublic,
    ImagePublic,
    ImageUploadPublic,
    InferencePublic,
    ReportFormat,
    ReviewSummaryPublic,
    TriagePublic,
)
from covidet.imaging.dicom_writer import dicom_bytes
from covidet.imaging.reader import ImageReadError
from covidet.store import review_queries as rq

__all__ = [
    "FORM_OVERHEAD_BYTES",
    "PATIENT_ID_MAX_LENGTH",
    "ErrorPublic",
    "FindingPublic",
    "FindingsPublic",
    "ImagePublic",
    "ImageUploadPublic",
    "InferencePublic",
    "ReportFormat",
    "ReviewSummaryPublic",
    "TriagePublic",
    "render_png",
    "router",
]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/images", tags=["images"])


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
            patient=PatientRef.of(patient),
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


_PNG_RESPONSE: OpenApiResponses = {
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
        image = rq.get_image(session, image_id)
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


_REPORT_RESPONSE: OpenApiResponses = {
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
    from covidet.reports.from_store import ReportNotAvailable, build_report  # torch-free

    with db.session() as session:
        if rq.get_image(session, image_id) is None:
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
