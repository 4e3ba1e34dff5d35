"""The AI result of one image as a DICOM Secondary Capture: :func:`dicom_secondary_capture`.

An 8-bit RGB image of the X-ray with the boxes, labels, scores and a "NOT FOR CLINICAL USE" banner
burned in, filed into the source study so that it appears beside the original in any PACS viewer.
It names the model, its version and :data:`covidet.DISCLAIMER`. See ``docs/reports.md``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from covidet import DISCLAIMER, __version__
from covidet.domain import Label, Priority
from covidet.imaging.dicom_writer import new_dataset
from covidet.reports.context import ReportContext, as_utc

__all__ = ["SECONDARY_CAPTURE_SOP_CLASS", "dicom_secondary_capture"]

#: SOP Class UID of Secondary Capture Image Storage.
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"

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
    issued = as_utc(ctx.issued_at)
    series_uid = generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "sc-series", ctx.report_id])
    sop_uid = generate_uid(prefix=uid_prefix, entropy_srcs=["covidet", "sc-instance", ctx.report_id])
    statement = (
        f"Secondary capture of the AI result of {ctx.model_label}: {len(ctx.findings)} region(s) "
        f"burned in as boxes with class and score"
        + (f", image-level {Label(ctx.assessment.label).value}" if ctx.assessment else "")
        + (f", triage priority {Priority(ctx.priority).value}" if ctx.priority else "")
        + f". Preliminary, unreviewed. {DISCLAIMER.upper()}."
    )

    ds = new_dataset(SECONDARY_CAPTURE_SOP_CLASS, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: patient names are not always ASCII
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
