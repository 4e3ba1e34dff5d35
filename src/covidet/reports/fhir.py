"""The AI result of one image as a FHIR R4B ``DiagnosticReport``: :func:`fhir_diagnostic_report`.

Status ``preliminary`` (an unreviewed AI result); contained Observations for the findings, class
probabilities, triage priority and vital signs used, and a Device naming the model; validated with
``fhir.resources``. :data:`LABEL_CODES` is shared with the DICOM SRs. See ``docs/reports.md``.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TypeAlias

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from covidet import DISCLAIMER, __version__
from covidet.domain import Assessment, Finding, Label, Priority
from covidet.reports.context import ReportContext, as_utc
from covidet.reports.fhir_codes import (
    IMAGE_IDENTIFIER_SYSTEM,
    LABEL_CODES,
    LABEL_TEXT,
    LOINC,
    LUNG,
    OBSERVATION_CATEGORY,
    PATIENT_IDENTIFIER_SYSTEM,
    PRIORITY_SYSTEM,
    REPORT_CODE,
    REPORT_IDENTIFIER_SYSTEM,
    SNOMED,
    UCUM,
    V2_0074,
    V2_0203,
    VITAL_SIGN_CODES,
)

__all__ = [
    "IMAGE_IDENTIFIER_SYSTEM",
    "LABEL_CODES",
    "LOINC",
    "PATIENT_IDENTIFIER_SYSTEM",
    "PRIORITY_SYSTEM",
    "REPORT_CODE",
    "REPORT_IDENTIFIER_SYSTEM",
    "SNOMED",
    "UCUM",
    "VITAL_SIGN_CODES",
    "JsonValue",
    "Resource",
    "fhir_diagnostic_report",
]

#: A JSON value as the resources are built here (read-only container views, so that a list of
#: resources or a dict of strings is one too).
JsonValue: TypeAlias = "str | int | float | bool | Sequence[JsonValue] | Mapping[str, JsonValue] | None"
#: A FHIR resource or element being built: a JSON object.
Resource: TypeAlias = dict[str, JsonValue]


def _iso(moment: datetime) -> str:
    return as_utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z")


_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _fhir_id(report_id: str) -> str:
    """The report id as a FHIR ``id`` (64 chars of ``[A-Za-z0-9-.]``), else a stable hash of it."""
    if _FHIR_ID.match(report_id):
        return report_id
    return "covidet-" + hashlib.sha256(report_id.encode()).hexdigest()[:40]


# ------------------------------------------------------------------------------------------------- FHIR


def _quantity(value: float, unit: str, code: str | None = None) -> Resource:
    return {"value": float(value), "unit": unit, "system": UCUM, "code": code or unit}


def _label_concept(label: Label) -> Resource:
    return {"coding": [LABEL_CODES[Label(label)]], "text": LABEL_TEXT[Label(label)]}


def _category(code: str, display: str) -> list[Resource]:
    return [{"coding": [{"system": OBSERVATION_CATEGORY, "code": code, "display": display}]}]


def _conclusion(ctx: ReportContext) -> str:
    parts = [f"Preliminary AI result of {ctx.model_label}, not reviewed by a radiologist."]
    if ctx.assessment is not None:
        label = Label(ctx.assessment.label)
        prob = ctx.assessment.probabilities.get(label)
        prob_text = f", probability {prob:.2f}" if prob is not None else ""
        parts.append(
            f"Image-level assessment: {label.value} ({LABEL_TEXT[label]}{prob_text}; "
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


def _device(ctx: ReportContext) -> Resource:
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


def _finding_observation(ctx: ReportContext, index: int, finding: Finding, common: Resource) -> Resource:
    label = Label(finding.label)
    box = finding.box
    corner_names = ("x1 (left)", "y1 (top)", "x2 (right)", "y2 (bottom)")
    return {
        "resourceType": "Observation",
        "id": f"finding-{index}",
        **common,
        "category": _category("imaging", "Imaging"),
        "code": {"coding": [LABEL_CODES[label]], "text": f"{LABEL_TEXT[label]} region (AI detection)"},
        "bodySite": {"coding": [LUNG]},
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


def _assessment_observation(ctx: ReportContext, assessment: Assessment, common: Resource) -> Resource:
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
    ctx: ReportContext, priority: Priority, derived_from: list[str], common: Resource
) -> Resource:
    priority = Priority(priority)
    reasons = ctx.reasons or ["no reason recorded"]
    observation: Resource = {
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


def _vital_observations(ctx: ReportContext, subject: Resource) -> list[Resource]:
    observations: list[Resource] = []
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


def _code_text(resource: Resource) -> str:
    """The ``code.text`` of ``resource`` ("" when it has none)."""
    code = resource.get("code")
    text = code.get("text", "") if isinstance(code, Mapping) else ""
    return str(text)


def fhir_diagnostic_report(ctx: ReportContext) -> Resource:
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
    subject: Resource = {
        "type": "Patient",
        "identifier": {"system": PATIENT_IDENTIFIER_SYSTEM, "value": ctx.patient_key},
    }
    if ctx.patient_name:
        subject["display"] = _display_name(ctx.patient_name)
    ai_common: Resource = {
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
        derived = [str(o["id"]) for o in observations if o["id"] == "image-assessment"]
        derived += [str(v["id"]) for v in vitals]
        observations.append(_triage_observation(ctx, ctx.priority, derived, ai_common))
    observations.extend(vitals)

    # Each contained resource is validated on its own first, so an error names the resource at fault.
    contained = [Device.model_validate(_device(ctx)).model_dump(mode="json")]
    contained += [Observation.model_validate(o).model_dump(mode="json") for o in observations]

    conclusion = _conclusion(ctx)
    report: Resource = {
        "resourceType": "DiagnosticReport",
        "id": _fhir_id(ctx.report_id),
        "meta": {"tag": [{"system": "urn:covidet", "code": "ai-preliminary", "display": DISCLAIMER}]},
        "text": _narrative(ctx, conclusion),
        "contained": contained,
        "identifier": [{"system": REPORT_IDENTIFIER_SYSTEM, "value": ctx.report_id}],
        "status": "preliminary",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
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
        "result": [{"reference": f"#{o['id']}", "display": _code_text(o)} for o in observations],
        "conclusion": conclusion,
    }
    if ctx.assessment is not None:
        report["conclusionCode"] = [_label_concept(ctx.assessment.label)]
    if ctx.accession_number:
        report["basedOn"] = [
            {
                "type": "ServiceRequest",
                "identifier": {
                    "type": {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"}]},
                    "value": ctx.accession_number,
                },
            }
        ]
    return DiagnosticReport.model_validate(report).model_dump(mode="json")
