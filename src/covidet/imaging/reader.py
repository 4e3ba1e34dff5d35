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
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from covidet.imaging import decoder_log
from covidet.imaging.display import grayscale_display
from covidet.imaging.frames import decode_frame

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

DEFAULT_MAX_PIXELS = 50_000_000
"""Default limit on width * height, checked from the header before decoding."""
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Default limit on the size of the encoded input."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as Pillow's RGB -> L


class ImageReadError(ValueError):
    """The input cannot be read as an image.

    ``str(err)`` is one line, ``"<source>: <reason>"``; ``err.reason`` is the reason alone and
    ``err.source`` the name of the input. ``ImageReadError(message)`` with a single argument is
    also accepted (then ``source`` is empty and ``reason`` is the message).
    """

    def __init__(self, source: str, reason: str | None = None) -> None:
        if reason is None:
            source, reason = "", source
        reason = "".join(c if c.isprintable() else "?" for c in " ".join(reason.split()))
        super().__init__(f"{source}: {reason}" if source else reason)
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str]]:
        return type(self), (self.source, self.reason)


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
        if data.startswith(_PNG_MAGIC):
            image = _read_pillow(data, name, "png", max_pixels)
        elif data.startswith(_JPEG_MAGIC):
            image = _read_pillow(data, name, "jpeg", max_pixels)
        else:
            image = _read_dicom(data, name, max_pixels)
    except ImageReadError:
        raise
    except Exception as exc:  # safety net: malformed header values pydicom/Pillow reject late
        raise ImageReadError(name, f"cannot read image: {_short(exc)}") from exc
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
        raise ImageReadError(name, f"cannot read file: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    """One line describing an exception."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"zero-size image ({width}x{height})")
    if width * height > max_pixels:
        count = f"{width}x{height} = {width * height} pixels"
        raise ImageReadError(name, f"image too large: {count}, more than the limit of {max_pixels}")


# --------------------------------------------------------------------------------------- PNG / JPEG


def _read_pillow(data: bytes, name: str, fmt: str, max_pixels: int) -> XRayImage:
    label = fmt.upper()
    try:
        # max_pixels decides, so Pillow's bomb warning is silenced; its error (above
        # 2 x Image.MAX_IMAGE_PIXELS, raised inside Image.open) is converted below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[label])
            _check_size(name, im.width, im.height, max_pixels)
            im.load()
            if fmt == "jpeg":
                im = ImageOps.exif_transpose(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"image too large: {_short(exc)}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(name, "truncated or corrupt PNG/JPEG: header cannot be parsed") from exc
    except Exception as exc:  # OSError, SyntaxError, zlib/struct errors from a damaged file
        raise ImageReadError(name, f"truncated or corrupt PNG/JPEG: {_short(exc)}") from exc

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


def _parse_dicom(data: bytes, name: str) -> Dataset:
    has_preamble = data[128:132] == b"DICM"
    not_an_image = "not a DICOM file and not a PNG/JPEG image"
    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        reason = f"truncated or corrupt DICOM: {_short(exc)}" if has_preamble else not_an_image
        raise ImageReadError(name, reason) from exc
    if not has_preamble and not any(k in ds for k in ("PixelData", "Rows", "Columns")):
        raise ImageReadError(name, not_an_image)
    return ds


def _transfer_syntax(ds: Dataset) -> UID:
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax:
        return UID(tsyntax)
    # Preamble-less datasets carry no file meta: use the encoding pydicom detected while reading.
    implicit, little = ds.original_encoding
    tsyntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    tsyntax = tsyntax if little or little is None else ExplicitVRBigEndian
    ds.file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    return text or None


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
    ds = _parse_dicom(data, name)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(name, "DICOM has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits_stored = int(ds.BitsStored)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(name, f"DICOM image header is incomplete: {_short(exc)}") from exc
    if frames != 1:
        raise ImageReadError(
            name, f"multi-frame DICOM ({frames} frames) is not supported; only NumberOfFrames == 1"
        )
    _check_size(name, cols, rows, max_pixels)

    tsyntax = _transfer_syntax(ds)
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
        raise ImageReadError(name, f"{problem} DICOM pixel data ({ts_label}): {_short(exc)}") from exc

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
        raise ImageReadError(name, f"cannot apply DICOM LUT/windowing: {_short(exc)}") from exc

    pixels = np.clip(pixels, 0.0, 1.0, out=pixels).astype(np.float32)  # float64, a fresh array
    return XRayImage(
        pixels=pixels,
        width=cols,
        height=rows,
        bits_stored=bits_stored,
        source_format="dicom",
        photometric=photometric,
        patient_id=_text(ds, "PatientID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        modality=_text(ds, "Modality"),
        view_position=_text(ds, "ViewPosition"),
        pixel_spacing_mm=_pixel_spacing(ds),
    )


# ---------------------------------------------------------------------------- fast header inspection


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
    if source[:8] == _PNG_MAGIC or source[:3] == _JPEG_MAGIC:
        fmt = "png" if source[:8] == _PNG_MAGIC else "jpeg"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(source), formats=[fmt.upper()])
                width, height = im.size
        except Image.DecompressionBombError as exc:
            raise ImageReadError(name, f"image too large: {_short(exc)}") from exc
        except Exception as exc:
            raise ImageReadError(
                name, f"truncated or corrupt {fmt.upper()}: header cannot be parsed"
            ) from exc
        _check_size(name, width, height, max_pixels)
        return ImageHeader(media_type=f"image/{fmt}", width=width, height=height)
    return _inspect_dicom(_parse_dicom(source, name), name, max_pixels)


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
            raise ImageReadError(name, f"DICOM image header is incomplete: {_short(exc)}") from exc
        if frames != 1:
            raise ImageReadError(name, f"multi-frame DICOM ({frames} frames) is not supported")
        _check_size(name, cols, rows, max_pixels)
        tsyntax = _transfer_syntax(ds)
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
                    name, f"truncated or corrupt encapsulated pixel data: {_short(exc)}"
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
        raise ImageReadError(name, f"truncated or corrupt DICOM: {_short(exc)}") from exc
    return ImageHeader(
        media_type="application/dicom",
        width=cols,
        height=rows,
        transfer_syntax_uid=str(tsyntax),
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        accession_number=_text(ds, "AccessionNumber"),
        study_description=_text(ds, "StudyDescription"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        modality=_text(ds, "Modality"),
        capture_device_manufacturer=_text(ds, "SecondaryCaptureDeviceManufacturer"),
    )
