"""Keep the SRs covidet makes in the study of their X-ray, so DICOMweb and Query/Retrieve serve them.

:func:`archive_ai_sr` is called by the analysis after an image is assessed and triaged;
:func:`archive_review_sr` when a review is signed. Both are idempotent (the SR UIDs are derived from
the image, inference and review ids, see :mod:`covidet.reports`), write the file into the
content-addressed image store first and record it after, and never raise for a missing source: they
return ``None`` with a log line instead, because an archive copy must never fail an analysis or a
signature.
"""

from __future__ import annotations

import dataclasses
import logging

from pydicom import dcmread
from pydicom.dataset import Dataset

from covidet.archive.instances import upload_as_dicom
from covidet.config import Settings
from covidet.pacs.send import send_to_pacs
from covidet.reports import (
    ReviewNotAvailable,
    SourceNotDicom,
    ai_structured_report,
    load_signed_review,
    review_structured_report,
    sr_bytes,
)
from covidet.reports.context import ReportContext
from covidet.reports.from_store import ReportNotAvailable, report_context
from covidet.store import archive_queries
from covidet.store.db import Database
from covidet.store.files import ImageStore
from covidet.store.models import DicomObject, DicomObjectKind
from covidet.store.review_store import get_review
from covidet.store.study_queries import get_image

__all__ = ["archive_ai_sr", "archive_review_sr", "backfill_series_uids", "publish_review_sr"]

logger = logging.getLogger(__name__)


def _context_and_source(db: Database, store: ImageStore, image_id: int) -> tuple[ReportContext, Dataset]:
    """The report context and the source header of ``image_id``; for an upload, the header of the DX
    object it is served as (so the SR refers to an instance DICOMweb actually serves)."""
    ctx, path, is_dicom = report_context(db, store, image_id)
    if is_dicom:
        return ctx, dcmread(path, stop_before_pixels=True)
    source = upload_as_dicom(db, store, image_id)
    del source.PixelData
    ctx = dataclasses.replace(
        ctx, source_sop_instance_uid=str(source.SOPInstanceUID), source_sop_class_uid=str(source.SOPClassUID)
    )
    return ctx, source


def _keep(
    db: Database,
    store: ImageStore,
    document: Dataset,
    *,
    kind: DicomObjectKind,
    image_id: int,
    inference_id: int | None = None,
    review_id: int | None = None,
) -> DicomObject:
    """Write ``document`` into the image store, then record it in the study of ``image_id`` (once per
    SOP Instance UID); returns its record, detached from the session."""
    data = sr_bytes(document)
    stored = store.put(data, "application/dicom")
    with db.session(write=True) as session:
        image = get_image(session, image_id)
        assert image is not None
        obj = archive_queries.add_dicom_object(
            session,
            DicomObject(
                kind=kind.value,
                sop_instance_uid=str(document.SOPInstanceUID),
                sop_class_uid=str(document.SOPClassUID),
                series_instance_uid=str(document.SeriesInstanceUID),
                modality="SR",
                study_id=image.study_id,
                image_id=image_id,
                content_sha256=stored.sha256,
                path=stored.path,
                size_bytes=stored.size_bytes,
                inference_id=inference_id,
                review_id=review_id,
            ),
        )
        session.expunge(obj)
    return obj


def archive_ai_sr(db: Database, store: ImageStore, image_id: int) -> DicomObject | None:
    """Make the AI SR of the newest successful inference of ``image_id`` and keep it; returns its
    record (the existing one when it was kept before) or ``None`` when there is no result to report."""
    try:
        ctx, source = _context_and_source(db, store, image_id)
        document = ai_structured_report(ctx, source)
    except (ReportNotAvailable, SourceNotDicom) as exc:
        logger.info("no AI SR kept for image %d: %s", image_id, exc)
        return None
    obj = _keep(
        db, store, document, kind=DicomObjectKind.AI_SR, image_id=image_id, inference_id=ctx.inference_id
    )
    logger.info("AI SR %s of image %d kept (%d bytes)", obj.sop_instance_uid, image_id, obj.size_bytes)
    return obj


def archive_review_sr(db: Database, store: ImageStore, review_id: int) -> DicomObject | None:
    """Make the SR of the signed review ``review_id`` (referring to the AI SR) and keep it; ``None``
    when the review is not signed or has no AI result to refer to."""
    with db.session() as session:
        review = get_review(session, review_id)
        image_id = review.image_id if review is not None else None
    if image_id is None:
        logger.info("no review SR kept: no review %d", review_id)
        return None
    try:
        facts = load_signed_review(db, image_id=image_id, review_id=review_id)
        ctx, source = _context_and_source(db, store, image_id)
        document = review_structured_report(ctx, source, facts)
    except (ReportNotAvailable, ReviewNotAvailable, SourceNotDicom) as exc:
        logger.info("no review SR kept for review %d: %s", review_id, exc)
        return None
    obj = _keep(db, store, document, kind=DicomObjectKind.REVIEW_SR, image_id=image_id, review_id=review_id)
    logger.info("review SR %s of review %d kept", obj.sop_instance_uid, review_id)
    return obj


def publish_review_sr(
    db: Database, store: ImageStore, settings: Settings, review_id: int
) -> DicomObject | None:
    """What signing a review does with DICOM: keep its SR in the study (:func:`archive_review_sr`) and,
    when a PACS is configured (``settings.pacs_host``), send it there by C-STORE, as the AI SR is sent
    after the analysis. A PACS refusal or outage is logged, never raised: the signature stands."""
    obj = archive_review_sr(db, store, review_id)
    if obj is None or not settings.pacs_host:
        return obj
    try:
        send_to_pacs(settings, dcmread(store.path(obj.path)), what=f"review SR of review {review_id}")
    except Exception as exc:
        logger.error("review SR of review %d not forwarded to the PACS: %s", review_id, exc)
    return obj


def backfill_series_uids(db: Database, store: ImageStore) -> int:
    """Record the Series Instance UID of DICOM images stored before it was recorded (revision 0004),
    read from their headers; returns how many were filled. Unreadable files are logged and skipped."""
    filled = 0
    while True:
        with db.session() as session:
            pending = archive_queries.images_without_series_uid(session)
        if not pending:
            return filled
        updates: dict[int, str | None] = {}
        for image_id, relative in pending:
            try:
                header = dcmread(
                    store.path(relative), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]
                )
                updates[image_id] = str(header.get("SeriesInstanceUID") or "") or None
            except Exception as exc:  # a missing or damaged file must not stop the start
                logger.warning("series UID of image %d not readable (%s); derived instead", image_id, exc)
                updates[image_id] = None
        with db.session(write=True) as session:
            archive_queries.record_series_uids(session, updates)
        filled += len(updates)
