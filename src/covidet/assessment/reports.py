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

import io
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset

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
