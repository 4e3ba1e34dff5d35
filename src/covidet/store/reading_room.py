"""Query functions of the reading room: the worklist by study, claims ("being read by") and the next
case. Claims themselves are in :mod:`covidet.store.claims` (re-exported here).

A study is one row: its images (a chest X-ray study often has a PA and a lateral view, or repeats),
the most urgent priority among them and the reason that decided it, the accession number and
description, how long its first image has waited, the patient's latest vital signs, the reviews, the
unacknowledged alerts (so the urgent highlight comes from the server, not from the events a browser
happened to see) and the claim. As everywhere in :mod:`covidet.store`, functions take a session and
never commit; refusals are :class:`~covidet.store.review_queries.QueryError` subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, exists, func, or_, select
from sqlalchemy.orm import Session

from covidet.store import review_queries as rq
from covidet.store.claims import ClaimInfo, claim_study, get_claim, release_claim, study_claims
from covidet.store.models import (
    Alert,
    Image,
    Patient,
    Review,
    ReviewStatus,
    Study,
    StudyClaim,
    User,
)
from covidet.store.query_common import patient_matches, signed_review_exists
from covidet.store.worklist_queries import PRIORITY_ORDER, _priority_rank

__all__ = [
    "SORTS",
    "ClaimInfo",
    "ImageReviews",
    "StudyImage",
    "StudyRow",
    "claim_study",
    "get_claim",
    "next_study",
    "release_claim",
    "study_worklist",
]

#: Sort keys of the study worklist. ``priority``: most urgent first, then longest waiting (the
#: default, the order of ``GET /api/v1/worklist``); ``waiting``: longest waiting first; ``patient``:
#: patient id; ``accession``: accession number.
SORTS = ("priority", "waiting", "patient", "accession")
_NONE_RANK = len(PRIORITY_ORDER)  # the rank of a study none of whose images is triaged yet


@dataclass(frozen=True, slots=True)
class ImageReviews:
    """The signed reviews of one image: one report per radiologist, and addenda.

    ``reports`` are ``(review_id, reviewer, label, signed_at)`` of first signatures, oldest first;
    ``addenda`` counts later signatures (each names its report); ``drafts`` are the reviewers with a
    draft."""

    reports: tuple[tuple[int, str, str | None, datetime | None], ...] = ()
    addenda: int = 0
    drafts: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """``signed``, ``draft`` or ``none`` (as :class:`~covidet.store.review_queries.ReviewState`)."""
        return "signed" if self.reports else "draft" if self.drafts else "none"


@dataclass(frozen=True, slots=True)
class StudyImage:
    """One image of a study row."""

    image_id: int
    received_at: datetime
    status: str
    priority: str | None
    modality: str | None
    media_type: str
    path: str  # relative to the image store
    reasons: list[str]
    ai: rq.AiSummary | None
    reviews: ImageReviews
    alert_ids: list[int]


@dataclass(frozen=True, slots=True)
class StudyRow:
    """One study on the worklist. ``priority`` is the most urgent of its images' and
    ``deciding_image_id`` the image that has it (the longest waiting one on a tie), whose ``reasons``
    and ``ai`` the row shows; ``first_received_at`` is when its first image arrived."""

    study_id: int
    study_instance_uid: str
    accession_number: str | None
    description: str | None
    study_datetime: datetime | None
    patient_id: int
    patient_key: str
    patient_name: str | None
    priority: str | None
    deciding_image_id: int
    first_received_at: datetime
    images: list[StudyImage]
    vitals: dict[str, rq.VitalValue]
    claim: ClaimInfo | None
    alert_ids: list[int] = field(default_factory=list)

    @property
    def deciding(self) -> StudyImage:
        return next(i for i in self.images if i.image_id == self.deciding_image_id)

    @property
    def unread_images(self) -> list[int]:
        """Images without a signed review, in reading order (most urgent, then oldest)."""
        return [i.image_id for i in self.images if not i.reviews.reports]


def _study_aggregate(statuses: Sequence[str] | None) -> Any:
    """Per study: the best priority rank, the first arrival, and how many images have no signed review
    (and, with ``statuses``, how many images are in one of them)."""
    columns = [
        Image.study_id.label("study_id"),
        func.min(_priority_rank()).label("rank"),
        func.min(Image.received_at).label("first_received"),
        func.sum(case((signed_review_exists(), 0), else_=1)).label("unread"),
    ]
    if statuses:
        columns.append(func.sum(case((Image.status.in_(list(statuses)), 1), else_=0)).label("status_hits"))
    return select(*columns).group_by(Image.study_id).subquery("study_agg")


def study_worklist(
    session: Session,
    *,
    priorities: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    reviewed: bool | None = None,
    patient: str | None = None,
    text: str | None = None,
    sort: str = "priority",
    descending: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[StudyRow], int]:
    """Studies to read and the total matching.

    Filters: ``priorities`` (the study's priority: ``urgent | high | routine | none``), ``statuses``
    (some image is ``queued | analysed | failed``), ``reviewed`` (``True``: every image has a signed
    review; ``False``: some image has none), ``patient`` (substring of the patient key or name),
    ``text`` (substring of the accession number or study description). ``sort`` is one of
    :data:`SORTS`; ``descending`` reverses it.

    Raises:
        Invalid: an unknown sort key.
    """
    if sort not in SORTS:
        raise rq.Invalid(f"unknown sort {sort!r} (expected one of {', '.join(SORTS)})")
    agg = _study_aggregate(statuses)
    statement: Select[Any] = (
        select(Study.id).join(agg, agg.c.study_id == Study.id).join(Patient, Study.patient_id == Patient.id)
    )
    if priorities:
        ranks = [PRIORITY_ORDER.index(p) if p in PRIORITY_ORDER else _NONE_RANK for p in priorities]
        statement = statement.where(agg.c.rank.in_(ranks))
    if statuses:
        statement = statement.where(agg.c.status_hits > 0)
    if reviewed is not None:
        statement = statement.where(agg.c.unread == 0 if reviewed else agg.c.unread > 0)
    if patient:
        statement = statement.where(patient_matches(patient))
    if text:
        statement = statement.where(
            or_(rq._contains(Study.accession_number, text), rq._contains(Study.description, text))
        )
    keys = {
        "priority": [agg.c.rank, agg.c.first_received],
        "waiting": [agg.c.first_received],
        "patient": [Patient.patient_key, agg.c.first_received],
        "accession": [Study.accession_number, agg.c.first_received],
    }[sort]
    order = [key.desc() if descending else key.asc() for key in keys]
    # A study without an accession number sorts last either way.
    if sort == "accession":
        order.insert(0, Study.accession_number.is_(None))
    statement = statement.order_by(*order, Study.id.desc() if descending else Study.id.asc())
    ids, total = rq._page(session, statement, limit, offset)
    rows = study_rows(session, ids)
    return rows, total


def study_rows(session: Session, study_ids: Sequence[int]) -> list[StudyRow]:
    """The rows of these studies, in this order (unknown ids are left out)."""
    if not study_ids:
        return []
    studies = {s.id: s for s in session.scalars(select(Study).where(Study.id.in_(list(study_ids))))}
    images_by_study: dict[int, list[Image]] = {}
    for image in session.scalars(
        select(Image)
        .where(Image.study_id.in_(list(study_ids)))
        .order_by(_priority_rank(), Image.received_at.asc(), Image.id.asc())
    ):
        images_by_study.setdefault(image.study_id, []).append(image)
    image_ids = [i.id for images in images_by_study.values() for i in images]
    ai = rq._ai_summaries(session, image_ids)
    reasons = rq._latest_reasons(session, image_ids)
    reviews = _image_reviews(session, image_ids)
    alerts: dict[int, list[int]] = {}
    for alert_id, image_id in session.execute(
        select(Alert.id, Alert.image_id)
        .where(Alert.image_id.in_(image_ids), Alert.acknowledged_at.is_(None))
        .order_by(Alert.id.asc())
    ):
        alerts.setdefault(image_id, []).append(alert_id)
    claims = study_claims(session, list(study_ids))
    patients = {
        p.id: p
        for p in session.scalars(
            select(Patient).where(Patient.id.in_({s.patient_id for s in studies.values()}))
        )
    }
    vitals = rq.latest_vitals(session, sorted(patients))
    rows = []
    for study_id in study_ids:
        study, images = studies.get(study_id), images_by_study.get(study_id)
        if study is None or not images:
            continue
        patient = patients[study.patient_id]
        members = [
            StudyImage(
                image_id=i.id,
                received_at=i.received_at,
                status=i.status,
                priority=i.priority,
                modality=i.modality,
                media_type=i.media_type,
                path=i.path,
                reasons=reasons.get(i.id, []),
                ai=ai.get(i.id),
                reviews=reviews.get(i.id, ImageReviews()),
                alert_ids=alerts.get(i.id, []),
            )
            for i in images
        ]
        rows.append(
            StudyRow(
                study_id=study.id,
                study_instance_uid=study.study_instance_uid,
                accession_number=study.accession_number,
                description=study.description,
                study_datetime=study.study_datetime,
                patient_id=patient.id,
                patient_key=patient.patient_key,
                patient_name=patient.name,
                priority=images[0].priority,  # images are ordered most urgent first
                deciding_image_id=images[0].id,
                first_received_at=min(i.received_at for i in images),
                images=members,
                vitals=vitals.get(patient.id, {}),
                claim=claims.get(study.id),
                alert_ids=[a for m in members for a in m.alert_ids],
            )
        )
    return rows


def _image_reviews(session: Session, image_ids: Sequence[int]) -> dict[int, ImageReviews]:
    reports: dict[int, list[tuple[int, str, str | None, datetime | None]]] = {}
    addenda: dict[int, int] = {}
    drafts: dict[int, list[str]] = {}
    if not image_ids:
        return {}
    for image_id, review_id, status, label, signed_at, amends, username in session.execute(
        select(
            Review.image_id,
            Review.id,
            Review.status,
            Review.label,
            Review.signed_at,
            Review.amends_review_id,
            User.username,
        )
        .join(User, Review.reviewer_id == User.id)
        .where(Review.image_id.in_(list(image_ids)))
        .order_by(Review.id.asc())
    ):
        if status != ReviewStatus.SIGNED.value:
            drafts.setdefault(image_id, []).append(username)
        elif amends is None:
            reports.setdefault(image_id, []).append((review_id, username, label, signed_at))
        else:
            addenda[image_id] = addenda.get(image_id, 0) + 1
    return {
        image_id: ImageReviews(
            tuple(reports.get(image_id, ())), addenda.get(image_id, 0), tuple(drafts.get(image_id, ()))
        )
        for image_id in set(reports) | set(addenda) | set(drafts)
    }


# ------------------------------------------------------------------------------------------ next case


def next_study(session: Session, *, user_id: int, now: datetime | None = None) -> StudyRow | None:
    """Claim and return the next study to read: the most urgent, then longest waiting study that has an
    image without a signed review and is not claimed by someone else (a study this user holds counts).
    ``None`` when nothing is left to read."""
    agg = _study_aggregate(None)
    others = exists().where(StudyClaim.study_id == Study.id, StudyClaim.user_id != user_id)
    for _attempt in range(3):  # another reader may claim the same study between the two statements
        study_id = session.scalar(
            select(Study.id)
            .join(agg, agg.c.study_id == Study.id)
            .where(agg.c.unread > 0, ~others)
            .order_by(agg.c.rank, agg.c.first_received, Study.id)
            .limit(1)
        )
        if study_id is None:
            return None
        try:
            claim_study(session, study_id, user_id=user_id, now=now)
        except rq.Conflict:
            continue
        return study_rows(session, [study_id])[0]
    return None
