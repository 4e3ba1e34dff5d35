"""The JSON shapes of the device simulator: what a sensor publishes, and what ``covidet simulate``
prints (``--help`` and docs/simulate.md describe the fields).

These are ``TypedDict`` s: plain dicts at run time (``json.dumps`` takes them as they are), with
their keys and value types written down once.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = [
    "ModalityJson",
    "PatientJson",
    "SendFailure",
    "SimulationJson",
    "VitalsJson",
    "VitalsMessage",
]


class VitalsMessage(TypedDict):
    """One MQTT vitals message, as covidet's subscriber validates it: the patient, when (ISO 8601 UTC
    with its offset), SpO2 %, temperature °C (0.1), heart and respiratory rate per minute, systolic
    blood pressure mmHg."""

    patient_id: str
    timestamp: str
    spo2: int
    temperature: float
    heart_rate: int
    respiratory_rate: int
    systolic_bp: int


class SendFailure(TypedDict):
    """An image the modality could not get acknowledged: its file, the DICOM status of the answer
    (``"0xA700"``; ``None`` when no answer came) and why."""

    file: str
    status: str | None
    reason: str


class ModalityJson(TypedDict):
    """``covidet simulate``'s ``images`` object (:meth:`ModalityReport.to_json`)."""

    peer: str
    total: int
    sent: int
    acknowledged: int
    failed: int
    statuses: dict[str, int]
    failures: list[SendFailure]


class VitalsJson(TypedDict):
    """``covidet simulate``'s ``vitals`` object (:meth:`VitalsReport.to_json`)."""

    topic: str
    patients: int
    published: int
    acknowledged: int
    failed: int
    errors: list[str]


class PatientJson(TypedDict):
    """A simulated patient: the id sent as ``PatientID`` and ``patient_id``, its label, its images."""

    patient_id: str
    label: str | None
    images: int


class SimulationJson(TypedDict):
    """What ``covidet simulate`` prints: ``images`` / ``vitals`` are ``None`` when switched off."""

    ok: bool
    patients: list[PatientJson]
    images: ModalityJson | None
    vitals: VitalsJson | None
