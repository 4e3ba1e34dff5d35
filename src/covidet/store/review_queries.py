"""Query functions of the clinical side: worklist, studies, images, findings, vital signs, reviews,
alerts, and the accounts behind them (users, API tokens, browser sessions, audit log).

The JSON API and the web app both call these, so that the two show the same data. As in
:mod:`covidet.store.queries`, every function takes a :class:`~sqlalchemy.orm.Session` and never
commits: the caller owns the transaction (:meth:`covidet.store.db.Database.session`). Functions that
return ORM objects expect the caller to read them inside that session.

Refusals are :class:`QueryError` subclasses whose message is one sentence for the user:
:class:`NotFound` (the API answers 404), :class:`Forbidden` (403), :class:`Conflict` (409) and
:class:`Invalid` (422). Passwords are hashed by the caller (``covidet.api.auth``); this module only
stores hashes. Tokens and session ids are stored as SHA-256 hex digests only.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from covidet.domain import Label
from covidet.store import review_rules
from covidet.store.models import (
    Alert,
    ApiToken,
    AuditEvent,
    FindingRecord,
    Image,
    Inference,
    InferenceStatus,
    Patient,
    Review,
    ReviewAction,
    ReviewFinding,
    ReviewStatus,
    Role,
    Study,
    TriageRecord,
    User,
    VitalSignRecord,
    WebSession,
    utcnow,
)

__all__ = [
    "PRIORITY_ORDER",
    "USERNAME_PATTERN",
    "VITAL_PARAMETERS",
    "AiSummary",
    "Conflict",
    "ExportBox",
    "ExportRow",
    "FindingAction",
    "Forbidden",
    "Invalid",
    "NotFound",
    "QueryError",
    "ReviewState",
    "StudyRow",
    "VitalValue",
    "WorklistRow",
    "acknowledge_alert",
    "add_audit_event",
    "authenticate_api_token",
    "count_active_admins",
    "create_api_token",
    "create_review",
    "create_user",
    "create_web_session",
    "delete_web_session",
    "get_alert",
    "get_api_token",
    "get_image",
    "get_patient",
    "get_review",
    "get_study",
    "get_user",
    "image_findings",
    "image_inferences",
    "image_reviews",
    "latest_inference",
    "latest_triage",
    "latest_vitals",
    "list_alerts",
    "list_api_tokens",
    "list_audit_events",
    "list_reviews",
    "list_studies",
    "list_users",
    "patient_vitals",
    "rehash_password",
    "revoke_api_token",
    "sha256_hex",
    "sign_review",
    "touch_api_token",
    "training_export_rows",
    "update_review",
    "update_user",
    "user_by_username",
    "web_session_lookup",
    "worklist",
]

#: Worklist order of priorities; images not yet triaged come after ``routine``.
PRIORITY_ORDER: tuple[str, ...] = ("urgent", "high", "routine")
#: The vital-sign columns, in the order NEWS2 charts them (respiratory first).
VITAL_PARAMETERS: tuple[str, ...] = (
    "spo2_percent",
    "respiratory_rate_per_min",
    "temperature_c",
    "heart_rate_per_min",
    "systolic_bp_mmhg",
)
#: Usernames: 1-64 letters, digits and ``. _ @ -``, starting with a letter or digit.
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_USERNAME = re.compile(USERNAME_PATTERN)


# ------------------------------------------------------------------------------------------ errors


class QueryError(Exception):
    """A refused request; ``str(error)`` is the one-sentence reason shown to the user."""


class NotFound(QueryError):
    """The object does not exist (404)."""


class Forbidden(QueryError):
    """The object exists but this user may not do that to it (403)."""


class Conflict(QueryError):
    """The request contradicts the current state: a duplicate name, a signed review (409)."""


class Invalid(QueryError):
    """The request is malformed in a way the schema cannot say: a box outside the image (422)."""


def sha256_hex(secret: str) -> str:
    """SHA-256 hex of a random secret (token, session id). 256-bit random values need no slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _page(session: Session, statement: Select[Any], limit: int, offset: int) -> tuple[list[Any], int]:
    """Rows ``offset .. offset + limit`` of ``statement`` (scalars) and the total count."""
    total = session.scalar(select(func.count()).select_from(statement.order_by(None).subquery())) or 0
    rows = list(session.scalars(statement.limit(limit).offset(offset)))
    return rows, int(total)


def _contains(column: Any, text: str) -> Any:
    """Case-insensitive substring match, with ``%`` and ``_`` in ``text`` taken literally."""
    return func.lower(column).contains(text.lower(), autoescape=True)


# ------------------------------------------------------------------------------------------ vitals


