"""Reports out: the AI result of one image in formats hospitals read.

Two outputs, both pure functions of a :class:`ReportContext` (plain data: no database, no torch):

* :func:`fhir_diagnostic_report` -- a FHIR R4B ``DiagnosticReport`` (status ``preliminary``: an AI
  result nobody has reviewed) with contained ``Observation``\\ s for each finding, the image-level class
  probabilities, the triage priority and the vital signs used, and a contained ``Device`` naming the
  model. Built and validated with ``fhir.resources``; returned as a JSON-ready dict.
* :func:`dicom_secondary_capture` -- a DICOM Secondary Capture image (8-bit RGB) of the X-ray with the
  boxes, labels, scores and a "NOT FOR CLINICAL USE" banner burned in, filed into the source study so
  that it appears beside the original in any PACS viewer.

Every output names the model, its version and :data:`covidet.DISCLAIMER`. See ``docs/reports.md``.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, PYDICOM_ROOT_UID, ExplicitVRLittleEndian, generate_uid

from covidet import DISCLAIMER, __version__
from covidet.domain import Assessment, Finding, Label, Priority, VitalSign

__all__ = [
    "LABEL_CODES",
    "PATIENT_IDENTIFIER_SYSTEM",
    "REPORT_CODE",
    "REPORT_IDENTIFIER_SYSTEM",
    "SECONDARY_CAPTURE_SOP_CLASS",
    "VITAL_SIGN_CODES",
    "ReportContext",
    "dicom_secondary_capture",
    "fhir_diagnostic_report",
    "write_atomically",
    "write_report",
]

# ------------------------------------------------------------------------------------------ terminology

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

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
_LABEL_TEXT = {Label.COVID19: "COVID-19", Label.PNEUMONIA: "Pneumonia", Label.NORMAL: "Normal"}
_LUNG = {"system": SNOMED, "code": "39607008", "display": "Lung structure"}


@dataclass(frozen=True)
class _VitalCode:
    attribute: str  # field of VitalSign
    codings: tuple[dict[str, str], ...]  # LOINC; the first is the one FHIR's vital-signs profile names
    text: str
    unit: str  # UCUM code (also the human unit)


#: LOINC code and UCUM unit of each :class:`VitalSign` field (FHIR R4B vital-signs profile codes;
#: SpO2 carries both 2708-6 and the pulse-oximetry specific 59408-5).
VITAL_SIGN_CODES: tuple[_VitalCode, ...] = (
    _VitalCode(
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
    _VitalCode(
        "temperature_c",
        ({"system": LOINC, "code": "8310-5", "display": "Body temperature"},),
        "Body temperature",
        "Cel",
    ),
    _VitalCode(
        "heart_rate_per_min",
        ({"system": LOINC, "code": "8867-4", "display": "Heart rate"},),
        "Heart rate",
        "/min",
    ),
    _VitalCode(
        "respiratory_rate_per_min",
        ({"system": LOINC, "code": "9279-1", "display": "Respiratory rate"},),
        "Respiratory rate",
        "/min",
    ),
    _VitalCode(
        "systolic_bp_mmhg",
        ({"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"},),
        "Systolic blood pressure",
        "mm[Hg]",
    ),
)

#: SOP Class UID of Secondary Capture Image Storage.
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"

# ---------------------------------------------------------------------------------------------- context


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


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z")


_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _fhir_id(report_id: str) -> str:
    """The report id as a FHIR ``id`` (64 chars of ``[A-Za-z0-9-.]``), else a stable hash of it."""
    if _FHIR_ID.match(report_id):
        return report_id
    return "covidet-" + hashlib.sha256(report_id.encode()).hexdigest()[:40]


# ------------------------------------------------------------------------------------------------- FHIR


def _quantity(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    return {"value": float(value), "unit": unit, "system": UCUM, "code": code or unit}


def _label_concept(label: Label) -> dict[str, Any]:
    return {"coding": [LABEL_CODES[Label(label)]], "text": _LABEL_TEXT[Label(label)]}


def _category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": _OBS_CATEGORY, "code": code, "display": display}]}]


def _conclusion(ctx: ReportContext) -> str:
    parts = [f"Preliminary AI result of {ctx.model_label}, not reviewed by a radiologist."]
    if ctx.assessment is not None:
        label = Label(ctx.assessment.label)
        prob = ctx.assessment.probabilities.get(label)
        prob_text = f", probability {prob:.2f}" if prob is not None else ""
        parts.append(
            f"Image-level assessment: {label.value} ({_LABEL_TEXT[label]}{prob_text}; "
            f"rule {ctx.decision_rule}, threshold {ctx.threshold:g})."
        )
    else:
        parts.append("No image-level assessment.")
    parts.append(f"{len(ctx.findings)} region(s) detected.")
    if ctx.priority is not None:
        reasons = "; ".join(ctx.reasons) if ctx.reasons else "no reason recorded"
        parts.append(f"Triage priority: {Priority(ctx.priority).value} ({reasons}).")
    parts.append(f"{DISCLAIMER.capitalize()}.")
    return " ".join(parts)


def _narrative(ctx: ReportContext, conclusion: str) -> dict[str, str]:
    rows = "".join(
        f"<li>{html.escape(Label(f.label).value)} score {f.score:.2f} box "
        f"[{', '.join(f'{v:.1f}' for v in f.box.as_list())}] px</li>"
        for f in ctx.findings
    )
    findings = f"<ul>{rows}</ul>" if rows else "<p>No region detected.</p>"
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml">'
        f"<p><b>{html.escape(ctx.model_label)}: {html.escape(DISCLAIMER.upper())}</b></p>"
        f"<p>{html.escape(conclusion)}</p>{findings}</div>"
    )
    return {"status": "generated", "div": div}


def _display_name(name: str) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``) as readable text; other names unchanged."""
    if "^" not in name:
        return name
    family, given, middle, prefix, suffix = ([*name.split("=")[0].split("^"), "", "", "", ""])[:5]
    return " ".join(part for part in (prefix, given, middle, family, suffix) if part) or name


