"""Read chest X-rays from DICOM, PNG or JPEG into display-ready grayscale arrays.

The format is detected from the content, never from the file name. Every failure to read an
input is reported as :class:`ImageReadError`, whose message is one line naming the source.

DICOM display pipeline (single frame only): decode (compressed transfer syntaxes through the
pylibjpeg plugins) -> Modality LUT (LUT sequence or rescale slope/intercept) -> VOI LUT sequence,
or window centre/width, or, when the file has neither, the min..max of the data -> scaled to
[0, 1] -> inverted for MONOCHROME1. Colour images are converted to luminance.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space, get_decoder

from covidet.imaging import decoder_log
from covidet.imaging.display import grayscale_display
from covidet.imaging.errors import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    check_size,
    one_line,
)
from covidet.imaging.formats import JPEG_MAGIC, PNG_MAGIC, header_text, parse_dicom, transfer_syntax
from covidet.imaging.frames import decode_frame
from covidet.imaging.inspection import ImageHeader, inspect_image

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageHeader",
    "ImageReadError",
    "XRayImage",
    "inspect_image",
    "read_image",
]

logger = logging.getLogger(__name__)
decoder_log.install()  # plugin tracebacks of a refused frame are not server errors

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as Pillow's RGB -> L


@dataclass(frozen=True)
class XRayImage:
    """A display-ready grayscale image plus the header facts later stages need.

    ``pixels`` is float32 (H, W) in [0, 1] with 0 = black. ``pixel_spacing_mm`` is (row, column)
    spacing from DICOM PixelSpacing, else ImagerPixelSpacing, when positive.
    """

    pixels: np.ndarray
    width: int
    height: int
    bits_stored: int
    source_format: str
    photometric: str
    patient_id: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    view_position: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2 or self.pixels.shape != (self.height, self.width):
            expected = (self.height, self.width)
            raise ValueError(f"pixels shape {self.pixels.shape} does not match (height, width) {expected}")

    def to_uint8(self) -> np.ndarray:
        """The pixels as (H, W) uint8, ``round(pixels * 255)``."""
        return np.round(np.clip(self.pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_image(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> XRayImage:
    """Read a DICOM, PNG or JPEG image from a path or from bytes.

    The format is detected from the content: DICOM ('DICM' at offset 128, or a preamble-less
    dataset that pydicom reads with ``force=True`` and that has pixel-related tags), PNG or JPEG
    magic bytes. ``name`` is used in error messages (default: the file name, or ``"<bytes>"``).
    Images with more than ``max_pixels`` pixels are refused from their header, before decoding.

    Raises:
        ImageReadError: for any input that cannot be read (and no other exception type).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        name = name or "<bytes>"
        data = bytes(source)
    else:
        path = Path(source)
        name = name or path.name
        data = _read_file(path, name, max_bytes)
    if not data:
        raise ImageReadError(name, "empty file")
    if len(data) > max_bytes:
        raise ImageReadError(name, f"input has {len(data)} bytes, more than the limit of {max_bytes}")

    try:
        if data.startswith(PNG_MAGIC):
            image = _read_pillow(data, name, "png", max_pixels)
        elif data.startswith(JPEG_MAGIC):
            image = _read_pillow(data, name, "jpeg", max_pixels)
        else:
            image = _read_dicom(data, name, max_pixels)
    except ImageReadError:
        raise
    except Exception as exc:  # safety net: malformed header values pydicom/Pillow reject late
        raise ImageReadError(name, f"cannot read image: {one_line(exc)}") from exc
    logger.debug(
        "read %s: %s %s %dx%d, %d bits stored",
        name,
        image.source_format,
        image.photometric,
        image.width,
        image.height,
        image.bits_stored,
    )
    return image