@dataclass(frozen=True, slots=True)
class VitalValue:
    """The latest value of one vital sign. ``news2`` is its NEWS2 score (0-3, see
    :mod:`covidet.assessment.triage`); ``abnormal`` is ``news2 > 0``."""

    parameter: str
    value: float
    measured_at: datetime
    news2: int | None
    abnormal: bool


def _vital_value(parameter: str, value: float, measured_at: datetime) -> VitalValue:
    from covidet.assessment.triage import news2_score  # pure Python, no torch

    score: int | None = None
    if math.isfinite(value):
        score = news2_score(parameter, value)
    return VitalValue(parameter, float(value), measured_at, score, bool(score))


def latest_vitals(session: Session, patient_ids: Sequence[int]) -> dict[int, dict[str, VitalValue]]:
    """Per patient, the most recent value of each vital sign (a reading may lack some parameters, so
    each parameter is looked up on its own). Patients without readings are absent."""
    result: dict[int, dict[str, VitalValue]] = {}
    if not patient_ids:
        return result
    for parameter in VITAL_PARAMETERS:
        column = getattr(VitalSignRecord, parameter)
        rank = (
            func.row_number()
            .over(
                partition_by=VitalSignRecord.patient_id,
                order_by=(VitalSignRecord.measured_at.desc(), VitalSignRecord.id.desc()),
            )
            .label("rank")
        )
        ranked = (
            select(VitalSignRecord.patient_id, column.label("value"), VitalSignRecord.measured_at, rank)
            .where(VitalSignRecord.patient_id.in_(patient_ids), column.is_not(None))
            .subquery()
        )
        rows = session.execute(
            select(ranked.c.patient_id, ranked.c.value, ranked.c.measured_at).where(ranked.c.rank == 1)
        )
        for patient_id, value, measured_at in rows:
            result.setdefault(patient_id, {})[parameter] = _vital_value(parameter, value, measured_at)
    return result


def patient_vitals(
    session: Session,
    patient_id: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 500,
) -> tuple[list[VitalSignRecord], int]:
    """The newest ``limit`` readings of a patient with ``since <= measured_at <= until``, returned oldest
    first (ready to plot), and how many readings the range holds.

    Raises:
        NotFound: no such patient.
    """
    if session.get(Patient, patient_id) is None:
        raise NotFound(f"no patient with id {patient_id}")
    conditions = [VitalSignRecord.patient_id == patient_id]
    if since is not None:
        conditions.append(VitalSignRecord.measured_at >= since)
    if until is not None:
        conditions.append(VitalSignRecord.measured_at <= until)
    total = session.scalar(select(func.count()).select_from(VitalSignRecord).where(*conditions)) or 0
    newest = list(
        session.scalars(
            select(VitalSignRecord)
            .where(*conditions)
            .order_by(VitalSignRecord.measured_at.desc(), VitalSignRecord.id.desc())
            .limit(limit)
        )
    )
    return newest[::-1], int(total)


def get_patient(session: Session, patient_id: int) -> Patient | None:
    return session.get(Patient, patient_id)


# ---------------------------------------------------------------------------------------- worklist


@dataclass(frozen=True, slots=True)
class AiSummary:
    """The newest successful analysis of an image. ``top_score`` is the highest finding score (``None``
    without findings); ``probabilities`` are the image-level class probabilities."""

    inference_id: int
    label: str | None
    top_score: float | None
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReviewState:
    """``state``: ``signed`` when a signed review exists (the newest is named), else ``draft`` when a
    draft exists, else ``none``."""

    state: str = "none"
    review_id: int | None = None
    reviewer: str | None = None
    label: str | None = None
    signed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WorklistRow:
    """One image on the worklist, with what a radiologist needs to choose what to read next."""

    image_id: int
    study_id: int
    patient_id: int
    patient_key: str
    patient_name: str | None
    received_at: datetime
    status: str
    priority: str | None
    priority_updated_at: datetime | None
    reasons: list[str]
    ai: AiSummary | None
    vitals: dict[str, VitalValue]
    review: ReviewState


def _priority_rank() -> Any:
    return case(
        *((Image.priority == name, index) for index, name in enumerate(PRIORITY_ORDER)),
        else_=len(PRIORITY_ORDER),
    )