def _device(ctx: ReportContext) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": "model",
        "status": "active",
        "manufacturer": "covidet",
        "deviceName": [{"name": ctx.model_name, "type": "model-name"}],
        "modelNumber": ctx.model_name,
        "version": [
            {"value": ctx.model_version},
            {"type": {"text": "covidet software"}, "value": __version__},
        ],
        "type": {"text": "AI software: Faster R-CNN chest X-ray detector (covid19 / pneumonia / normal)"},
        "note": [{"text": f"{ctx.model_label}. Research software: {DISCLAIMER}."}],
    }


def _finding_observation(ctx: ReportContext, index: int, finding: Finding, common: dict[str, Any]) -> dict:
    label = Label(finding.label)
    box = finding.box
    corner_names = ("x1 (left)", "y1 (top)", "x2 (right)", "y2 (bottom)")
    return {
        "resourceType": "Observation",
        "id": f"finding-{index}",
        **common,
        "category": _category("imaging", "Imaging"),
        "code": {"coding": [LABEL_CODES[label]], "text": f"{_LABEL_TEXT[label]} region (AI detection)"},
        "bodySite": {"coding": [_LUNG]},
        # The detector's calibrated score in [0, 1]; UCUM "1" is the unity (dimensionless) unit.
        "valueQuantity": _quantity(finding.score, "score", "1"),
        # Pixel corners of the original image, top-left origin; UCUM has no pixel unit, so the
        # annotation {pixel} (a unity with a label) says what the number counts.
        "component": [
            {"code": {"text": f"bounding box {name}, pixels of the original image"}, "valueQuantity": q}
            for name, q in zip(
                corner_names, (_quantity(v, "pixel", "{pixel}") for v in box.as_list()), strict=True
            )
        ],
        "note": [
            {
                "text": (
                    f"{label.value} region [x1, y1, x2, y2] = {[round(v, 2) for v in box.as_list()]} px "
                    f"(original image, top-left origin), score {finding.score:.3f}; "
                    f"{ctx.model_label}; {DISCLAIMER}."
                )
            }
        ],
    }


