"""The AI result of one X-ray as a DICOM Comprehensive 3D SR following TID 1500 (Measurement Report),
the format of the IHE AI Results (AIR) profile, built with highdicom.

A pure function of a :class:`~covidet.reports.context.ReportContext` and the source image's DICOM
header (no database, no pixels): :func:`ai_structured_report`. The document holds

* the observation context of a **device** observer (covidet, with the model name and version);
* one TID 1501 measurement group for the image: the class (121073 "Impression" = SNOMED CT concept) as a
  qualitative evaluation and the class probabilities as numbers in UCUM ``{probability}``;
* one TID 1410 planar ROI group per detected box: a closed POLYLINE in pixels of the source image
  (referencing its SOP Class/Instance UID), the class as finding type, the lung as finding site and the
  detector score as (111012 "Certainty of Finding");
* in every group the TID 4019 algorithm identification (model name, version, decision rule);
* a TID 1500 "Qualitative Evaluations" container with the "not for clinical use" statement, which is
  also in the Series Description;
* the source X-ray as evidence (Current Requested Procedure Evidence), its Patient and Study modules, a
  new series.

UIDs are derived from the image and inference ids (:func:`ai_sr_uids`), so the same AI result gives the
same SR, and a radiologist's review SR (:mod:`covidet.reports.review_sr`) can name it without storing it.
The item-by-item template and the codes are in ``docs/dicom-sr.md``.
"""

from __future__ import annotations

import copy
import io
import logging
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from covidet import DISCLAIMER, __version__
from covidet.domain import Box, Label
from covidet.reports.context import ReportContext, write_atomically

from .sr_codes import (
    CERTAINTY_OF_FINDING,
    COMMENT,
    COVIDET_SCHEME_ITEM,
    IMPRESSION,
    LABEL_CONCEPTS,
    LUNG,
    PROBABILITY_UNIT,
    PROCEDURE_CHEST_XRAY,
    QUALITATIVE_EVALUATIONS,
    SCORE_UNIT,
)

__all__ = [
    "AI_SR_SERIES_NUMBER",
    "COMPREHENSIVE_3D_SR_SOP_CLASS",
    "SourceNotDicom",
    "ai_sr_uids",
    "ai_structured_report",
    "box_region",
    "require_dicom_source",
    "source_group_reference",
    "sr_bytes",
    "sr_document",
    "statement_container",
    "tracking_identifier",
    "write_sr",
]

# highdicom logs each module it copies from the source header at INFO, seven lines per SR: noise in
# covidet's logs (and on the CLI's stderr), not information.
logging.getLogger("highdicom.base").setLevel(logging.WARNING)

#: SOP Class UID of Comprehensive 3D SR Storage.
COMPREHENSIVE_3D_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
#: Series number of the AI SR: after the secondary capture's 9001, as derived series sort last.
AI_SR_SERIES_NUMBER = 9002


class SourceNotDicom(ValueError):
    """The image was not received as DICOM: an SR refers to a DICOM image, so there is nothing to refer to."""


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _lo(text: str) -> str:
    """A DICOM LO value: at most 64 characters, no backslash (the value separator)."""
    return text.replace("\\", "/")[:64]


def _inference_key(ctx: ReportContext) -> int | str:
    # One AI SR per (image, inference): the triage, which changes with new vital signs, is not in it.
    return ctx.inference_id if ctx.inference_id is not None else ctx.report_id