def _read_file(path: Path, name: str, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ImageReadError(name, "is a directory, not a file")
        if size > max_bytes:
            raise ImageReadError(name, f"file has {size} bytes, more than the limit of {max_bytes}")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageReadError(name, "file not found") from exc
    except (OSError, ValueError) as exc:  # permissions, I/O errors, a NUL byte in the path
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(name, f"cannot read file: {one_line(exc)}") from exc


# --------------------------------------------------------------------------------------- PNG / JPEG


def _read_pillow(data: bytes, name: str, fmt: str, max_pixels: int) -> XRayImage:
    label = fmt.upper()
    try:
        # max_pixels decides, so Pillow's bomb warning is silenced; its error (above
        # 2 x Image.MAX_IMAGE_PIXELS, raised inside Image.open) is converted below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data), formats=[label])
            check_size(name, im.width, im.height, max_pixels)
            im.load()
            if fmt == "jpeg":
                im = ImageOps.exif_transpose(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"image too large: {one_line(exc)}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(name, "truncated or corrupt PNG/JPEG: header cannot be parsed") from exc
    except Exception as exc:  # OSError, SyntaxError, zlib/struct errors from a damaged file
        raise ImageReadError(name, f"truncated or corrupt PNG/JPEG: {one_line(exc)}") from exc

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.divide(np.asarray(im), 65535.0, dtype=np.float32)
        bits, photometric = 16, "MONOCHROME2"
    else:
        photometric = "MONOCHROME2" if im.mode in ("1", "L", "LA") else "RGB"
        pixels = np.divide(np.asarray(im := im.convert("L")), 255.0, dtype=np.float32)
        bits = 8
    pixels = np.clip(pixels, 0.0, 1.0, out=pixels)  # in place: one float32 array (issue 19, item 17)
    return XRayImage(
        pixels=pixels,
        width=pixels.shape[1],
        height=pixels.shape[0],
        bits_stored=bits,
        source_format=fmt,
        photometric=photometric,
    )


# -------------------------------------------------------------------------------------------- DICOM


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            row, col = (float(v) for v in ds.get(keyword) or ())
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def _read_dicom(data: bytes, name: str, max_pixels: int) -> XRayImage:
    ds = parse_dicom(data, name)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(name, "DICOM has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits_stored = int(ds.BitsStored)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(name, f"DICOM image header is incomplete: {one_line(exc)}") from exc
    if frames != 1:
        raise ImageReadError(
            name, f"multi-frame DICOM ({frames} frames) is not supported; only NumberOfFrames == 1"
        )
    check_size(name, cols, rows, max_pixels)

    tsyntax = transfer_syntax(ds)
    ts_label = tsyntax.name if tsyntax.name == str(tsyntax) else f"{tsyntax.name} [{tsyntax}]"
    try:
        get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise ImageReadError(name, f"DICOM transfer syntax {ts_label} is not supported") from exc
    try:
        arr, meta = decode_frame(ds, tsyntax)
    except BaseException as exc:  # a Rust decoder's PanicException derives from BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        problem = "cannot decode" if tsyntax.is_compressed else "truncated or corrupt"
        raise ImageReadError(name, f"{problem} DICOM pixel data ({ts_label}): {one_line(exc)}") from exc

    photometric = str(meta.get("photometric_interpretation") or ds.get("PhotometricInterpretation", ""))
    try:
        if arr.ndim == 3:  # colour: RGB or YBR_* -> RGB -> luminance
            if photometric.startswith("YBR"):
                arr = convert_color_space(arr, photometric, "RGB")
            pixels = (arr.astype(np.float64) @ _LUMA) / float(2**bits_stored - 1)
            photometric = "RGB"
        else:
            pixels = grayscale_display(arr, ds)
            if photometric == "MONOCHROME1":
                pixels = 1.0 - pixels
            else:
                photometric = "MONOCHROME2"
    except ImageReadError:
        raise
    except Exception as exc:  # malformed LUT descriptors, window width < 1, ...
        raise ImageReadError(name, f"cannot apply DICOM LUT/windowing: {one_line(exc)}") from exc

    pixels = np.clip(pixels, 0.0, 1.0, out=pixels).astype(np.float32)  # float64, a fresh array
    return XRayImage(
        pixels=pixels,
        width=cols,
        height=rows,
        bits_stored=bits_stored,
        source_format="dicom",
        photometric=photometric,
        patient_id=header_text(ds, "PatientID"),
        study_instance_uid=header_text(ds, "StudyInstanceUID"),
        series_instance_uid=header_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=header_text(ds, "SOPInstanceUID"),
        modality=header_text(ds, "Modality"),
        view_position=header_text(ds, "ViewPosition"),
        pixel_spacing_mm=_pixel_spacing(ds),
    )
