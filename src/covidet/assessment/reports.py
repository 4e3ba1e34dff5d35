"""Reports out: the AI result of one image in formats hospitals read.

Two outputs, both pure functions of a :class:`ReportContext` (plain data: no database, no torch):

* :func:`fhir_diagnostic_report` (:mod:`covidet.reports.fhir`) -- a FHIR R4B ``DiagnosticReport``
  (status ``preliminary``) with contained ``Observation``\\ s and a ``Device`` naming the model.
* :func:`dicom_secondary_capture` (:mod:`covidet.reports.dicom_sc`) -- a DICOM Secondary Capture
  image of the X-ray with the boxes, labels, scores and a "NOT FOR CLINICAL USE" banner burned in.

:func:`write_report` writes either to a file. The code lives in :mod:`covidet.reports`; this module
keeps the names it has always had (an import path others rely on). See ``docs/reports.md``.
"""

from __future__ import annotations

from covidet.reports.context import ReportContext, write_atomically
from covidet.reports.dicom_sc import SECONDARY_CAPTURE_SOP_CLASS, dicom_secondary_capture
from covidet.reports.fhir import (
    IMAGE_IDENTIFIER_SYSTEM,  # noqa: F401 (a public name of this module, not in __all__)
    LABEL_CODES,
    LOINC,  # noqa: F401 (a public name of this module, not in __all__)
    PATIENT_IDENTIFIER_SYSTEM,
    PRIORITY_SYSTEM,  # noqa: F401 (a public name of this module, not in __all__)
    REPORT_CODE,
    REPORT_IDENTIFIER_SYSTEM,
    SNOMED,  # noqa: F401 (a public name of this module, not in __all__)
    UCUM,  # noqa: F401 (a public name of this module, not in __all__)
    VITAL_SIGN_CODES,
    fhir_diagnostic_report,
)
from covidet.reports.writer import write_report

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