def ai_sr_uids(image_id: int, inference_id: int | str, uid_prefix: str = PYDICOM_ROOT_UID) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the AI SR of ``inference_id`` on ``image_id``.

    Stable: the same ids always give the same UIDs (under ``uid_prefix``).
    """
    key = f"{image_id}-{inference_id}"
    return (
        generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "ai-sr-series", key]),
        generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "ai-sr-instance", key]),
    )


#: Type 2 attributes of the Patient and General Study modules the SR copies from the X-ray's header.
TYPE_2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def require_dicom_source(ctx: ReportContext, source: Dataset | None) -> Dataset:
    """The source header, checked to carry what an SR refers to.

    Raises:
        SourceNotDicom: ``source`` is ``None`` (a PNG/JPEG upload) or lacks the series or instance UID.
    """
    if source is None or not ctx.source_sop_instance_uid:
        raise SourceNotDicom(
            f"image {ctx.image_id} was not received as DICOM: a DICOM SR refers to a DICOM source image "
            "(use the fhir or dicom report format instead)"
        )
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID") if not source.get(k)]
    if missing:
        raise SourceNotDicom(f"the DICOM header of image {ctx.image_id} lacks {', '.join(missing)}")
    absent = [k for k in TYPE_2_COPIED if k not in source]
    if absent:
        # The SR copies the Patient and General Study modules from its evidence, where these are Type 2
        # (present, possibly empty); many senders (simulators, converters) leave them out altogether.
        source = copy.copy(source)
        for keyword in absent:
            setattr(source, keyword, "")
    return source


def box_region(box: Box, source: Dataset) -> hd.sr.ImageRegion:
    """``box`` as a closed POLYLINE SCOORD (5 points, clockwise from top-left) on ``source``.

    Coordinates are (column, row) pixels of the source image with 0.0\\0.0 at the top-left corner of
    the top-left pixel (PS3.3 C.18.6.1.2), the convention of covidet's boxes, so they are copied as is.
    """
    x1, y1, x2, y2 = (float(v) for v in box.as_list())
    points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=points,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
        ),
    )


def source_group_reference(source: Dataset) -> hd.sr.SourceImageForMeasurementGroup:
    """The source X-ray as the image a TID 1501 group was measured on."""
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=str(source.SOPClassUID),
        referenced_sop_instance_uid=str(source.SOPInstanceUID),
    )


def statement_container(texts: list[str]) -> hd.sr.ContainerContentItem:
    """TID 1500 row 11, (C0034375, UMLS, "Qualitative Evaluations"), holding one Comment per text."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for text in texts
        ]
    )
    return container


def tracking_identifier(key: str, part: str, text: str, uid_prefix: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(
        uid=generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "sr-tracking", key, part]),
        identifier=text,
    )


def _algorithm(ctx: ReportContext) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=ctx.model_name,
        version=ctx.model_version,
        parameters=[f"decision rule {ctx.decision_rule}", f"threshold {ctx.threshold:g}"],
        manufacturer="covidet",
    )


def _device_context(ctx: ReportContext, uid_prefix: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(
            prefix=uid_prefix, entropy_srcs=["covidet", "device", ctx.model_name, ctx.model_version]
        ),
        name="covidet",
        manufacturer_name="covidet",
        model_name=_lo(f"{ctx.model_name} {ctx.model_version}"),
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def _image_group(
    ctx: ReportContext, source: Dataset, key: str, uid_prefix: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    evaluations, measurements = [], []
    if ctx.assessment is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(IMPRESSION, LABEL_CONCEPTS[Label(ctx.assessment.label)])
        )
        for label, probability in sorted(
            ctx.assessment.probabilities.items(), key=lambda i: Label(i[0]).value
        ):
            measurements.append(
                hd.sr.Measurement(
                    name=LABEL_CONCEPTS[Label(label)], value=float(probability), unit=PROBABILITY_UNIT
                )
            )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(key, "image", "image-level assessment", uid_prefix),
        algorithm_id=_algorithm(ctx),
        qualitative_evaluations=evaluations or None,
        measurements=measurements or None,
        source_images=[source_group_reference(source)],
    )


