"""Accepting an image: validate, store durably, record, enqueue. Shared by the DICOM receiver and the
HTTPS upload, so both refuse and deduplicate the same way.

Order of work, and why: the image is validated by :func:`covidet.imaging.validate.validate_image`
(header first, so a bomb is refused before it can cost memory; then the chest-radiograph rules; then
one full decode, so that nothing acknowledged is undecodable); the file is written and fsynced to the
content-addressed store; the database rows are committed (SQLite ``synchronous=FULL``, PostgreSQL's
default commit durability); only then does the caller acknowledge (C-STORE success, HTTP 201). A
crash before the commit leaves at most an orphan file, never an acknowledged image that is missing.

A re-sent SOP Instance UID is acknowledged as a duplicate when it names the same patient and study
as the stored copy; when it names another (a "correction" re-sent under the same UID) it is refused
as a conflict, logged and kept in ``rejected_messages``, never silently ignored (docs/dicom.md).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.exc import IntegrityError

from covidet.domain import AnalysisQueue
from covidet.imaging.reader import ImageHeader, ImageReadError
from covidet.imaging.validate import NotChestRadiograph, validate_image
from covidet.ingest.storage import ImageStore
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import Image, ImageStatus

__all__ = ["ACCEPTED_SOP_CLASSES", "AcceptResult", "ImageIngest", "IngestRejected", "RejectionKind"]

logger = logging.getLogger(__name__)

#: Storage SOP classes of chest radiographs that covidet accepts.
ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}


#: Why an input was refused, for the caller's status code: ``too_large`` (size limits),
#: ``mismatch`` (readable, but not a chest radiograph covidet accepts, or not matching its SOP class),
#: ``undecodable`` (truncated, corrupt, unsupported encoding) or ``conflict`` (a SOP Instance UID
#: already stored for another patient or study).
RejectionKind = Literal["too_large", "mismatch", "undecodable", "conflict"]


class IngestRejected(Exception):
    """The input was refused; ``reason`` is one line for the sender and the log, ``kind`` the class
    of refusal (:data:`RejectionKind`). ``too_large=True`` is kept as a shorthand for that kind."""

    def __init__(self, reason: str, *, too_large: bool = False, kind: RejectionKind | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: RejectionKind = kind or ("too_large" if too_large else "undecodable")
        self.too_large = self.kind == "too_large"


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """An accepted image. ``duplicate`` is true when it was already stored (nothing new written)."""

    image_id: int
    study_id: int
    patient_id: int
    sop_instance_uid: str
    duplicate: bool


def _study_datetime(header: ImageHeader) -> datetime | None:
    if not header.study_date:
        return None
    text = header.study_date + (header.study_time or "000000").split(".")[0].ljust(6, "0")[:6]
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


class ImageIngest:
    """Accepts images into ``store`` and ``db`` and hands them to ``analysis_queue``. Thread-safe."""

    def __init__(
        self,
        db: Database,
        store: ImageStore,
        analysis_queue: AnalysisQueue,
        *,
        max_bytes: int,
        max_pixels: int,
        max_decode_bytes: int | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.queue = analysis_queue
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        # None: validate_image's own default (COVIDET_MAX_DECODE_BYTES, else 512 MiB)
        self.max_decode_bytes = max_decode_bytes

    def reject(self, channel: str, source: str | None, reason: str, payload: bytes | None) -> None:
        """Log a refusal and keep it in ``rejected_messages``; never raises."""
        logger.warning("%s input from %s refused: %s", channel, source or "unknown sender", reason)
        try:
            with self.db.session() as session:
                queries.add_rejected(session, channel=channel, source=source, reason=reason, payload=payload)
        except Exception:
            logger.exception("could not record the refused %s input", channel)

    def accept(
        self,
        data: bytes,
        *,
        channel: str,
        device_id: int | None,
        source: str | None = None,
        dataset: Dataset | None = None,
        filename: str | None = None,
        patient_key: str | None = None,
    ) -> AcceptResult:
        """Validate, store, record and enqueue one image.

        ``data`` is the complete file (DICOM Part 10, PNG or JPEG); ``dataset`` the already parsed
        DICOM when the caller has it (the receiver), so it is not parsed twice. ``patient_key``
        names the patient of a PNG/JPEG (DICOM carries its own PatientID).

        Raises:
            IngestRejected: bad or unacceptable input (already logged and recorded).
        """
        name = filename or source or channel
        try:
            if len(data) > self.max_bytes:
                raise IngestRejected(
                    f"{len(data)} bytes is more than the limit of {self.max_bytes}", too_large=True
                )
            try:
                header = self._validate(data, dataset, name)
            except NotChestRadiograph as exc:
                raise IngestRejected(str(exc), kind="mismatch") from exc
            except ImageReadError as exc:
                text = str(exc)
                kind: RejectionKind = (
                    "too_large"
                    if "too large" in text
                    else "mismatch"
                    if "no pixel data" in text
                    else "undecodable"
                )
                raise IngestRejected(text, kind=kind) from exc
        except IngestRejected as exc:
            self.reject(channel, source, exc.reason, data)
            raise
        try:
            return self._store_and_record(data, header, channel, device_id, filename, patient_key)
        except IngestRejected as exc:  # a conflicting re-send
            self.reject(channel, source, exc.reason, data)
            raise

    def _validate(self, data: bytes, dataset: Dataset | None, name: str) -> ImageHeader:
        """The shared acceptance check; the SOP class rules come first, so a CT or a covidet report is
        refused by what it is before its pixels are looked at."""
        if dataset is not None and str(dataset.get("SOPClassUID") or "") not in ACCEPTED_SOP_CLASSES:
            raise IngestRejected(self._sop_class_reason(dataset.get("SOPClassUID")), kind="mismatch")
        header = validate_image(
            data,
            dataset=dataset,
            name=name,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            max_decode_bytes=self.max_decode_bytes,
        ).header
        if header.media_type == "application/dicom":
            if header.sop_class_uid not in ACCEPTED_SOP_CLASSES:
                raise IngestRejected(self._sop_class_reason(header.sop_class_uid), kind="mismatch")
            if header.capture_device_manufacturer == "covidet":
                # A report that covidet itself made (forwarded to a PACS that routes it back):
                # analysing it would feed the AI its own burned-in boxes.
                raise IngestRejected(
                    "this is a covidet AI report (Secondary Capture), not an X-ray", kind="mismatch"
                )
            if not header.sop_instance_uid or not header.study_instance_uid:
                raise IngestRejected("DICOM lacks SOPInstanceUID or StudyInstanceUID", kind="mismatch")
        return header

    @staticmethod
    def _sop_class_reason(sop_class: str | None) -> str:
        return (
            f"SOP class {sop_class or '(none)'} is not a chest radiograph class covidet accepts "
            f"({', '.join(ACCEPTED_SOP_CLASSES.values())})"
        )

    def _store_and_record(
        self,
        data: bytes,
        header: ImageHeader,
        channel: str,
        device_id: int | None,
        filename: str | None,
        patient_key: str | None,
    ) -> AcceptResult:
        sha256 = hashlib.sha256(data).hexdigest()
        if header.media_type == "application/dicom":
            sop_uid, study_uid = header.sop_instance_uid, header.study_instance_uid
            patient_key = header.patient_id or f"unidentified-{study_uid[-24:]}"
        else:
            # Deterministic UIDs from the bytes: the same upload twice is the same image.
            sop_uid = generate_uid(entropy_srcs=["covidet-upload-image", sha256])
            study_uid = generate_uid(entropy_srcs=["covidet-upload-study", sha256])
            patient_key = (patient_key or "").strip() or f"unidentified-{sha256[:16]}"
        assert sop_uid and study_uid
        # For a PNG/JPEG the patient is the uploader's word; one sent without it names no patient.
        claimed = (
            patient_key
            if header.media_type == "application/dicom" or not patient_key.startswith("unidentified-")
            else None
        )

        with self.db.session() as session:
            existing = queries.image_by_sop_instance_uid(session, sop_uid)
            if existing is not None:
                return self._duplicate(existing, channel, claimed, study_uid)

        stored = self.store.put(data, header.media_type, sha256=sha256)
        try:
            with self.db.session(write=True) as session:
                existing = queries.image_by_sop_instance_uid(session, sop_uid)
                if existing is not None:
                    return self._duplicate(existing, channel, claimed, study_uid)
                patient = queries.get_or_create_patient(session, patient_key, name=header.patient_name)
                study = queries.get_or_create_study(
                    session,
                    study_uid,
                    patient,
                    accession_number=header.accession_number,
                    description=header.study_description,
                    study_datetime=_study_datetime(header),
                )
                image = queries.add_image(
                    session,
                    Image(
                        sop_instance_uid=sop_uid,
                        sop_class_uid=header.sop_class_uid,
                        series_instance_uid=header.series_instance_uid,
                        content_sha256=stored.sha256,
                        path=stored.path,
                        size_bytes=stored.size_bytes,
                        media_type=header.media_type,
                        modality=header.modality,
                        transfer_syntax_uid=header.transfer_syntax_uid,
                        rows=header.height,
                        columns=header.width,
                        original_filename=filename[:255] if filename else None,
                        study_id=study.id,
                        source_device_id=device_id,
                        status=ImageStatus.QUEUED.value,
                    ),
                )
                result = AcceptResult(image.id, study.id, patient.id, sop_uid, duplicate=False)
        except IntegrityError:  # the same SOP instance committed by a concurrent association
            with self.db.session() as session:
                existing = queries.image_by_sop_instance_uid(session, sop_uid)
                if existing is None:
                    raise
                return self._duplicate(existing, channel, claimed, study_uid)
        logger.info(
            "%s image %d accepted (SOP %s, %d bytes, patient #%d)",
            channel,
            result.image_id,
            sop_uid,
            stored.size_bytes,
            result.patient_id,
        )
        try:
            self.queue.enqueue(result.image_id)
        except Exception:  # the image is safe in the database as 'queued'; requeue_pending finds it
            logger.exception("could not enqueue image %d; it stays queued in the database", result.image_id)
        return result

    def _duplicate(
        self, existing: Image, channel: str, patient_key: str | None, study_uid: str
    ) -> AcceptResult:
        """The answer to a re-send of ``existing``: a duplicate when it names the same patient and
        study (``patient_key`` ``None``: no patient named), else :class:`IngestRejected` (conflict).

        Why refuse rather than update: the stored copy may already be assessed, reviewed and
        reported under the first patient; moving it silently would move a signed review with it.
        PACS behave alike by default (Orthanc keeps the first copy, ``OverwriteInstances`` false;
        dcm4chee-arc refuses conflicting patient attributes). The operator corrects the record.
        """
        stored_patient = existing.study.patient.patient_key
        stored_study = existing.study.study_instance_uid
        differs = [
            what
            for what, same in (
                ("PatientID", patient_key is None or patient_key == stored_patient),
                ("StudyInstanceUID", study_uid == stored_study),
            )
            if not same
        ]
        if differs:
            raise IngestRejected(
                f"conflict: already stored with another {' and '.join(differs)} (image {existing.id}, "
                f"SOP instance {existing.sop_instance_uid}); a correction needs a new SOP Instance "
                "UID or an operator's change in covidet",
                kind="conflict",
            )
        logger.info("%s image %s already stored as image %d", channel, existing.sop_instance_uid, existing.id)
        return AcceptResult(
            existing.id,
            existing.study_id,
            existing.study.patient_id,
            existing.sop_instance_uid,
            duplicate=True,
        )
