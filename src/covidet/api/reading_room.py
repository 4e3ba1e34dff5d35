"""The worklist by study, as the API and the web app show it: schemas, the presenter, and the one name
and explanation of the AI score.

**One score per finding.** An image's AI finding is its decided class (``covid19``, ``pneumonia`` or
``normal``) with one number, the **AI score**: the image-level score of that class, which the decision
rule derives from the detector's box scores (``covidet.detection.decision``). It is the number the
worklist, the viewer, the triage reasons and the reports show. The score of a single box (its
"box score") is shown only on that box. Neither is a calibrated probability: :func:`ai_score_help`
says so wherever the score is shown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request

from covidet import DISCLAIMER
from covidet.api.auth import AuthenticatedUser, audit_in
from covidet.api.demographics import Demographics, dicom_demographics
from covidet.api.schemas import (
    AiPublic,
    PageMeta,
    PatientRef,
    VitalValuePublic,
    ai_public,
    vitals_public,
)
from covidet.ingest.storage import ImageStore
from covidet.store import reading_room as rr
from covidet.store.db import Database

__all__ = [
    "AI_SCORE_NAME",
    "BOX_SCORE_HELP",
    "ClaimPublic",
    "StudyImagePublic",
    "StudyPublic",
    "StudyReviewPublic",
    "StudyWorklistPublic",
    "ai_score_help",
    "announce",
    "claim",
    "release",
    "study_public",
    "take_next",
]

logger = logging.getLogger(__name__)

#: The name of the image-level score everywhere it is shown.
AI_SCORE_NAME = "AI score"
#: What a box's own score is (shown only on the box).
BOX_SCORE_HELP = (
    "Box score: the detector's confidence in this one box (0-1). Not a calibrated probability; "
    "the image's AI score is derived from the box scores by the decision rule."
)


def announce(app: Starlette, event: Mapping[str, object]) -> None:
    """Publish a reading-room event (``claim``, ``reviewed``) on the runtime's event channel, so that
    open worklists refresh (docs/web.md, live updates); nothing when the app has no runtime. Never
    raises: the database holds the truth, a lost event only delays a refresh."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is None:
        return
    try:
        runtime.events.publish(event)
    except Exception:  # publishers log their own failures; this guards any other
        logger.exception("could not publish the %s event", event.get("type"))


def ai_score_help(label: str | None, rule: str | None = None) -> str:
    """The tooltip of an AI score: what it measures, and that it is not a calibrated probability."""
    what = f"the image-level score of {label}" if label else "the image-level score of the decided class"
    how = f" by the decision rule {rule}" if rule else " by the model's decision rule"
    return (
        f"{AI_SCORE_NAME}: {what} (0-1), derived from the detector's box scores{how}. "
        "It ranks images; it is not a calibrated probability of disease. Not for clinical use."
    )


class ClaimPublic(BaseModel):
    """Who is reading the study ("being read by"), since when."""

    user_id: int
    username: str
    claimed_at: datetime


class StudyReviewPublic(BaseModel):
    """Reviews of one image: ``state`` as in the image worklist; ``reports`` are the first signed
    review of each radiologist; ``addenda`` counts later signatures, each naming its report."""

    state: str
    reports: list[dict[str, object]] = Field(
        default_factory=list, description="[{review_id, reviewer, label, signed_at}], oldest first"
    )
    addenda: int = 0
    drafts: list[str] = Field(default_factory=list, description="reviewers with a draft")


class StudyImagePublic(BaseModel):
    image_id: int
    received_at: datetime
    status: str
    priority: str | None
    modality: str | None
    thumbnail_url: str = Field(description="a small PNG of the image (``pixels.png?max_size=96``)")
    reasons: list[str]
    ai: AiPublic | None
    review: StudyReviewPublic
    alert_ids: list[int] = Field(description="unacknowledged alerts of this image")


class StudyPublic(BaseModel):
    """One study to read: its images, the most urgent priority among them and the reason that decided
    it (``deciding_image_id``), how long it has waited, the patient's latest vitals, the claim."""

    study_id: int
    study_instance_uid: str
    accession_number: str | None
    description: str | None
    study_datetime: datetime | None
    patient: PatientRef
    patient_sex: str | None = Field(None, description="M, F or other, from the DICOM header; null if unknown")
    patient_age: str | None = Field(None, description="e.g. '64 y', from the DICOM header; null if unknown")
    priority: str | None
    deciding_image_id: int
    reason: str | None = Field(description="the deciding reason (first reason of the deciding image)")
    ai: AiPublic | None = Field(description="the deciding image's AI result")
    first_received_at: datetime
    waiting_seconds: int = Field(description="since the first image arrived, while an image is unread")
    urgent_alert: bool = Field(description="an urgent alert of this study waits for acknowledgement")
    images: list[StudyImagePublic]
    unread_image_ids: list[int]
    vitals: dict[str, VitalValuePublic]
    vitals_abnormal: bool
    claim: ClaimPublic | None
    disclaimer: str = DISCLAIMER


class StudyWorklistPublic(PageMeta):
    items: list[StudyPublic]