def _finding_group(
    ctx: ReportContext, source: Dataset, index: int, key: str, uid_prefix: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    finding = ctx.findings[index - 1]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(key, f"finding-{index}", f"AI finding {index}", uid_prefix),
        referenced_region=box_region(finding.box, source),
        finding_type=LABEL_CONCEPTS[Label(finding.label)],
        algorithm_id=_algorithm(ctx),
        finding_sites=[hd.sr.FindingSite(LUNG)],
        measurements=[
            hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=float(finding.score), unit=SCORE_UNIT)
        ],
    )


def sr_document(
    content: hd.sr.MeasurementReport,
    *,
    evidence: list[Dataset],
    series_uid: str,
    sop_uid: str,
    series_number: int,
    series_description: str,
    issued_at: datetime,
    software: tuple[str, ...],
    private_codes: bool = False,
    **flags: object,
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR of ``content`` in the study and patient of ``evidence[0]`` (the X-ray).

    ``private_codes``: the content uses :data:`COVIDET_SCHEME` codes, which the Coding Scheme
    Identification Sequence then declares. ``flags`` go to :class:`highdicom.sr.Comprehensive3DSR`
    (completion, verification, predecessors).
    """
    issued = _utc(issued_at)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="covidet",
        manufacturer_model_name="covidet",
        software_versions=list(software),
        series_description=_lo(series_description),
        content_date=issued.date(),
        content_time=issued.time().replace(microsecond=0),
        specific_character_set="ISO_IR 192",  # UTF-8: patient and reviewer names are not always ASCII
        coding_schemes=[COVIDET_SCHEME_ITEM] if private_codes else None,
        **flags,  # type: ignore[arg-type]
    )


def ai_structured_report(
    ctx: ReportContext, source: Dataset | None, *, uid_prefix: str = PYDICOM_ROOT_UID
) -> hd.sr.Comprehensive3DSR:
    """The AI result of ``ctx`` as a TID 1500 Comprehensive 3D SR on the X-ray whose header is ``source``.

    The document is complete, preliminary and unverified (an AI result nobody has reviewed). Its series
    and instance UIDs are :func:`ai_sr_uids` of ``ctx.image_id`` and ``ctx.inference_id`` (or of
    ``ctx.report_id`` when the inference id is unknown). Boxes are copied unchanged as pixel polylines.

    Raises:
        SourceNotDicom: ``source`` is ``None`` or lacks UIDs (the image was not received as DICOM).
    """
    source = require_dicom_source(ctx, source)
    key = f"{ctx.image_id}-{_inference_key(ctx)}"
    series_uid, sop_uid = ai_sr_uids(ctx.image_id, _inference_key(ctx), uid_prefix)
    groups: list = [_image_group(ctx, source, key, uid_prefix)]
    groups += [_finding_group(ctx, source, i, key, uid_prefix) for i in range(1, len(ctx.findings) + 1)]
    report = hd.sr.MeasurementReport(
        observation_context=_device_context(ctx, uid_prefix),
        procedure_reported=PROCEDURE_CHEST_XRAY,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(
        statement_container(
            [
                f"Preliminary AI result of {ctx.model_label}, not reviewed by a radiologist. "
                f"Research software: {DISCLAIMER.upper()}."
            ]
        )
    )
    return sr_document(
        report,
        evidence=[source],
        series_uid=series_uid,
        sop_uid=sop_uid,
        series_number=AI_SR_SERIES_NUMBER,
        series_description=f"AI SR {ctx.model_name} {ctx.model_version} NOT FOR CLINICAL USE",
        issued_at=ctx.issued_at,
        software=(_lo(ctx.model_version), _lo(f"covidet {__version__}")),
        is_complete=True,
    )


def sr_bytes(document: Dataset) -> bytes:
    """``document`` as a DICOM Part 10 file (preamble, file meta, Explicit VR Little Endian)."""
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_sr(document: Dataset, out: Path | str) -> Path:
    """Write ``document`` to ``out`` as a Part 10 file, replacing it atomically; returns the path."""
    out = Path(out)
    write_atomically(out, sr_bytes(document))
    return out