def _assessment_observation(ctx: ReportContext, assessment: Assessment, common: dict[str, Any]) -> dict:
    components = [
        {"code": _label_concept(label), "valueQuantity": _quantity(prob, "probability", "1")}
        for label, prob in sorted(assessment.probabilities.items(), key=lambda item: Label(item[0]).value)
    ]
    components.append(
        {
            "code": {"text": "disease-score threshold under which the image is called normal"},
            "valueQuantity": _quantity(assessment.threshold, "probability", "1"),
        }
    )
    return {
        "resourceType": "Observation",
        "id": "image-assessment",
        **common,
        "identifier": [{"system": IMAGE_IDENTIFIER_SYSTEM, "value": str(ctx.image_id)}],
        "category": _category("imaging", "Imaging"),
        "code": {"text": "Image-level chest X-ray class (AI assessment)"},
        "method": {"text": f"decision rule: {ctx.decision_rule}"},
        "valueCodeableConcept": _label_concept(assessment.label),
        "component": components,
        "note": [{"text": f"Class probabilities from {ctx.model_label}; {DISCLAIMER}."}],
    }


def _triage_observation(
    ctx: ReportContext, priority: Priority, derived_from: list[str], common: dict[str, Any]
) -> dict:
    priority = Priority(priority)
    reasons = ctx.reasons or ["no reason recorded"]
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "triage",
        **common,
        "category": _category("survey", "Survey"),
        "code": {"text": "Triage priority (covidet early assessment)"},
        "valueCodeableConcept": {
            "coding": [
                {"system": PRIORITY_SYSTEM, "code": priority.value, "display": priority.value.title()}
            ],
            "text": priority.value,
        },
        "note": [{"text": reason} for reason in reasons]
        + [{"text": f"Triage by {ctx.model_label} and covidet {__version__}; {DISCLAIMER}."}],
    }
    if derived_from:
        observation["derivedFrom"] = [{"reference": f"#{ref}"} for ref in derived_from]
    return observation


def _vital_observations(ctx: ReportContext, subject: dict[str, Any]) -> list[dict[str, Any]]:
    observations: list[dict[str, Any]] = []
    for set_index, vital in enumerate(ctx.vitals, start=1):
        for code in VITAL_SIGN_CODES:
            value = getattr(vital, code.attribute)
            if value is None:
                continue
            observations.append(
                {
                    "resourceType": "Observation",
                    "id": f"vital-{set_index}-{code.attribute.split('_')[0]}",
                    # A sensor measurement, not an AI output: final as measured.
                    "status": "final",
                    "category": _category("vital-signs", "Vital Signs"),
                    "code": {"coding": list(code.codings), "text": code.text},
                    "subject": subject,
                    "effectiveDateTime": _iso(vital.measured_at),
                    "valueQuantity": _quantity(value, code.unit),
                }
            )
    return observations