def worklist(
    session: Session,
    *,
    priorities: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    reviewed: bool | None = None,
    patient: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[WorklistRow], int]:
    """Images ordered by priority (urgent, high, routine, not triaged) and, within a priority, by
    arrival (``received_at`` ascending: the oldest waiting first), and the total matching.

    Filters: ``priorities`` (``urgent | high | routine | none``, ``none`` = not triaged yet),
    ``statuses`` (``queued | analysed | failed``), ``reviewed`` (``True``: has a signed review,
    ``False``: has none), ``patient`` (case-insensitive substring of the patient key or name).
    """
    statement = (
        select(Image).join(Study, Image.study_id == Study.id).join(Patient, Study.patient_id == Patient.id)
    )
    if priorities:
        named = [p for p in priorities if p != "none"]
        conditions = [Image.priority.in_(named)] if named else []
        if "none" in priorities:
            conditions.append(Image.priority.is_(None))
        statement = statement.where(or_(*conditions))
    if statuses:
        statement = statement.where(Image.status.in_(list(statuses)))
    if reviewed is not None:
        signed = exists().where(Review.image_id == Image.id, Review.status == ReviewStatus.SIGNED.value)
        statement = statement.where(signed if reviewed else ~signed)
    if patient:
        statement = statement.where(
            or_(_contains(Patient.patient_key, patient), _contains(Patient.name, patient))
        )
    statement = statement.order_by(_priority_rank(), Image.received_at.asc(), Image.id.asc()).options(
        selectinload(Image.study).selectinload(Study.patient)
    )
    images, total = _page(session, statement, limit, offset)
    ids = [image.id for image in images]
    ai = _ai_summaries(session, ids)
    reasons = _latest_reasons(session, ids)
    states = _review_states(session, ids)
    vitals = latest_vitals(session, sorted({image.study.patient_id for image in images}))
    rows = [
        WorklistRow(
            image_id=image.id,
            study_id=image.study_id,
            patient_id=image.study.patient_id,
            patient_key=image.study.patient.patient_key,
            patient_name=image.study.patient.name,
            received_at=image.received_at,
            status=image.status,
            priority=image.priority,
            priority_updated_at=image.priority_updated_at,
            reasons=reasons.get(image.id, []),
            ai=ai.get(image.id),
            vitals=vitals.get(image.study.patient_id, {}),
            review=states.get(image.id, ReviewState()),
        )
        for image in images
    ]
    return rows, total


def _ai_summaries(session: Session, image_ids: Sequence[int]) -> dict[int, AiSummary]:
    if not image_ids:
        return {}
    newest: dict[int, Inference] = {}
    for inference in session.scalars(
        select(Inference)
        .where(Inference.image_id.in_(image_ids), Inference.status == InferenceStatus.SUCCEEDED.value)
        .order_by(Inference.finished_at.asc(), Inference.id.asc())
    ):
        newest[inference.image_id] = inference  # the last one wins
    top = dict(
        session.execute(
            select(FindingRecord.inference_id, func.max(FindingRecord.score))
            .where(FindingRecord.inference_id.in_([i.id for i in newest.values()]))
            .group_by(FindingRecord.inference_id)
        ).all()
    )
    return {
        image_id: AiSummary(
            inference_id=inference.id,
            label=inference.label,
            top_score=float(top[inference.id]) if inference.id in top else None,
            probabilities=dict(inference.probabilities or {}),
            model_name=inference.model_name,
            model_version=inference.model_version,
            finished_at=inference.finished_at,
        )
        for image_id, inference in newest.items()
    }


def _latest_reasons(session: Session, image_ids: Sequence[int]) -> dict[int, list[str]]:
    reasons: dict[int, list[str]] = {}
    if image_ids:
        for image_id, text in session.execute(
            select(TriageRecord.image_id, TriageRecord.reasons)
            .where(TriageRecord.image_id.in_(image_ids))
            .order_by(TriageRecord.computed_at.asc(), TriageRecord.id.asc())
        ):
            reasons[image_id] = list(text or [])
    return reasons


def _review_states(session: Session, image_ids: Sequence[int]) -> dict[int, ReviewState]:
    states: dict[int, ReviewState] = {}
    if not image_ids:
        return states
    rows = session.execute(
        select(Review.image_id, Review.id, Review.status, Review.label, Review.signed_at, User.username)
        .join(User, Review.reviewer_id == User.id)
        .where(Review.image_id.in_(image_ids))
        .order_by(Review.id.asc())
    )
    for image_id, review_id, status, label, signed_at, username in rows:
        current = states.get(image_id)
        if status == ReviewStatus.SIGNED.value or current is None or current.state != "signed":
            states[image_id] = ReviewState(status, review_id, username, label, signed_at)
    return states


# ----------------------------------------------------------------------------------- studies, images


@dataclass(frozen=True, slots=True)
class StudyRow:
    """A study in a list, with its patient and how many images it has."""

    id: int
    study_instance_uid: str
    accession_number: str | None
    description: str | None
    study_datetime: datetime | None
    created_at: datetime
    patient_id: int
    patient_key: str
    patient_name: str | None
    image_count: int


