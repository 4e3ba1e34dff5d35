"""Fast header inspection: is this an image covidet can decode, without decoding its pixels.

Contract of :func:`inspect_image`: reads headers only; the pixel count is bounded before anything is
decoded, a DICOM must be single-frame with pixel data of the length its header promises (uncompressed)
or a complete first fragment (encapsulated), and its transfer syntax must have a decoder. It answers an
:class:`ImageHeader` or raises :class:`~covidet.imaging.errors.ImageReadError` (and nothing else for
a damaged input).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from covidet.imaging.errors import DEFAULT_MAX_PIXELS, ImageReadError, check_size, one_line
from covidet.imaging.formats import JPEG_MAGIC, PNG_MAGIC, header_text, parse_dicom, transfer_syntax

__all__ = ["ImageHeader", "inspect_image"]


@dataclass(frozen=True)
class ImageHeader:
    """What an ingest path needs to accept an image, read without decoding its pixels.

    ``media_type`` is ``application/dicom``, ``image/png`` or ``image/jpeg``. DICOM identifiers are
    ``None`` for PNG/JPEG or when the DICOM lacks them.
    """

    media_type: str
    width: int
    height: int
    transfer_syntax_uid: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    modality: str | None = None
    #: SecondaryCaptureDeviceManufacturer: "covidet" marks covidet's own AI reports.
    capture_device_manufacturer: str | None = None


def inspect_image(
    source: bytes | Dataset,
    *,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageHeader:
    """Check that ``source`` is a single-frame DICOM, PNG or JPEG image covidet can decode, cheaply.

    Reads headers only: the pixel count is bounded before anything is decoded (a decompression bomb
    is refused here), a DICOM must have pixel data of the length its header promises (uncompressed)
    or a complete first fragment (encapsulated), and its transfer syntax must have a decoder. Full
    decoding happens later, off the receiving thread (:func:`read_image`).

    Raises:
        ImageReadError: with a one-line reason.
    """
    if isinstance(source, Dataset):
        return _inspect_dicom(source, name, max_pixels)
    if source[:8] == PNG_MAGIC or source[:3] == JPEG_MAGIC:
        fmt = "png" if source[:8] == PNG_MAGIC else "jpeg"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(source), formats=[fmt.upper()])
                width, height = im.size
        except Image.DecompressionBombError as exc:
            raise ImageReadError(name, f"image too large: {one_line(exc)}") from exc
        except Exception as exc:
            raise ImageReadError(
                name, f"truncated or corrupt {fmt.upper()}: header cannot be parsed"
            ) from exc
        check_size(name, width, height, max_pixels)
        return ImageHeader(media_type=f"image/{fmt}", width=width, height=height)
    return _inspect_dicom(parse_dicom(source, name), name, max_pixels)


def _inspect_dicom(ds: Dataset, name: str, max_pixels: int) -> ImageHeader:
    from pydicom.encaps import generate_frames

    try:
        if "PixelData" not in ds:
            raise ImageReadError(name, "DICOM has no pixel data")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames") or 1)
            bits_allocated = int(ds.BitsAllocated)
            samples = int(ds.get("SamplesPerPixel") or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ImageReadError(name, f"DICOM image header is incomplete: {one_line(exc)}") from exc
        if frames != 1:
            raise ImageReadError(name, f"multi-frame DICOM ({frames} frames) is not supported")
        check_size(name, cols, rows, max_pixels)
        tsyntax = transfer_syntax(ds)
        try:
            get_decoder(tsyntax)
        except NotImplementedError as exc:
            raise ImageReadError(name, f"DICOM transfer syntax {tsyntax.name} is not supported") from exc
        pixel_data = ds.PixelData
        if tsyntax.is_encapsulated:
            try:
                first = next(generate_frames(pixel_data, number_of_frames=1), b"")
            except Exception as exc:
                raise ImageReadError(
                    name, f"truncated or corrupt encapsulated pixel data: {one_line(exc)}"
                ) from exc
            if not first:
                raise ImageReadError(name, "encapsulated pixel data holds no frame")
        else:
            expected = rows * cols * samples * max(bits_allocated // 8, 1) if bits_allocated >= 8 else 0
            if len(pixel_data) < expected:
                raise ImageReadError(
                    name,
                    f"truncated DICOM pixel data: {len(pixel_data)} bytes, the header needs {expected}",
                )
    except ImageReadError:
        raise
    except Exception as exc:  # a damaged element deep in a lazily-read dataset
        raise ImageReadError(name, f"truncated or corrupt DICOM: {one_line(exc)}") from exc
    return ImageHeader(
        media_type="application/dicom",
        width=cols,
        height=rows,
        transfer_syntax_uid=str(tsyntax),
        sop_class_uid=header_text(ds, "SOPClassUID"),
        sop_instance_uid=header_text(ds, "SOPInstanceUID"),
        study_instance_uid=header_text(ds, "StudyInstanceUID"),
        series_instance_uid=header_text(ds, "SeriesInstanceUID"),
        patient_id=header_text(ds, "PatientID"),
        patient_name=header_text(ds, "PatientName"),
        accession_number=header_text(ds, "AccessionNumber"),
        study_description=header_text(ds, "StudyDescription"),
        study_date=header_text(ds, "StudyDate"),
        study_time=header_text(ds, "StudyTime"),
        modality=header_text(ds, "Modality"),
        capture_device_manufacturer=header_text(ds, "SecondaryCaptureDeviceManufacturer"),
    )
