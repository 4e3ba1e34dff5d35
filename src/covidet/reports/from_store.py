"""Reports from the store: gather an analysed image's facts into a
:class:`~covidet.reports.context.ReportContext`, write FHIR or DICOM (Secondary Capture, or a
TID 1500 SR through :mod:`covidet.reports`), forward to a PACS (:mod:`covidet.pacs.send`).
Used by the worker (forward after analysis), ``covidet report``, the API's report routes and the
archive; ``covidet.worker.reporting`` keeps the old import path.

The report describes the newest successful inference of the image and its newest triage record
(with the vital signs that triage used).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from covidet.config import Settings
from covidet.domain import Priority
from covidet.imaging.reader import read_image
from covidet.pacs.send import send_to_pacs
from covidet.reports.context import ReportContext
from covidet.reports.dicom_sc import dicom_secondary_capture
from covidet.reports.writer import write_report
from covidet.store import analysis_queries as rows
from covidet.store.db import Database
from covidet.store.files import ImageStore
from covidet.store.study_queries import get_image, latest_inference, latest_triage

__all__ = [
    "ReportNotAvailable",
    "build_report",
    "forward_report",
    "report_context",
    "resolve_image_id",
    "write_image_report",
]

logger = logging.getLogger("covidet.worker.reporting")  # the logger name these lines always had


class ReportNotAvailable(LookupError):
    """No such image or study, or it has no successful analysis yet (message says which)."""


def resolve_image_id(db: Database, image_or_study: str) -> int:
    """An image id (digits) as is; a Study Instance UID (dotted) → its newest analysed image."""
    text = image_or_study.strip()
    with db.session() as session:
        if text.isdigit():
            if get_image(session, int(text)) is None:
                raise ReportNotAvailable(f"no image with id {text}")
            return int(text)
        image_id = rows.newest_analysed_image_of_study(session, text)
    if image_id is None:
        raise ReportNotAvailable(f"no analysed image in a study with UID {text!r} (or no such study)")
    return int(image_id)


def build_report(
    db: Database, store: ImageStore, image_id: int
) -> tuple[ReportContext, np.ndarray, Dataset | None]:
    """The report context of an analysed image, its display pixels (H, W) float32 in [0, 1], and
    its source DICOM header (``None`` for PNG/JPEG uploads)."""
    ctx, path, is_dicom = report_context(db, store, image_id)
    xray = read_image(path, name=f"image {image_id}")
    source = dcmread(path, stop_before_pixels=True) if is_dicom else None
    return ctx, xray.pixels, source


def report_context(db: Database, store: ImageStore, image_id: int) -> tuple[ReportContext, Path, bool]:
    """The report context of an analysed image, the path of its stored file and whether that file
    is DICOM; nothing is decoded.

    Raises:
        ReportNotAvailable: no such image, or no successful analysis yet.
    """
    with db.session() as session:
        image = get_image(session, image_id)
        if image is None:
            raise ReportNotAvailable(f"no image with id {image_id}")
        inference = latest_inference(session, image_id)
        if inference is None:
            raise ReportNotAvailable(
                f"image {image_id} has no successful analysis yet (status {image.status})"
            )
        triage = latest_triage(session, image_id)
        patient = image.study.patient
        vitals_rows = rows.vital_rows_by_ids(session, triage.vital_sign_ids if triage is not None else [])
        ctx = ReportContext(
            patient_key=patient.patient_key,
            patient_name=patient.name,
            study_instance_uid=image.study.study_instance_uid,
            source_sop_instance_uid=image.sop_instance_uid
            if image.media_type == "application/dicom"
            else None,
            source_sop_class_uid=image.sop_class_uid,
            accession_number=image.study.accession_number,
            image_id=image.id,
            model_name=inference.model_name,
            model_version=inference.model_version,
            decision_rule=inference.decision_rule or "max-score-v1",
            threshold=float(inference.threshold or 0.5),
            findings=rows.inference_findings(inference),
            assessment=rows.inference_assessment(inference),
            priority=Priority(triage.priority) if triage is not None else None,
            reasons=list(triage.reasons) if triage is not None else [],
            vitals=[rows.as_vital_sign(v, patient.patient_key) for v in vitals_rows],
            issued_at=datetime.now(UTC),
            # Stable per (image, inference, triage): the same report twice is the same object.
            report_id=f"covidet-{image.id}-{inference.id}-{triage.id if triage is not None else 0}",
            inference_id=inference.id,
        )
        path = store.path(image.path)
        is_dicom = image.media_type == "application/dicom"
    return ctx, path, is_dicom


def write_image_report(db: Database, store: ImageStore, image_id: int, fmt: str, out: Path) -> Path:
    """Write the report of ``image_id`` as ``fmt``: ``fhir`` JSON, ``dicom`` Secondary Capture, ``sr``
    (the AI result as a TID 1500 DICOM SR) or ``sr-review`` (the newest signed review as an SR that
    refers to the AI SR; see ``docs/dicom-sr.md``).

    Raises:
        ReportNotAvailable: no analysis, no signed review (``sr-review``), or no DICOM source (SRs).
    """
    ctx, pixels, source = build_report(db, store, image_id)
    if fmt in ("sr", "sr-review"):
        from covidet.reports import (
            ReviewNotAvailable,
            SourceNotDicom,
            ai_structured_report,
            load_signed_review,
            review_structured_report,
            write_sr,
        )

        try:
            if fmt == "sr":
                return write_sr(ai_structured_report(ctx, source), out)
            facts = load_signed_review(db, image_id=image_id)
            return write_sr(review_structured_report(ctx, source, facts), out)
        except (SourceNotDicom, ReviewNotAvailable) as exc:
            raise ReportNotAvailable(str(exc)) from exc
    return write_report(ctx, fmt, out, xray_pixels=pixels, source=source)  # type: ignore[arg-type]


def forward_report(db: Database, store: ImageStore, image_id: int, settings: Settings) -> int:
    """Send the DICOM reports of ``image_id`` to the PACS of ``settings`` (C-STORE) and return the
    status of the Secondary Capture.

    The Secondary Capture goes first (every viewer shows it); then, when the image came as DICOM, the
    AI result as a TID 1500 SR (``docs/dicom-sr.md``), whose status is logged. A PNG/JPEG upload (or a
    header without a series UID) has no DICOM image for an SR to refer to: it gets the capture only.
    """
    from covidet.reports import SourceNotDicom, ai_structured_report

    def send(kind: str, dataset: Dataset) -> int:
        return send_to_pacs(settings, dataset, what=f"report ({kind}) of image {image_id}")

    ctx, pixels, source = build_report(db, store, image_id)
    status = send("secondary capture", dicom_secondary_capture(ctx, pixels, source=source))
    try:
        sr = ai_structured_report(ctx, source)
    except SourceNotDicom as exc:
        logger.info("no SR of image %d forwarded: %s", image_id, exc)
        return status
    send("SR", sr)
    return status
