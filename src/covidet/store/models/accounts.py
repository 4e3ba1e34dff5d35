"""The tables of people and their work: users, API tokens, web sessions, the audit log, reviews with
their findings, and study claims."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from covidet.store.models.base import Base, UTCDateTime, utcnow
from covidet.store.models.clinical import Image


class Role(StrEnum):
    """What a person may do. Admins manage users, devices and the audit log, and may also do all that
    radiologists do; radiologists read the worklist and images and sign reviews. Devices are not users:
    they authenticate with their own keys (:class:`Device`)."""

    ADMIN = "admin"
    RADIOLOGIST = "radiologist"


class User(Base):
    """A person who signs in. Users are deactivated, never deleted, so the audit log keeps its actors."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    #: argon2id hash in PHC string format (``$argon2id$v=19$m=...``), parameters included.
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token of a user. Only the SHA-256 of the token is stored (tokens are 256-bit random, so
    a fast hash suffices); the token itself is shown once, when it is created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: ``None``: never expires (only tokens made by an admin on the command line).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(default=False)

    user: Mapped[User] = relationship()


class WebSession(Base):
    """A browser session: the cookie holds a random id, the table its SHA-256. Kept server-side (not a
    signed cookie) so that logout, expiry and deactivating a user end the session at once."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    #: Synchronizer token: every unsafe request authenticated by this session must echo it.
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    user: Mapped[User] = relationship()


class AuditEvent(Base):
    """Who did what to which object, when and from where. Written for every read of patient data and
    every review action; never updated or deleted by covidet."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_object", "object_type", "object_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    #: Copied (not joined) so the event reads the same after a rename; for failed logins, the name tried.
    actor_username: Mapped[str | None] = mapped_column(String(64))
    actor_device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))
    #: ``verb.object`` or ``object.verb``: ``read.study``, ``review.sign``, ``auth.login_failed``, ...
    action: Mapped[str] = mapped_column(String(64), index=True)
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, object] | None] = mapped_column(JSON)


class ReviewStatus(StrEnum):
    DRAFT = "draft"  # editable by its reviewer
    SIGNED = "signed"  # final: never changed again


class ReviewAction(StrEnum):
    """What a reviewer says about a box.

    ``confirm``: the AI finding is right. ``reject``: the AI finding is wrong (a false positive).
    ``relabel``: right place, other class (optionally with a corrected box). ``add``: a finding the AI
    missed, drawn by the reviewer. ``delete``: the AI box is dropped without judging it (a duplicate or
    overlapping box). The first four carry information for training; only confirm, relabel and add
    produce boxes in an export.
    """

    CONFIRM = "confirm"
    REJECT = "reject"
    RELABEL = "relabel"
    ADD = "add"
    DELETE = "delete"


class Review(Base):
    """A radiologist's reading of one image. Stored beside the AI output (the inference and its findings
    are never modified); ``inference_id`` is the AI result the reviewer saw, ``None`` when there was none.
    ``label`` is the reviewer's image-level conclusion (covid19 | pneumonia | normal), required to sign."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    inference_id: Mapped[int | None] = mapped_column(ForeignKey("inferences.id"))
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.DRAFT.value, index=True)
    label: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: Set when signed: the reviewer's first signed review of the same image, which this one amends
    #: (an addendum); ``None`` for a first report. A radiologist signs one report per image, and any
    #: later signature of the same image is an addendum that refers to it (revision 0005).
    amends_review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"), index=True)

    reviewer: Mapped[User] = relationship()
    image: Mapped[Image] = relationship()
    findings: Mapped[list[ReviewFinding]] = relationship(
        back_populates="review", cascade="all, delete-orphan", order_by="ReviewFinding.id"
    )


class ReviewFinding(Base):
    """One action of a review on one box. ``source_finding_id`` is the AI finding it refers to (``None``
    for ``add``); ``label`` and the box ``[x1, y1, x2, y2]`` (original-image pixels) are the result of
    the action: the reviewer's for relabel and add, a copy of the AI's for confirm, reject and delete
    (so a review reads alone, without joining the findings)."""

    __tablename__ = "review_findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"), index=True)
    source_finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id"))
    action: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(16))
    x1: Mapped[float | None] = mapped_column(Float)
    y1: Mapped[float | None] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)

    review: Mapped[Review] = relationship(back_populates="findings")


class StudyClaim(Base):
    """A radiologist reading a study now ("being read by"): at most one claim per study. Released when
    every image of the study has a signed review, or explicitly (by its holder or an admin)."""

    __tablename__ = "study_claims"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship()