def _review_public(reviews: rr.ImageReviews) -> StudyReviewPublic:
    return StudyReviewPublic(
        state=reviews.state,
        reports=[
            {"review_id": rid, "reviewer": who, "label": label, "signed_at": at}
            for rid, who, label, at in reviews.reports
        ],
        addenda=reviews.addenda,
        drafts=list(reviews.drafts),
    )


def _demographics(row: rr.StudyRow, store: ImageStore | None) -> Demographics:
    """Sex and age from the first DICOM image of the study that states them."""
    if store is None:
        return Demographics()
    for image in row.images:
        found = dicom_demographics(store.path(image.path), image.media_type)
        if found.sex or found.age:
            return found
    return Demographics()


def study_public(
    row: rr.StudyRow, *, now: datetime | None = None, store: ImageStore | None = None
) -> StudyPublic:
    """The public form of a :class:`covidet.store.reading_room.StudyRow` (the web app reuses it);
    with the image ``store`` (:class:`covidet.ingest.storage.ImageStore`), the patient's sex and age
    come from the DICOM header."""
    now = now or datetime.now(UTC)
    demographics = _demographics(row, store)
    deciding = row.deciding
    vitals = vitals_public(row.vitals)
    unread = row.unread_images
    return StudyPublic(
        study_id=row.study_id,
        study_instance_uid=row.study_instance_uid,
        accession_number=row.accession_number,
        description=row.description,
        study_datetime=row.study_datetime,
        patient=PatientRef(id=row.patient_id, patient_key=row.patient_key, name=row.patient_name),
        patient_sex=demographics.sex,
        patient_age=demographics.age,
        priority=row.priority,
        deciding_image_id=row.deciding_image_id,
        reason=deciding.reasons[0] if deciding.reasons else None,
        ai=ai_public(deciding.ai),
        first_received_at=row.first_received_at,
        waiting_seconds=max(0, int((now - row.first_received_at).total_seconds())) if unread else 0,
        urgent_alert=bool(row.alert_ids),
        images=[
            StudyImagePublic(
                image_id=i.image_id,
                received_at=i.received_at,
                status=i.status,
                priority=i.priority,
                modality=i.modality,
                thumbnail_url=f"/api/v1/images/{i.image_id}/pixels.png?max_size=96",
                reasons=i.reasons,
                ai=ai_public(i.ai),
                review=_review_public(i.reviews),
                alert_ids=i.alert_ids,
            )
            for i in row.images
        ],
        unread_image_ids=unread,
        vitals=vitals,
        vitals_abnormal=any(v.abnormal for v in vitals.values()),
        claim=ClaimPublic(
            user_id=row.claim.user_id, username=row.claim.username, claimed_at=row.claim.claimed_at
        )
        if row.claim
        else None,
    )


# ------------------------------------------------------------------ claims, as the API and pages do them


def claim(db: Database, request: Request, user: AuthenticatedUser, study_id: int, via: str) -> rr.ClaimInfo:
    """Claim a study for ``user``: stored and audited (``study.claim``) in one transaction, then
    announced to open worklists. Raises the store's :class:`~covidet.store.review_queries.QueryError`."""
    with db.session(write=True) as session:
        held = rr.claim_study(session, study_id, user_id=user.id)
        _audit_study(session, request, user, "study.claim", study_id, {"via": via})
    _announce_claim(request, study_id, held.username)
    return held


def release(
    db: Database, request: Request, user: AuthenticatedUser, study_id: int, via: str
) -> rr.ClaimInfo | None:
    """Release a study's claim (``user``'s own, or anyone's for an admin): audited (``study.release``)
    and announced when there was one. Raises the store's ``QueryError`` (404, 403)."""
    with db.session(write=True) as session:
        released = rr.release_claim(session, study_id, user_id=user.id, admin=user.is_admin)
        if released is not None:
            _audit_study(
                session, request, user, "study.release", study_id, {"via": via, "holder": released.username}
            )
    if released is not None:
        _announce_claim(request, study_id, None)
    return released


def take_next(db: Database, request: Request, user: AuthenticatedUser, via: str) -> rr.StudyRow | None:
    """Claim the next study to read for ``user`` (:func:`covidet.store.reading_room.next_study`),
    audited as ``study.claim`` with ``"next": true`` and announced; ``None`` when nothing is left."""
    with db.session(write=True) as session:
        row = rr.next_study(session, user_id=user.id)
        if row is None:
            return None
        _audit_study(session, request, user, "study.claim", row.study_id, {"via": via, "next": True})
    _announce_claim(request, row.study_id, user.username)
    return row


def _audit_study(
    session: Session,
    request: Request,
    user: AuthenticatedUser,
    action: str,
    study_id: int,
    details: dict[str, object],
) -> None:
    """Record a claim or release of ``study_id`` in the caller's transaction."""
    audit_in(session, request, action, user=user, object_type="study", object_id=study_id, details=details)


def _announce_claim(request: Request, study_id: int, username: str | None) -> None:
    """Tell open worklists who now holds ``study_id`` (``None``: nobody)."""
    announce(request.app, {"type": "claim", "study_id": study_id, "username": username})