def list_studies(
    session: Session, *, patient: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[StudyRow], int]:
    """Studies, newest first; ``patient`` filters by substring of the patient key or name."""
    image_count = (
        select(func.count(Image.id)).where(Image.study_id == Study.id).correlate(Study).scalar_subquery()
    )
    statement = select(Study.id).join(Patient, Study.patient_id == Patient.id)
    if patient:
        statement = statement.where(
            or_(_contains(Patient.patient_key, patient), _contains(Patient.name, patient))
        )
    ids, total = _page(session, statement.order_by(Study.created_at.desc(), Study.id.desc()), limit, offset)
    if not ids:
        return [], total
    rows = session.execute(
        select(Study, Patient, image_count.label("n"))
        .join(Patient, Study.patient_id == Patient.id)
        .where(Study.id.in_(ids))
        .order_by(Study.created_at.desc(), Study.id.desc())
    )
    return [
        StudyRow(
            study.id,
            study.study_instance_uid,
            study.accession_number,
            study.description,
            study.study_datetime,
            study.created_at,
            patient_row.id,
            patient_row.patient_key,
            patient_row.name,
            int(n or 0),
        )
        for study, patient_row, n in rows
    ], total


def get_study(session: Session, study_id: int) -> Study | None:
    """A study with its patient and images (oldest first) loaded."""
    return session.scalar(
        select(Study)
        .where(Study.id == study_id)
        .options(selectinload(Study.patient), selectinload(Study.images))
    )


def get_image(session: Session, image_id: int) -> Image | None:
    """An image with its study and patient loaded."""
    return session.scalar(
        select(Image)
        .where(Image.id == image_id)
        .options(selectinload(Image.study).selectinload(Study.patient))
    )


def latest_inference(session: Session, image_id: int) -> Inference | None:
    """The newest successful inference of an image (findings loaded), or ``None``."""
    return session.scalar(
        select(Inference)
        .where(Inference.image_id == image_id, Inference.status == InferenceStatus.SUCCEEDED.value)
        .order_by(Inference.finished_at.desc(), Inference.id.desc())
        .options(selectinload(Inference.findings))
        .limit(1)
    )


def image_inferences(session: Session, image_id: int) -> list[Inference]:
    """Every inference of an image (any status), oldest first."""
    return list(
        session.scalars(select(Inference).where(Inference.image_id == image_id).order_by(Inference.id.asc()))
    )


def image_findings(
    session: Session, image_id: int, *, inference_id: int | None = None
) -> tuple[Inference | None, list[FindingRecord]]:
    """The findings of ``inference_id`` (which must belong to the image and have succeeded), or of the
    newest successful inference; ``(None, [])`` when the image has none.

    Raises:
        NotFound: no such image, or ``inference_id`` is not a successful inference of this image.
    """
    if session.get(Image, image_id) is None:
        raise NotFound(f"no image with id {image_id}")
    if inference_id is None:
        inference = latest_inference(session, image_id)
    else:
        inference = session.get(Inference, inference_id)
        if (
            inference is None
            or inference.image_id != image_id
            or inference.status != InferenceStatus.SUCCEEDED.value
        ):
            raise NotFound(f"image {image_id} has no successful inference with id {inference_id}")
    return inference, (list(inference.findings) if inference is not None else [])


def latest_triage(session: Session, image_id: int) -> TriageRecord | None:
    return session.scalar(
        select(TriageRecord)
        .where(TriageRecord.image_id == image_id)
        .order_by(TriageRecord.computed_at.desc(), TriageRecord.id.desc())
        .limit(1)
    )


def image_reviews(session: Session, image_id: int) -> list[Review]:
    """Reviews of an image, oldest first, with reviewers and findings loaded."""
    return list(
        session.scalars(
            select(Review)
            .where(Review.image_id == image_id)
            .order_by(Review.id.asc())
            .options(selectinload(Review.reviewer), selectinload(Review.findings))
        )
    )


# ------------------------------------------------------------------------------------------ reviews


@dataclass(frozen=True, slots=True)
class FindingAction:
    """One reviewer action as given by a client (see :class:`covidet.store.models.ReviewAction`).

    ``box`` is ``(x1, y1, x2, y2)`` in original-image pixels.
    """

    action: str
    source_finding_id: int | None = None
    label: str | None = None
    box: tuple[float, float, float, float] | None = None


def _check_label(label: str | None, where: str) -> str | None:
    if label is None:
        return None
    try:
        return Label(label).value
    except ValueError:
        allowed = ", ".join(item.value for item in Label)
        raise Invalid(f"{where}: unknown label {label!r} (expected one of {allowed})") from None


