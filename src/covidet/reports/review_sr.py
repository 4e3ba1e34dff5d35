"""A signed radiologist review as a new DICOM SR (TID 1500) that refers to the AI SR it judged.

:func:`load_signed_review` reads a signed review from the store into plain data
(:class:`ReviewFacts`); :func:`review_structured_report` turns it into a Comprehensive 3D SR with

* the radiologist as **person** observer (login name, role "Reviewer"), and as verifying observer:
  the document is final and verified, as a signed review is;
* one TID 1501 group for the image: the reviewer's class (121073 "Impression") and the decision on the
  AI's image-level class (``99COVIDET`` "review-action": confirm when the classes agree, else reject);
* one TID 1410 group per reviewed box: its POLYLINE, its class and the reviewer's action on it
  (confirm / reject / relabel / add / delete);
* the AI SR (UIDs from :func:`covidet.reports.dicom_sr.ai_sr_uids`) in the Predecessor Documents
  Sequence and, with the X-ray, in the Current Requested Procedure Evidence Sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from covidet import DISCLAIMER, __version__
from covidet.domain import Box, Label
from covidet.reports.context import ReportContext
from covidet.store.analysis_queries import get_inference
from covidet.store.db import Database
from covidet.store.models import Review, ReviewAction, ReviewFinding, ReviewStatus
from covidet.store.review_store import get_review, newest_signed_review_id

from .dicom_sr import (
    COMPREHENSIVE_3D_SR_SOP_CLASS,
    ai_sr_uids,
    box_region,
    require_dicom_source,
    source_group_reference,
    sr_document,
    statement_container,
    tracking_identifier,
)
from .sr_codes import IMPRESSION, LABEL_CONCEPTS, PROCEDURE_CHEST_XRAY, REVIEW_ACTION, REVIEW_ACTION_CONCEPTS

__all__ = [
    "REVIEW_SR_SERIES_NUMBER",
    "ReviewFacts",
    "ReviewNotAvailable",
    "ReviewedBox",
    "load_signed_review",
    "review_sr_uids",
    "review_structured_report",
]

#: Series number of review SRs: after the AI SR's 9002.
REVIEW_SR_SERIES_NUMBER = 9003


class ReviewNotAvailable(LookupError):
    """No such review, it is not signed, it judged no AI result, or the image has no signed review."""


@dataclass(frozen=True)
class ReviewedBox:
    """One action of the review; ``box`` in original-image pixels (``None`` only for a box-less row)."""

    action: ReviewAction
    label: Label | None
    box: Box | None


@dataclass(frozen=True)
class ReviewFacts:
    """A signed review as plain data: who, when, the image-level class, the box actions, and the AI
    result it judged (``inference_id`` and that inference's class ``ai_label``)."""

    review_id: int
    image_id: int
    inference_id: int
    ai_label: Label | None
    reviewer: str
    label: Label
    comment: str | None
    signed_at: datetime
    boxes: list[ReviewedBox]
    #: The reviewer's earlier signed review of the image that this one amends (an addendum), or ``None``.
    amends_review_id: int | None = None


def _box(row: ReviewFinding) -> Box | None:
    """The reviewed box of ``row``; ``None`` when it has none (a confirm, reject or delete)."""
    if row.x1 is None or row.y1 is None or row.x2 is None or row.y2 is None:
        return None
    return Box(row.x1, row.y1, row.x2, row.y2)


def _facts(review: Review, ai_label: str | None) -> ReviewFacts:
    if review.status != ReviewStatus.SIGNED.value or review.signed_at is None or review.label is None:
        raise ReviewNotAvailable(f"review {review.id} is not signed: only a signed review becomes an SR")
    if review.inference_id is None:
        raise ReviewNotAvailable(f"review {review.id} judged no AI result: there is no AI SR to refer to")
    boxes = [
        ReviewedBox(
            action=ReviewAction(row.action),
            label=Label(row.label) if row.label else None,
            box=_box(row),
        )
        for row in review.findings
    ]
    return ReviewFacts(
        review_id=review.id,
        image_id=review.image_id,
        inference_id=review.inference_id,
        ai_label=Label(ai_label) if ai_label else None,
        reviewer=review.reviewer.username,
        label=Label(review.label),
        comment=review.comment,
        signed_at=review.signed_at,
        boxes=boxes,
        amends_review_id=review.amends_review_id,
    )


def load_signed_review(db: Database, *, image_id: int, review_id: int | None = None) -> ReviewFacts:
    """The signed review ``review_id`` of ``image_id``, or the image's newest signed review.

    Raises:
        ReviewNotAvailable: no such review of this image, not signed, or no AI result reviewed.
    """
    with db.session() as session:
        if review_id is None:
            review_id = newest_signed_review_id(session, image_id)
            if review_id is None:
                raise ReviewNotAvailable(f"image {image_id} has no signed review")
        review = get_review(session, review_id)
        if review is None or review.image_id != image_id:
            raise ReviewNotAvailable(f"image {image_id} has no review with id {review_id}")
        inference = get_inference(session, review.inference_id) if review.inference_id is not None else None
        return _facts(review, inference.label if inference is not None else None)


def _sr_reference(ctx: ReportContext, series_uid: str, sop_uid: str) -> Dataset:
    """What a review SR needs of another SR of the study (the AI SR, or the review SR an addendum
    amends): its four UIDs, recomputed from ids, never stored."""
    reference = Dataset()
    reference.SOPClassUID = COMPREHENSIVE_3D_SR_SOP_CLASS
    reference.SOPInstanceUID = sop_uid
    reference.StudyInstanceUID = ctx.study_instance_uid
    reference.SeriesInstanceUID = series_uid
    return reference


def review_sr_uids(review_id: int, uid_prefix: str = PYDICOM_ROOT_UID) -> tuple[str, str]:
    """(Series, SOP Instance) UIDs of the SR of review ``review_id``: derived, so the same signed review
    always gives the same SR and an addendum can name the SR of the review it amends."""
    key = f"review-{review_id}"
    return (
        generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "review-sr-series", key]),
        generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "review-sr-instance", key]),
    )


