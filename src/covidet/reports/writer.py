"""Write one report to a file: the FHIR DiagnosticReport as JSON, or the DICOM Secondary Capture as a
Part 10 file (see docs/reports.md). Both are pure functions of a :class:`ReportContext`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset

from covidet.reports.context import ReportContext, write_atomically
from covidet.reports.dicom_sc import dicom_secondary_capture
from covidet.reports.fhir import fhir_diagnostic_report

__all__ = ["write_report"]


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