def _check_box(box: Sequence[float], image: Image, where: str) -> tuple[float, float, float, float]:
    if len(box) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
        raise Invalid(f"{where}: a box is four finite numbers [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x1 < x2 and y1 < y2):
        raise Invalid(f"{where}: box [x1, y1, x2, y2] needs x1 < x2 and y1 < y2")
    width, height = image.columns, image.rows
    if x1 < 0 or y1 < 0 or (width is not None and x2 > width) or (height is not None and y2 > height):
        size = f"{width}x{height}" if width and height else "the image"
        raise Invalid(f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the image ({size} pixels)")
    return x1, y1, x2, y2


def _review_findings(
    image: Image, inference: Inference | None, actions: Sequence[FindingAction]
) -> list[ReviewFinding]:
    """Validate ``actions`` against the AI findings the review refers to; rows to store.

    Raises:
        Invalid: an unknown action, a missing or foreign ``source_finding_id``, two actions on one
            finding, a bad label or box.
    """
    findings = {f.id: f for f in (inference.findings if inference is not None else [])}
    seen: set[int] = set()
    rows: list[ReviewFinding] = []
    for index, item in enumerate(actions):
        where = f"findings[{index}]"
        try:
            action = ReviewAction(item.action)
        except ValueError:
            allowed = ", ".join(a.value for a in ReviewAction)
            raise Invalid(f"{where}: unknown action {item.action!r} (expected one of {allowed})") from None
        label = _check_label(item.label, where)
        if action is ReviewAction.ADD:
            if item.source_finding_id is not None:
                raise Invalid(f"{where}: 'add' draws a new box; it takes no source_finding_id")
            if label is None or item.box is None:
                raise Invalid(f"{where}: 'add' needs a label and a box")
            rows.append(
                ReviewFinding(
                    action=action.value, label=label, **_box_columns(_check_box(item.box, image, where))
                )
            )
            continue
        if item.source_finding_id is None:
            raise Invalid(f"{where}: {action.value!r} needs the source_finding_id of an AI finding")
        source = findings.get(item.source_finding_id)
        if source is None:
            raise Invalid(
                f"{where}: finding {item.source_finding_id} is not a finding of the AI result under review"
                + (f" (inference {inference.id})" if inference is not None else " (the image has none)")
            )
        if source.id in seen:
            raise Invalid(f"{where}: finding {source.id} has more than one action")
        seen.add(source.id)
        box = (source.x1, source.y1, source.x2, source.y2)
        if action is ReviewAction.RELABEL:
            if label is None:
                raise Invalid(f"{where}: 'relabel' needs the new label")
            if item.box is not None:
                box = _check_box(item.box, image, where)
        else:
            if label is not None or item.box is not None:
                raise Invalid(
                    f"{where}: {action.value!r} keeps the AI's label and box; to change them use 'relabel'"
                )
            label = source.label
        rows.append(
            ReviewFinding(action=action.value, source_finding_id=source.id, label=label, **_box_columns(box))
        )
    return rows


def _box_columns(box: Sequence[float]) -> dict[str, float]:
    return dict(zip(("x1", "y1", "x2", "y2"), (float(v) for v in box), strict=True))


def create_review(
    session: Session,
    *,
    image_id: int,
    reviewer_id: int,
    label: str | None = None,
    comment: str | None = None,
    actions: Sequence[FindingAction] = (),
) -> Review:
    """A new draft review of an image by a reviewer, on the image's newest successful inference (or
    none, when the image was not analysed: then only ``add`` actions are possible).

    Raises:
        NotFound: no such image.
        Conflict: the reviewer already has a draft of this image (update it instead).
        Invalid: a bad label, action or box.
    """
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"no image with id {image_id}")
    draft = session.scalar(
        select(Review.id).where(
            Review.image_id == image_id,
            Review.reviewer_id == reviewer_id,
            Review.status == ReviewStatus.DRAFT.value,
        )
    )
    if draft is not None:
        raise Conflict(f"you already have draft review {draft} of image {image_id}: update that one")
    inference = latest_inference(session, image_id)
    review = Review(
        image_id=image_id,
        inference_id=inference.id if inference is not None else None,
        reviewer_id=reviewer_id,
        status=ReviewStatus.DRAFT.value,
        label=_check_label(label, "label"),
        comment=comment,
    )
    review.findings = _review_findings(image, inference, actions)
    session.add(review)
    session.flush()
    return review


def _own_draft(session: Session, review_id: int, reviewer_id: int) -> Review:
    review = get_review(session, review_id)
    if review is None:
        raise NotFound(f"no review with id {review_id}")
    if review.reviewer_id != reviewer_id:
        raise Forbidden(f"review {review_id} belongs to another reviewer")
    if review.status == ReviewStatus.SIGNED.value:
        raise Conflict(f"review {review_id} is signed: a signed review never changes")
    return review


def update_review(
    session: Session,
    review_id: int,
    *,
    reviewer_id: int,
    label: str | None = None,
    comment: str | None = None,
    actions: Sequence[FindingAction] | None = None,
    fields: Sequence[str] = ("label", "comment", "findings"),
) -> Review:
    """Change a draft: the names in ``fields`` are replaced (``findings`` replaces the whole list of
    actions with ``actions``); other fields are kept.

    Raises:
        NotFound: no such review. Forbidden: another reviewer's draft. Conflict: the review is signed.
        Invalid: a bad label, action or box.
    """
    review = _own_draft(session, review_id, reviewer_id)
    if "label" in fields:
        review.label = _check_label(label, "label")
    if "comment" in fields:
        review.comment = comment
    if "findings" in fields:
        inference = session.get(Inference, review.inference_id) if review.inference_id is not None else None
        review.findings = _review_findings(review.image, inference, actions or ())
    review.updated_at = utcnow()
    session.flush()
    return review


def sign_review(session: Session, review_id: int, *, reviewer_id: int, now: datetime | None = None) -> Review:
    """Sign a draft: from now on it never changes. If the reviewer already signed a review of this
    image, this one becomes an addendum that names it (``amends_review_id``); once every image of the
    study is signed, the study's claim is released (:mod:`covidet.store.review_rules`).

    Raises:
        NotFound, Forbidden, Conflict: as :func:`update_review`. Invalid: the review has no label.
    """
    review = _own_draft(session, review_id, reviewer_id)
    if review.label is None:
        raise Invalid(f"review {review_id} has no label: set the image-level conclusion before signing")
    now = now or utcnow()
    # A second signature of the same image by the same reviewer is an addendum to their report.
    review.amends_review_id = review_rules.first_report_id(
        session, review.image_id, reviewer_id, exclude=review.id
    )
    review.status = ReviewStatus.SIGNED.value
    review.signed_at = now
    review.updated_at = now
    session.flush()
    review_rules.release_claim_when_read(session, review.image_id)
    return review


def get_review(session: Session, review_id: int) -> Review | None:
    """A review with its reviewer, image and findings loaded."""
    return session.scalar(
        select(Review)
        .where(Review.id == review_id)
        .options(selectinload(Review.reviewer), selectinload(Review.findings), selectinload(Review.image))
    )


def list_reviews(
    session: Session,
    *,
    image_id: int | None = None,
    status: str | None = None,
    reviewer_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Review], int]:
    """Reviews, newest first, optionally of one image, in one status or by one reviewer."""
    statement = select(Review)
    if image_id is not None:
        statement = statement.where(Review.image_id == image_id)
    if status is not None:
        statement = statement.where(Review.status == status)
    if reviewer_id is not None:
        statement = statement.where(Review.reviewer_id == reviewer_id)
    statement = statement.order_by(Review.id.desc()).options(
        selectinload(Review.reviewer), selectinload(Review.findings)
    )
    return _page(session, statement, limit, offset)