def fhir_diagnostic_report(ctx: ReportContext) -> dict[str, Any]:
    """The FHIR R4B ``DiagnosticReport`` of one analysed image, as a JSON-ready dict.

    Contract:

    * ``status`` is ``preliminary`` (an unreviewed AI result); ``category`` is HL7 v2-0074 ``RAD``;
      ``code`` is LOINC 36554-4 (XR Chest Single view); ``subject`` is a logical reference to the
      Patient by identifier (``urn:covidet:patient-key`` | ``patient_key``); ``imagingStudy`` refers
      to the DICOM study by ``urn:dicom:uid``; the accession number, when known, identifies the order
      in ``basedOn``.
    * ``contained`` holds a ``Device`` (``#model``: model name, version, disclaimer) and, referenced
      from ``result`` in this order: one ``Observation`` per finding (``#finding-N``: SNOMED code of
      the class, score as ``valueQuantity``, the box corners as pixel components), the image-level
      class probabilities (``#image-assessment``, when assessed), the triage priority with its reasons
      as notes (``#triage``, when triaged) and one per vital-sign value used (``#vital-N-kind``, LOINC
      codes and UCUM units).
    * ``conclusion`` states the label, the priority, the model and "not for clinical use".

    The result is validated by ``fhir.resources`` (R4B) before it is returned; parsing it back with
    ``DiagnosticReport.model_validate`` gives the same resource.
    """
    issued = _iso(ctx.issued_at)
    subject: dict[str, Any] = {
        "type": "Patient",
        "identifier": {"system": PATIENT_IDENTIFIER_SYSTEM, "value": ctx.patient_key},
    }
    if ctx.patient_name:
        subject["display"] = _display_name(ctx.patient_name)
    ai_common: dict[str, Any] = {
        "status": "preliminary",
        "subject": subject,
        "issued": issued,
        "device": {"reference": "#model", "display": ctx.model_label},
    }

    findings = [_finding_observation(ctx, i, f, ai_common) for i, f in enumerate(ctx.findings, start=1)]
    vitals = _vital_observations(ctx, subject)
    observations = list(findings)
    if ctx.assessment is not None:
        observations.append(_assessment_observation(ctx, ctx.assessment, ai_common))
    if ctx.priority is not None:
        derived = [o["id"] for o in observations if o["id"] == "image-assessment"] + [v["id"] for v in vitals]
        observations.append(_triage_observation(ctx, ctx.priority, derived, ai_common))
    observations.extend(vitals)

    # Each contained resource is validated on its own first, so an error names the resource at fault.
    contained = [Device.model_validate(_device(ctx)).model_dump(mode="json")]
    contained += [Observation.model_validate(o).model_dump(mode="json") for o in observations]

    conclusion = _conclusion(ctx)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": _fhir_id(ctx.report_id),
        "meta": {"tag": [{"system": "urn:covidet", "code": "ai-preliminary", "display": DISCLAIMER}]},
        "text": _narrative(ctx, conclusion),
        "contained": contained,
        "identifier": [{"system": REPORT_IDENTIFIER_SYSTEM, "value": ctx.report_id}],
        "status": "preliminary",
        "category": [{"coding": [{"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [REPORT_CODE], "text": "Chest X-ray, AI early assessment"},
        "subject": subject,
        "effectiveDateTime": issued,
        "issued": issued,
        "imagingStudy": [
            {
                "type": "ImagingStudy",
                "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{ctx.study_instance_uid}"},
            }
        ],
        "result": [{"reference": f"#{o['id']}", "display": o["code"].get("text", "")} for o in observations],
        "conclusion": conclusion,
    }
    if ctx.assessment is not None:
        report["conclusionCode"] = [_label_concept(ctx.assessment.label)]
    if ctx.accession_number:
        report["basedOn"] = [
            {
                "type": "ServiceRequest",
                "identifier": {
                    "type": {"coding": [{"system": _V2_0203, "code": "ACSN", "display": "Accession ID"}]},
                    "value": ctx.accession_number,
                },
            }
        ]
    return DiagnosticReport.model_validate(report).model_dump(mode="json")


# ------------------------------------------------------------------------------------------------ DICOM

#: Box colours of the burned-in overlay (RGB): red for COVID-19, orange for pneumonia, green for normal.
_COLOURS: dict[Label, tuple[int, int, int]] = {
    Label.COVID19: (255, 40, 40),
    Label.PNEUMONIA: (255, 165, 0),
    Label.NORMAL: (60, 220, 60),
}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:  # Pillow >= 10.1 ships a scalable default font (needs FreeType)
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # older Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _burn_in(ctx: ReportContext, pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the X-ray with boxes, labels, scores and the disclaimer banner drawn on it."""
    gray = np.round(np.clip(np.nan_to_num(pixels, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    image = Image.fromarray(gray, mode="L").convert("RGB")
    draw = ImageDraw.Draw(image)
    height, width = gray.shape
    short = min(height, width)
    font = _font(max(12, short // 40))
    line = max(2, short // 300)
    stroke = max(1, line // 2)  # a dark outline keeps coloured text legible on bright lung fields

    for finding in ctx.findings:
        label = Label(finding.label)
        colour = _COLOURS[label]
        x1, y1, x2, y2 = (float(v) for v in finding.box.as_list())
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        text = f"{label.value} {finding.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        # Above the box when there is room, else just inside its top edge; never off the right side.
        above = y1 - (bottom - top) - line
        ty = (above if above >= 0 else y1 + line) - top
        tx = min(x1 + line, max(0.0, width - (right - left) - line)) - left
        draw.text((tx, ty), text, fill=colour, font=font, stroke_width=stroke, stroke_fill=(0, 0, 0))

    # The banner covers the bottom rows (below the diaphragm on a chest film, where no box is
    # expected) rather than an added strip, so that pixel (x, y) of the capture is pixel (x, y) of the
    # original, as the FHIR boxes are. ASCII only: the default font has no em dash glyph.
    banner = f"{ctx.model_label} - {DISCLAIMER.upper()}"
    left, top, right, bottom = draw.textbbox((0, 0), banner, font=font)
    pad = max(4, (bottom - top) // 3)
    band_top = height - (bottom - top) - 2 * pad
    draw.rectangle((0, band_top, width, height), fill=(0, 0, 0))
    draw.text((pad - left, band_top + pad - top), banner, fill=(255, 255, 0), font=font)
    return np.asarray(image, dtype=np.uint8)


def _lo(text: str) -> str:
    """A DICOM LO value: at most 64 characters, no backslash (the value separator)."""
    return text.replace("\\", "/")[:64]


#: Study- and patient-level attributes copied from the source header when one is given, so the capture
#: files cleanly into the existing study and patient in the PACS.
_COPIED_FROM_SOURCE = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "IssuerOfPatientID",
)


def dicom_secondary_capture(
    ctx: ReportContext,
    xray_pixels: np.ndarray,
    *,
    source: Dataset | None = None,
    uid_prefix: str = PYDICOM_ROOT_UID,
) -> Dataset:
    """A Secondary Capture Image Storage object of the X-ray with the AI result burned in.

    ``xray_pixels`` is the display-ready image (``XRayImage.pixels``: float32 (H, W) in [0, 1], 0 =
    black) on which the boxes of ``ctx.findings`` (original-image pixels) are drawn, coloured by class,
    with ``label score`` beside each, and a banner ``covidet <model> <version> - NOT FOR CLINICAL USE``
    across the bottom rows. Geometry is unchanged, so pixel (x, y) of the capture is pixel (x, y) of the
    source.

    The dataset is 8-bit RGB, Explicit VR Little Endian, with file meta (``save_as`` writes a Part 10
    file). It carries the source's PatientID (``patient_key``), PatientName, StudyInstanceUID and
    AccessionNumber, a new series and instance whose UIDs are derived from ``report_id`` (the same
    report gives the same UIDs, under ``uid_prefix``), Modality ``OT``, ConversionType ``WSD``,
    ImageType ``DERIVED\\SECONDARY``, BurnedInAnnotation ``YES``, the model, version and disclaimer in
    SeriesDescription, DerivationDescription and ImageComments, and, when the source SOP instance is
    known, ReferencedImageSequence and SourceImageSequence pointing to it. ``source`` (the source
    image's header, optional) supplies study-level attributes such as StudyDate.

    Raises:
        ValueError: if ``xray_pixels`` is not a non-empty 2-D array.
    """
    pixels = np.asarray(xray_pixels)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"xray_pixels must be a non-empty (H, W) array, got shape {pixels.shape}")
    rgb = _burn_in(ctx, pixels.astype(np.float32, copy=False))
    issued = _utc(ctx.issued_at)
    series_uid = generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "sc-series", ctx.report_id])
    sop_uid = generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "sc-instance", ctx.report_id])
    statement = (
        f"Secondary capture of the AI result of {ctx.model_label}: {len(ctx.findings)} region(s) "
        f"burned in as boxes with class and score"
        + (f", image-level {Label(ctx.assessment.label).value}" if ctx.assessment else "")
        + (f", triage priority {Priority(ctx.priority).value}" if ctx.priority else "")
        + f". Preliminary, unreviewed. {DISCLAIMER.upper()}."
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: patient names are not always ASCII
    ds.SOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = issued.strftime("%Y%m%d")
    ds.InstanceCreationTime = issued.strftime("%H%M%S")
    # Patient and study: those of the source, so that the capture lands in the same study.
    ds.PatientName = ctx.patient_name or ""
    ds.PatientID = ctx.patient_key
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = ctx.study_instance_uid
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ctx.accession_number or ""
    if source is not None:
        for keyword in _COPIED_FROM_SOURCE:
            if keyword in source and source[keyword].value not in (None, ""):
                setattr(ds, keyword, source[keyword].value)
    # Series: new, per report.
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 9001  # high, as derived series conventionally are, to sort after acquisitions
    ds.Modality = "OT"
    ds.SeriesDescription = _lo(f"AI {ctx.model_name} {ctx.model_version} NOT FOR CLINICAL USE")
    # SC equipment: who made the capture.
    ds.ConversionType = "WSD"  # workstation
    ds.Manufacturer = "covidet"
    ds.SecondaryCaptureDeviceManufacturer = "covidet"
    ds.SecondaryCaptureDeviceManufacturerModelName = _lo(ctx.model_name)
    ds.SecondaryCaptureDeviceSoftwareVersions = [_lo(ctx.model_version), _lo(f"covidet {__version__}")]
    ds.SoftwareVersions = [_lo(ctx.model_version), _lo(f"covidet {__version__}")]
    # General image.
    ds.InstanceNumber = 1
    ds.ContentDate = issued.strftime("%Y%m%d")
    ds.ContentTime = issued.strftime("%H%M%S")
    ds.DateOfSecondaryCapture = ds.ContentDate
    ds.TimeOfSecondaryCapture = ds.ContentTime
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    ds.DerivationDescription = statement[:1024]
    ds.ImageComments = statement
    if ctx.source_sop_instance_uid:
        reference = Dataset()
        # Without the class the reference is incomplete; DX for presentation is covidet's usual input.
        reference.ReferencedSOPClassUID = ctx.source_sop_class_uid or "1.2.840.10008.5.1.4.1.1.1.1"
        reference.ReferencedSOPInstanceUID = ctx.source_sop_instance_uid
        ds.ReferencedImageSequence = [reference]
        source_ref = Dataset()
        source_ref.ReferencedSOPClassUID = reference.ReferencedSOPClassUID
        source_ref.ReferencedSOPInstanceUID = reference.ReferencedSOPInstanceUID
        ds.SourceImageSequence = [source_ref]
    # Image pixel: 8-bit RGB, colour-by-pixel.
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = (int(n) for n in rgb.shape[:2])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    return ds


# ------------------------------------------------------------------------------------------- write out


def write_atomically(out: Path, data: bytes) -> None:
    """Write ``data`` to ``out`` so that a reader never sees a half-written report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(
    ctx: ReportContext,
    fmt: Literal["fhir", "dicom"],
    out: Path | str,
    xray_pixels: np.ndarray | None = None,
    *,
    source: Dataset | None = None,
) -> Path:
    """Write the report of ``ctx`` to ``out`` and return the path.

    ``fmt="fhir"``: the :func:`fhir_diagnostic_report` as UTF-8 JSON (``application/fhir+json``).
    ``fmt="dicom"``: the :func:`dicom_secondary_capture` as a DICOM Part 10 file; ``xray_pixels`` is
    then required. The file is replaced atomically.

    Raises:
        ValueError: for an unknown ``fmt`` or a DICOM report without pixels.
    """
    out = Path(out)
    if fmt == "fhir":
        data = json.dumps(fhir_diagnostic_report(ctx), indent=2, ensure_ascii=False).encode()
    elif fmt == "dicom":
        if xray_pixels is None:
            raise ValueError("a DICOM report needs xray_pixels (the X-ray the boxes are drawn on)")
        buffer = io.BytesIO()
        dicom_secondary_capture(ctx, xray_pixels, source=source).save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    else:
        raise ValueError(f"unknown report format {fmt!r}: expected 'fhir' or 'dicom'")
    write_atomically(out, data)
    return out