def review_structured_report(
    ctx: ReportContext, source: Dataset | None, facts: ReviewFacts, *, uid_prefix: str = PYDICOM_ROOT_UID
) -> hd.sr.Comprehensive3DSR:
    """The signed review ``facts`` of the X-ray ``source`` (patient and study of ``ctx``) as a final,
    verified TID 1500 Comprehensive 3D SR referring to the AI SR of ``facts.inference_id``.

    Raises:
        SourceNotDicom: the image was not received as DICOM.
    """
    source = require_dicom_source(ctx, source)
    key = f"review-{facts.review_id}"
    # covidet knows its users by login name only: the name is that login as the family-name component.
    person_name = f"{facts.reviewer}^"
    person = hd.sr.PersonObserverIdentifyingAttributes(
        name=person_name, login_name=facts.reviewer, role_in_procedure=codes.NCIt.Reviewer
    )
    context = hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Person, observer_identifying_attributes=person
        )
    )
    image_decision = ReviewAction.CONFIRM if facts.ai_label == facts.label else ReviewAction.REJECT
    groups: list = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking_identifier(
                key, "image", "reviewed image-level assessment", uid_prefix
            ),
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(IMPRESSION, LABEL_CONCEPTS[facts.label]),
                hd.sr.QualitativeEvaluation(REVIEW_ACTION, REVIEW_ACTION_CONCEPTS[image_decision]),
            ],
            source_images=[source_group_reference(source)],
        )
    ]
    for index, item in enumerate((b for b in facts.boxes if b.box is not None), start=1):
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking_identifier(
                    key, f"box-{index}", f"reviewed box {index}", uid_prefix
                ),
                referenced_region=box_region(item.box, source),  # type: ignore[arg-type]
                finding_type=LABEL_CONCEPTS[item.label] if item.label is not None else None,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(REVIEW_ACTION, REVIEW_ACTION_CONCEPTS[item.action])
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=PROCEDURE_CHEST_XRAY, imaging_measurements=groups
    )
    signed = facts.signed_at if facts.signed_at.tzinfo is None else facts.signed_at.astimezone(UTC)
    texts = [
        f"Radiologist review {facts.review_id} of AI result {facts.inference_id} of image "
        f"{facts.image_id}, signed {signed:%Y-%m-%d %H:%M} UTC."
    ]
    if facts.amends_review_id is not None:
        texts.append(f"Addendum to review {facts.amends_review_id}, whose SR it amends.")
    if facts.comment:
        texts.append(facts.comment)
    texts.append(f"Recorded with research software: {DISCLAIMER.upper()}.")
    report[0].ContentSequence.append(statement_container(texts))

    ai_sr = _sr_reference(ctx, *ai_sr_uids(facts.image_id, facts.inference_id, uid_prefix))
    predecessors = [ai_sr]
    if facts.amends_review_id is not None:
        predecessors.append(_sr_reference(ctx, *review_sr_uids(facts.amends_review_id, uid_prefix)))
    series_uid, sop_uid = review_sr_uids(facts.review_id, uid_prefix)
    document = sr_document(
        report,
        evidence=[source, ai_sr],
        series_uid=series_uid,
        sop_uid=sop_uid,
        series_number=REVIEW_SR_SERIES_NUMBER,
        series_description="Radiologist review of AI result NOT FOR CLINICAL USE",
        issued_at=facts.signed_at,
        software=(f"covidet {__version__}",),
        private_codes=True,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=person_name,
        verifying_organization=str(source.get("InstitutionName") or "covidet"),
        previous_versions=predecessors,
    )
    # The signature time, not the build time, is when the review was verified.
    document.VerifyingObserverSequence[0].VerificationDateTime = signed.strftime("%Y%m%d%H%M%S")
    return document
