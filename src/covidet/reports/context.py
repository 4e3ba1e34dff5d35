"""What a report says: :class:`ReportContext`, the plain data (no database, no torch) from which every
report output is a pure function -- the FHIR DiagnosticReport (:mod:`covidet.reports.fhir`), the DICOM
Secondary Capture (:mod:`covidet.reports.dicom_sc`) and the DICOM SRs (:mod:`covidet.reports.dicom_sr`,
:mod:`covidet.reports.review_sr`) -- and what they share: UTC time and the atomic write of a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from covidet.domain import Assessment, Finding, Priority, VitalSign
from covidet.store.files import write_file_atomically

__all__ = ["ReportContext", "as_utc", "write_atomically"]


@dataclass(frozen=True)
class ReportContext:
    """Everything a report says, gathered by the caller (worker or API) from the store.

    ``patient_key`` is the patient identifier the devices sent (the DICOM PatientID). ``findings``
    hold boxes in pixels of the original image. ``assessment`` and ``priority`` are ``None`` when the
    image was not assessed or not triaged; ``reasons`` explain ``priority``; ``vitals`` are the vital
    sign sets the triage used. ``issued_at`` is UTC (a naive value is taken as UTC). ``report_id`` is
    stable for one report: the same id gives the same FHIR resource id and the same DICOM UIDs, so a
    report sent twice is recognised as the same object (a FHIR ``PUT`` by id, a repeated SOP instance).
    """

    patient_key: str
    patient_name: str | None
    study_instance_uid: str
    source_sop_instance_uid: str | None
    source_sop_class_uid: str | None
    accession_number: str | None
    image_id: int
    model_name: str
    model_version: str
    decision_rule: str
    threshold: float
    findings: list[Finding]
    assessment: Assessment | None
    priority: Priority | None
    reasons: list[str]
    vitals: list[VitalSign]
    issued_at: datetime
    report_id: str
    #: Store id of the inference reported (``None`` when unknown): keys the DICOM SR's UIDs.
    inference_id: int | None = None

    @property
    def model_label(self) -> str:
        """``"covidet <model> <version>"``: how every output names what produced it."""
        return f"covidet {self.model_name} {self.model_version}"


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive value is taken as UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def write_atomically(out: Path, data: bytes) -> None:
    """Write ``data`` to ``out`` so that a reader never sees a half-written report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(out, data)
