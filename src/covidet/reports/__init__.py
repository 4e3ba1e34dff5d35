"""Reports as DICOM Structured Reports (TID 1500 Measurement Report, IHE AI Results), built with
highdicom: the AI result of an image (:func:`ai_structured_report`) and a signed radiologist review
that refers to it (:func:`review_structured_report`). See ``docs/dicom-sr.md``.

The FHIR DiagnosticReport is in :mod:`covidet.reports.fhir`, the DICOM Secondary Capture in
:mod:`covidet.reports.dicom_sc`, what every report says in :mod:`covidet.reports.context`
(:mod:`covidet.assessment.reports` re-exports them, with ``write_report``).
"""

from covidet.reports.dicom_sr import (
    COMPREHENSIVE_3D_SR_SOP_CLASS,
    SourceNotDicom,
    ai_sr_uids,
    ai_structured_report,
    sr_bytes,
    write_sr,
)
from covidet.reports.review_sr import (
    ReviewFacts,
    ReviewNotAvailable,
    load_signed_review,
    review_structured_report,
)

__all__ = [
    "COMPREHENSIVE_3D_SR_SOP_CLASS",
    "ReviewFacts",
    "ReviewNotAvailable",
    "SourceNotDicom",
    "ai_sr_uids",
    "ai_structured_report",
    "load_signed_review",
    "review_structured_report",
    "sr_bytes",
    "write_sr",
]
