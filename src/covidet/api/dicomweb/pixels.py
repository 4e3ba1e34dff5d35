"""Pixels of stored instances for WADO-RS: frames (native or as stored), rendered images, and Part 10
files re-encoded as Explicit VR Little Endian.

Frames in the default (``application/octet-stream`` without a ``transfer-syntax``, or with
``1.2.840.10008.1.2.1``) are the uncompressed little-endian samples of PS3.5 8.1.1: the native bytes
of an uncompressed file sliced as stored, or pydicom's decoding of a compressed one (colour JPEG is
decoded to RGB). With ``transfer-syntax=*`` a compressed file's frames go out as stored, each
labelled with its transfer syntax.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID, ExplicitVRLittleEndian

from covidet.imaging.display import grayscale_display

__all__ = [
    "COMPRESSED_MEDIA_TYPES",
    "FrameError",
    "Window",
    "as_explicit_little_endian",
    "frame_count",
    "frames",
    "pixel_vr",
    "render",
]

#: Media type of a compressed frame sent as stored, by transfer syntax family (PS3.18 Table 8.7.3-2).
COMPRESSED_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
NATIVE = "application/octet-stream"


class FrameError(ValueError):
    """The frames cannot be given as asked; ``status`` is the HTTP answer (400, 404 or 406)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Window:
    """A linear VOI window (PS3.3 C.11.2.1.2.1) on modality values."""

    center: float
    width: float


def _syntax(dataset: Dataset) -> UID:
    return UID(str(dataset.file_meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian))


def frame_count(dataset: Dataset) -> int:
    """How many frames the instance has (0 without Pixel Data)."""
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        return 0
    return int(dataset.get("NumberOfFrames") or 1)


def pixel_vr(dataset: Dataset, transfer_syntax: str | None) -> str:
    """The VR Pixel Data has in the file: OB when encapsulated or 8-bit, else OW."""
    compressed = transfer_syntax is not None and UID(transfer_syntax).is_compressed
    return "OB" if compressed or int(dataset.get("BitsAllocated") or 8) <= 8 else "OW"


def _check(dataset: Dataset, numbers: Sequence[int]) -> int:
    count = frame_count(dataset)
    if count == 0:
        raise FrameError(404, "the instance has no pixel data (it is not an image)")
    outside = [n for n in numbers if not 1 <= n <= count]
    if outside:
        raise FrameError(404, f"frame {outside[0]} does not exist: the instance has {count} frame(s)")
    return count


def _decoded(dataset: Dataset, count: int) -> np.ndarray:
    """All frames decoded, shape (frames, rows, columns[, samples])."""
    try:
        array = dataset.pixel_array
    except Exception as exc:  # pydicom raises many kinds for a codec it lacks or bad data
        reason = f"the stored pixel data cannot be decoded ({exc}); ask transfer-syntax=*"
        raise FrameError(406, reason) from exc
    return array if count > 1 else array[np.newaxis, ...]


def frames(
    dataset: Dataset, numbers: Sequence[int], transfer_syntax: str | None, media_type: str | None = None
) -> list[tuple[str, bytes]]:
    """``(part content type, bytes)`` of the frames ``numbers`` (1-based) of ``dataset``.

    ``transfer_syntax``: ``None`` or Explicit VR Little Endian for native samples, ``*`` for the
    stored encoding, or a specific compressed syntax (served only when it is the stored one).
    ``media_type``: an image type the client asked for (``image/jpeg``, ...), served only when the
    frames are stored in it; ``None`` for ``application/octet-stream``, which labels every part.
    """
    count = _check(dataset, numbers)
    stored = _syntax(dataset)
    stored_media = COMPRESSED_MEDIA_TYPES.get(str(stored))
    if media_type is not None and media_type != stored_media:
        raise FrameError(
            406, f"frames are stored as {stored}, not as {media_type}: ask for application/octet-stream"
        )
    if stored.is_compressed and transfer_syntax in ("*", str(stored)):
        encoded = list(generate_frames(dataset.PixelData, number_of_frames=count))
        return [(f"{media_type or NATIVE}; transfer-syntax={stored}", encoded[n - 1]) for n in numbers]
    if transfer_syntax not in (None, "*", ExplicitVRLittleEndian):
        raise FrameError(
            406,
            f"frames are stored as {stored}: ask for {ExplicitVRLittleEndian} (uncompressed) "
            "or transfer-syntax=* (as stored)",
        )
    label = f"{NATIVE}; transfer-syntax={ExplicitVRLittleEndian}"
    bits = int(dataset.get("BitsAllocated") or 8)
    if not stored.is_compressed and stored.is_little_endian and bits % 8 == 0:
        size = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel") or 1) * bits // 8
        raw = dataset.PixelData
        return [(label, bytes(raw[(n - 1) * size : n * size])) for n in numbers]
    decoded = _decoded(dataset, count)
    little = decoded.dtype.newbyteorder("<")
    return [(label, decoded[n - 1].astype(little, copy=False).tobytes()) for n in numbers]


def render(
    dataset: Dataset,
    number: int,
    *,
    media_type: str,
    window: Window | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """Frame ``number`` as an 8-bit PNG or JPEG (PS3.18 8.3.5): grey levels by ``window`` (linear, on
    modality values) or else the instance's own VOI (window or VOI LUT, as covidet's viewer shows it),
    MONOCHROME1 inverted; colour frames as decoded. ``viewport`` (width, height) shrinks the picture
    to fit it, aspect ratio kept (a larger viewport leaves the frame's own size)."""
    count = _check(dataset, [number])
    frame = _decoded(dataset, count)[number - 1]
    if frame.ndim == 3:  # colour: shown as decoded, scaled to 8 bits
        picture = PILImage.fromarray(_to_uint8(frame.astype(np.float64) / max(1.0, float(frame.max()))))
    else:
        if window is not None:
            values = apply_modality_lut(frame, dataset).astype(np.float64)
            low = window.center - 0.5 - (window.width - 1) / 2
            grey = np.clip((values - (window.center - 0.5)) / max(window.width - 1, 1e-9) + 0.5, 0.0, 1.0)
            grey[values <= low] = 0.0
        else:
            grey = grayscale_display(frame, dataset)
        if str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
            grey = 1.0 - grey
        picture = PILImage.fromarray(_to_uint8(grey))
    if viewport is not None:
        # Shrink to fit, never enlarge: a bigger picture than the frame holds no more information,
        # and an 8192-pixel upscale would cost the server seconds of CPU for nothing.
        scale = min(1.0, viewport[0] / picture.width, viewport[1] / picture.height)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if media_type == "image/jpeg":
        picture.convert("RGB" if picture.mode not in ("L", "RGB") else picture.mode).save(
            buffer, format="JPEG", quality=quality
        )
    else:
        picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def as_explicit_little_endian(data: bytes) -> bytes:
    """A Part 10 file re-encoded as Explicit VR Little Endian (compressed pixels decoded).

    Raises:
        FrameError: 406 when the pixels cannot be decoded here.
    """
    dataset = dcmread(io.BytesIO(data))
    stored = _syntax(dataset)
    if stored == ExplicitVRLittleEndian:
        return data
    try:
        if stored.is_compressed:
            dataset.decompress()
        else:
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
    except Exception as exc:
        reason = f"the instance is stored as {stored} and cannot be re-encoded here ({exc})"
        raise FrameError(406, reason + ": ask transfer-syntax=*") from exc
    return buffer.getvalue()
