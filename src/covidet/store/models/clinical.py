"""The tables of the clinical pipeline: devices, patients, studies, images, vital signs, refused
messages, inferences and their findings, triage history, alerts, and the DICOM objects covidet keeps."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from covidet.store.models.base import Base, UTCDateTime, utcnow


class DeviceKind(StrEnum):
    """What a device may do: send DICOM (modality), publish vitals (sensor), upload over HTTPS, query and
    retrieve over DICOM Q/R (workstation: PACS workstations and viewers; never sends images)."""

    MODALITY = "modality"
    SENSOR = "sensor"
    UPLOADER = "uploader"
    WORKSTATION = "workstation"


class ImageStatus(StrEnum):
    """Where an accepted image is in the pipeline."""

    QUEUED = "queued"  # stored and recorded, waiting for analysis
    ANALYSED = "analysed"
    FAILED = "failed"


class Device(Base):
    """A registered sender. Credentials are stored hashed only; the secrets are shown once at creation."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    ae_title: Mapped[str | None] = mapped_column(String(16), unique=True)
    api_key_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    mqtt_username: Mapped[str | None] = mapped_column(String(64), unique=True)
    #: Mosquitto password-file line hash (PBKDF2-SHA512, ``$7$``), so the file can be rewritten any time.
    mqtt_password_hash: Mapped[str | None] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Patient(Base):
    """A patient, keyed by the identifier the devices send (DICOM PatientID or the vitals payload)."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    """A DICOM study (Study Instance UID), or one synthetic study per upload without DICOM."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(256))
    study_datetime: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    images: Mapped[list[Image]] = relationship(back_populates="study")


class Image(Base):
    """An accepted image file. ``path`` is relative to the image store; the file is named by its hash."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    #: From the DICOM header; ``None`` for PNG/JPEG uploads and for images stored before revision 0004
    #: (:func:`covidet.store.archive_queries.image_series_uid` gives every image one).
    series_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    original_filename: Mapped[str | None] = mapped_column(String(255))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    source_device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.QUEUED.value, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: Current triage priority (urgent | high | routine), copied from the newest TriageRecord so the
    #: worklist can sort without a join; ``None`` until the image is triaged.
    priority: Mapped[str | None] = mapped_column(String(16), index=True)
    priority_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    study: Mapped[Study] = relationship(back_populates="images")
    source_device: Mapped[Device | None] = relationship()


class VitalSignRecord(Base):
    """One set of bedside measurements. (device, patient, measured_at) is unique: a QoS-1 redelivery
    of the same message is stored once."""

    __tablename__ = "vital_signs"
    __table_args__ = (
        UniqueConstraint("device_id", "patient_id", "measured_at", name="uq_vital_signs_reading"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))
    measured_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    spo2_percent: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    heart_rate_per_min: Mapped[float | None] = mapped_column(Float)
    respiratory_rate_per_min: Mapped[float | None] = mapped_column(Float)
    systolic_bp_mmhg: Mapped[float | None] = mapped_column(Float)


class RejectedMessage(Base):
    """Input that was refused, kept with the reason so nothing is dropped silently."""

    __tablename__ = "rejected_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    channel: Mapped[str] = mapped_column(String(16))  # mqtt | dicom | upload
    source: Mapped[str | None] = mapped_column(String(255))  # topic, AE title or device name
    reason: Mapped[str] = mapped_column(Text)
    #: The first 64 KiB of the payload, as received.
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)


class InferenceStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the last attempt failed; ``attempts`` says how many were made


class Inference(Base):
    """One run of one model version on one image: unique per (image, model name, model version), which
    makes the analysis job idempotent. Timings are seconds."""

    __tablename__ = "inferences"
    __table_args__ = (
        UniqueConstraint("image_id", "model_name", "model_version", name="uq_inferences_image_model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    decision_rule: Mapped[str | None] = mapped_column(String(64))
    threshold: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=InferenceStatus.RUNNING.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(16))
    #: Image-level class probabilities, {"covid19": p, "pneumonia": p, "normal": p}.
    probabilities: Mapped[dict[str, float] | None] = mapped_column(JSON)
    read_seconds: Mapped[float | None] = mapped_column(Float)
    detect_seconds: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    image: Mapped[Image] = relationship()
    findings: Mapped[list[FindingRecord]] = relationship(
        back_populates="inference", cascade="all, delete-orphan", order_by="FindingRecord.score.desc()"
    )


class FindingRecord(Base):
    """One detected region: box ``[x1, y1, x2, y2]`` in original-image pixels, class and score."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inference_id: Mapped[int] = mapped_column(ForeignKey("inferences.id"), index=True)
    label: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)

    inference: Mapped[Inference] = relationship(back_populates="findings")


class TriageRecord(Base):
    """A priority computed for an image from its assessment and the patient's recent vitals. Kept as
    history: a vital sign arriving later adds a new record rather than changing an old one."""

    __tablename__ = "triage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    inference_id: Mapped[int | None] = mapped_column(ForeignKey("inferences.id"))
    priority: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(16))
    news2_partial: Mapped[int | None] = mapped_column(Integer)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    #: Ids of the vital_signs rows used.
    vital_sign_ids: Mapped[list[int]] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Alert(Base):
    """An urgent result, raised when an image's priority becomes urgent; acknowledged by a person."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    triage_id: Mapped[int] = mapped_column(ForeignKey("triage.id"))
    priority: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))


class DicomObjectKind(StrEnum):
    """DICOM objects covidet makes and keeps: the AI result as a TID 1500 SR, a signed review as an SR
    that refers to it."""

    AI_SR = "ai-sr"
    REVIEW_SR = "review-sr"


class DicomObject(Base):
    """A DICOM object covidet made (an SR) and keeps in the image store, in the study of its source
    image, so that DICOMweb and Query/Retrieve serve it beside the X-ray. ``path`` is relative to the
    image store. One AI SR per inference and one review SR per signed review (unique constraints make
    storing idempotent)."""

    __tablename__ = "dicom_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    inference_id: Mapped[int | None] = mapped_column(ForeignKey("inferences.id"), unique=True)
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"), unique=True)
    content_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    study: Mapped[Study] = relationship()
    image: Mapped[Image] = relationship()