@dataclass(frozen=True, slots=True)
class ExportBox:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    action: str


@dataclass(frozen=True, slots=True)
class ExportRow:
    """The newest signed review of one image, as a training example: the reviewer's image label and
    the boxes the reviewer confirmed, relabelled or added."""

    review_id: int
    image_id: int
    image_path: str
    media_type: str
    patient_key: str
    label: str
    reviewer: str
    signed_at: datetime
    boxes: list[ExportBox] = field(default_factory=list)


#: Actions whose box is a positive example in a training export.
_EXPORTED_ACTIONS = (ReviewAction.CONFIRM.value, ReviewAction.RELABEL.value, ReviewAction.ADD.value)


def training_export_rows(
    session: Session, *, since: datetime | None = None, until: datetime | None = None
) -> list[ExportRow]:
    """One row per image that has a signed review (signed in ``[since, until]`` when given): its newest
    signed review. AI findings the reviewer did not act on are not exported: only human-confirmed
    boxes make training data."""
    conditions = [Review.status == ReviewStatus.SIGNED.value]
    if since is not None:
        conditions.append(Review.signed_at >= since)
    if until is not None:
        conditions.append(Review.signed_at <= until)
    reviews = session.scalars(
        select(Review)
        .where(*conditions)
        .order_by(Review.image_id.asc(), Review.signed_at.asc(), Review.id.asc())
        .options(
            selectinload(Review.findings),
            selectinload(Review.reviewer),
            selectinload(Review.image).selectinload(Image.study).selectinload(Study.patient),
        )
    )
    newest: dict[int, Review] = {}
    for review in reviews:
        newest[review.image_id] = review
    rows = []
    for image_id, review in sorted(newest.items()):
        assert review.label is not None and review.signed_at is not None  # enforced by sign_review
        boxes = [
            ExportBox(f.label or review.label, f.x1, f.y1, f.x2, f.y2, f.action)  # type: ignore[arg-type]
            for f in review.findings
            if f.action in _EXPORTED_ACTIONS and f.x1 is not None
        ]
        rows.append(
            ExportRow(
                review_id=review.id,
                image_id=image_id,
                image_path=review.image.path,
                media_type=review.image.media_type,
                patient_key=review.image.study.patient.patient_key,
                label=review.label,
                reviewer=review.reviewer.username,
                signed_at=review.signed_at,
                boxes=boxes,
            )
        )
    return rows


