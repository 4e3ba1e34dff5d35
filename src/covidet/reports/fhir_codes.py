"""The terminology of covidet's FHIR report: code systems, identifier systems, the SNOMED CT concept of
each class (:data:`LABEL_CODES`, shared with the DICOM SRs) and the LOINC code and UCUM unit of each vital
sign (:data:`VITAL_SIGN_CODES`). Constants only; :mod:`covidet.reports.fhir` builds the resources and
re-exports these names. See ``docs/reports.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from covidet.domain import Label

__all__ = [
    "IMAGE_IDENTIFIER_SYSTEM",
    "LABEL_CODES",
    "LABEL_TEXT",
    "LOINC",
    "LUNG",
    "OBSERVATION_CATEGORY",
    "PATIENT_IDENTIFIER_SYSTEM",
    "PRIORITY_SYSTEM",
    "REPORT_CODE",
    "REPORT_IDENTIFIER_SYSTEM",
    "SNOMED",
    "UCUM",
    "V2_0074",
    "V2_0203",
    "VITAL_SIGN_CODES",
    "VitalCode",
]

# ------------------------------------------------------------------------------------------ terminology

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

#: Identifier systems of covidet's own keys (URNs: valid FHIR ``uri``\ s that need no web server).
REPORT_IDENTIFIER_SYSTEM = "urn:covidet:report-id"
PATIENT_IDENTIFIER_SYSTEM = "urn:covidet:patient-key"
IMAGE_IDENTIFIER_SYSTEM = "urn:covidet:image-id"
PRIORITY_SYSTEM = "urn:covidet:triage-priority"

#: LOINC 36554-4 "XR Chest Single view" (as used by IHE RAD IDR's single-view chest X-ray example):
#: the report is about one frontal radiograph.
REPORT_CODE: dict[str, str] = {"system": LOINC, "code": "36554-4", "display": "XR Chest Single view"}

#: SNOMED CT concept of each class: COVID-19 (840539006 "Disease caused by severe acute respiratory
#: syndrome coronavirus 2"), pneumonia (233604007) and normal (17621005, a qualifier value).
LABEL_CODES: dict[Label, dict[str, str]] = {
    Label.COVID19: {
        "system": SNOMED,
        "code": "840539006",
        "display": "Disease caused by severe acute respiratory syndrome coronavirus 2",
    },
    Label.PNEUMONIA: {"system": SNOMED, "code": "233604007", "display": "Pneumonia"},
    Label.NORMAL: {"system": SNOMED, "code": "17621005", "display": "Normal"},
}
LABEL_TEXT = {Label.COVID19: "COVID-19", Label.PNEUMONIA: "Pneumonia", Label.NORMAL: "Normal"}
LUNG = {"system": SNOMED, "code": "39607008", "display": "Lung structure"}


@dataclass(frozen=True)
class VitalCode:
    """How one :class:`~covidet.domain.VitalSign` field is coded in FHIR."""

    attribute: str  # field of VitalSign
    codings: tuple[dict[str, str], ...]  # LOINC; the first is the one FHIR's vital-signs profile names
    text: str
    unit: str  # UCUM code (also the human unit)


#: LOINC code and UCUM unit of each :class:`VitalSign` field (FHIR R4B vital-signs profile codes;
#: SpO2 carries both 2708-6 and the pulse-oximetry specific 59408-5).
VITAL_SIGN_CODES: tuple[VitalCode, ...] = (
    VitalCode(
        "spo2_percent",
        (
            {"system": LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"},
            {
                "system": LOINC,
                "code": "59408-5",
                "display": "Oxygen saturation in Arterial blood by Pulse oximetry",
            },
        ),
        "SpO2",
        "%",
    ),
    VitalCode(
        "temperature_c",
        ({"system": LOINC, "code": "8310-5", "display": "Body temperature"},),
        "Body temperature",
        "Cel",
    ),
    VitalCode(
        "heart_rate_per_min",
        ({"system": LOINC, "code": "8867-4", "display": "Heart rate"},),
        "Heart rate",
        "/min",
    ),
    VitalCode(
        "respiratory_rate_per_min",
        ({"system": LOINC, "code": "9279-1", "display": "Respiratory rate"},),
        "Respiratory rate",
        "/min",
    ),
    VitalCode(
        "systolic_bp_mmhg",
        ({"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"},),
        "Systolic blood pressure",
        "mm[Hg]",
    ),
)