# ------------------------------------------------------------------------------------------- alerts


def list_alerts(
    session: Session, *, acknowledged: bool | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[tuple[Alert, Patient]], int]:
    """Alerts, newest first, with their patients; ``acknowledged`` filters."""
    statement = select(Alert, Patient).join(Patient, Alert.patient_id == Patient.id)
    if acknowledged is not None:
        statement = statement.where(
            Alert.acknowledged_at.is_not(None) if acknowledged else Alert.acknowledged_at.is_(None)
        )
    total = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    rows = session.execute(
        statement.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit).offset(offset)
    ).all()
    return [(alert, patient) for alert, patient in rows], int(total)


def get_alert(session: Session, alert_id: int) -> tuple[Alert, Patient] | None:
    row = session.execute(
        select(Alert, Patient).join(Patient, Alert.patient_id == Patient.id).where(Alert.id == alert_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


def acknowledge_alert(
    session: Session, alert_id: int, *, username: str, now: datetime | None = None
) -> tuple[Alert, Patient]:
    """Mark an alert acknowledged by ``username``. Acknowledging twice keeps the first acknowledgement
    (who saw it first is what matters).

    Raises:
        NotFound: no such alert.
    """
    found = get_alert(session, alert_id)
    if found is None:
        raise NotFound(f"no alert with id {alert_id}")
    alert = found[0]
    if alert.acknowledged_at is None:
        alert.acknowledged_at = now or utcnow()
        alert.acknowledged_by = username
        session.flush()
    return found


# -------------------------------------------------------------------------------------------- users


def _check_username(username: str) -> str:
    if not _USERNAME.fullmatch(username):
        raise Invalid("a username is 1-64 letters, digits and . _ @ -, starting with a letter or digit")
    return username


def _check_role(role: str) -> str:
    try:
        return Role(role).value
    except ValueError:
        raise Invalid(f"unknown role {role!r} (expected admin or radiologist)") from None


def create_user(session: Session, username: str, *, password_hash: str, role: str) -> User:
    """A new active user.

    Raises:
        Invalid: a bad username or role. Conflict: the username is taken (case-insensitively).
    """
    _check_username(username)
    role = _check_role(role)
    if user_by_username(session, username) is not None:
        raise Conflict(f"the username {username!r} is taken")
    user = User(username=username, role=role, password_hash=password_hash, active=True)
    session.add(user)
    session.flush()
    return user


def user_by_username(session: Session, username: str) -> User | None:
    """The user with this name, compared case-insensitively (``Alice`` and ``alice`` are one person)."""
    return session.scalar(select(User).where(func.lower(User.username) == username.lower()))


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def list_users(session: Session, *, limit: int = 50, offset: int = 0) -> tuple[list[User], int]:
    return _page(session, select(User).order_by(User.id.asc()), limit, offset)


def count_active_admins(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(User).where(User.role == Role.ADMIN.value, User.active.is_(True))
        )
        or 0
    )


def update_user(
    session: Session,
    user_id: int,
    *,
    active: bool | None = None,
    role: str | None = None,
    password_hash: str | None = None,
) -> User:
    """Change a user; ``None`` keeps a field. Deactivating a user, or changing their password, ends
    their browser sessions and revokes their tokens at once.

    Raises:
        NotFound: no such user. Invalid: a bad role. Conflict: the change would leave no active admin.
    """
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    new_role = _check_role(role) if role is not None else user.role
    new_active = user.active if active is None else active
    was_admin = user.active and user.role == Role.ADMIN.value
    if was_admin and not (new_active and new_role == Role.ADMIN.value) and count_active_admins(session) <= 1:
        raise Conflict(f"{user.username!r} is the last active admin: make another admin first")
    user.role = new_role
    user.active = new_active
    if password_hash is not None:
        user.password_hash = password_hash
    if not new_active or password_hash is not None:
        _end_credentials(session, user.id)
    session.flush()
    return user


def rehash_password(session: Session, user_id: int, password_hash: str) -> None:
    """Store a new hash of the *same* password (stronger hashing parameters): unlike a password change,
    the user's sessions and tokens stay valid."""
    session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))


def _end_credentials(session: Session, user_id: int) -> None:
    session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    session.execute(update(ApiToken).where(ApiToken.user_id == user_id).values(revoked=True))


# ----------------------------------------------------------------------------------- tokens, sessions


def create_api_token(
    session: Session, user_id: int, *, name: str, expires_at: datetime | None
) -> tuple[ApiToken, str]:
    """A new bearer token of a user; returns the row and the token, which is shown once (only its
    SHA-256 is stored). Tokens look like ``cvt_`` + 43 URL-safe characters (256 random bits)."""
    token = "cvt_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user_id, token_sha256=sha256_hex(token), name=name[:128], expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def authenticate_api_token(session: Session, token: str, *, now: datetime) -> tuple[ApiToken, User] | None:
    """The token row and its user when ``token`` is known, not revoked, not expired and its user is
    active; ``None`` otherwise (the caller answers all of these alike)."""
    row = session.execute(
        select(ApiToken, User)
        .join(User, ApiToken.user_id == User.id)
        .where(ApiToken.token_sha256 == sha256_hex(token), ApiToken.revoked.is_(False), User.active.is_(True))
    ).first()
    if row is None:
        return None
    api_token, user = row
    if api_token.expires_at is not None and api_token.expires_at <= now:
        return None
    return api_token, user


def touch_api_token(session: Session, token_id: int, *, now: datetime) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def get_api_token(session: Session, token_id: int) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def list_api_tokens(session: Session, *, user_id: int | None = None) -> list[ApiToken]:
    """Tokens (of one user, or all), newest first, with their users loaded."""
    statement = select(ApiToken).options(selectinload(ApiToken.user)).order_by(ApiToken.id.desc())
    if user_id is not None:
        statement = statement.where(ApiToken.user_id == user_id)
    return list(session.scalars(statement))


def revoke_api_token(session: Session, token_id: int) -> ApiToken:
    """Revoke a token (idempotent). Raises :class:`NotFound` for an unknown id."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no API token with id {token_id}")
    row.revoked = True
    session.flush()
    return row


def create_web_session(session: Session, user_id: int, *, expires_at: datetime) -> tuple[WebSession, str]:
    """A new browser session; returns the row and the session id for the cookie (shown once). Expired
    sessions of everyone are deleted on the way, so the table stays small."""
    session.execute(delete(WebSession).where(WebSession.expires_at <= utcnow()))
    session_id = secrets.token_urlsafe(32)
    row = WebSession(
        session_sha256=sha256_hex(session_id),
        user_id=user_id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, session_id


def web_session_lookup(session: Session, session_id: str, *, now: datetime) -> tuple[WebSession, User] | None:
    """The live session with this id and its active user, or ``None``."""
    row = session.execute(
        select(WebSession, User)
        .join(User, WebSession.user_id == User.id)
        .where(
            WebSession.session_sha256 == sha256_hex(session_id),
            WebSession.expires_at > now,
            User.active.is_(True),
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


def delete_web_session(session: Session, web_session_id: int) -> None:
    """End a browser session (logout)."""
    session.execute(delete(WebSession).where(WebSession.id == web_session_id))


# -------------------------------------------------------------------------------------------- audit


def add_audit_event(
    session: Session,
    action: str,
    *,
    actor_user_id: int | None = None,
    actor_username: str | None = None,
    actor_device_id: int | None = None,
    object_type: str | None = None,
    object_id: str | int | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Append one event to the audit log (``details`` must be JSON-serialisable)."""
    event = AuditEvent(
        at=at or utcnow(),
        actor_user_id=actor_user_id,
        actor_username=actor_username[:64] if actor_username else None,
        actor_device_id=actor_device_id,
        action=action[:64],
        object_type=object_type,
        object_id=str(object_id) if object_id is not None else None,
        ip=ip[:64] if ip else None,
        details=details,
    )
    session.add(event)
    return event


def list_audit_events(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditEvent], int]:
    """Audit events, newest first. ``actor`` is a username (exact, case-insensitive); ``action`` is
    exact, or a prefix when it ends with ``.`` (``read.`` lists every read)."""
    statement = select(AuditEvent)
    if actor:
        statement = statement.where(func.lower(AuditEvent.actor_username) == actor.lower())
    if action:
        if action.endswith("."):
            statement = statement.where(AuditEvent.action.startswith(action, autoescape=True))
        else:
            statement = statement.where(AuditEvent.action == action)
    if object_type:
        statement = statement.where(AuditEvent.object_type == object_type)
    if object_id:
        statement = statement.where(AuditEvent.object_id == object_id)
    if since is not None:
        statement = statement.where(AuditEvent.at >= since)
    if until is not None:
        statement = statement.where(AuditEvent.at <= until)
    return _page(session, statement.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()), limit, offset)
