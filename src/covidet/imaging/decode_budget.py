"""The memory one decode will cost, computed from the header alone, and the budget that bounds it.

The pixel limit (``max_image_pixels``) bounds width x height, but not the bytes per pixel: a
7000 x 7000 PNG of 16-bit RGBA (a few hundred KB on the wire, under the pixel limit) made the
server allocate about 560 MB to decode and convert it. :func:`check_decode_budget` refuses, before
anything is decoded, an image whose estimated decode exceeds ``max_decode_bytes``
(``COVIDET_MAX_DECODE_BYTES``), with the same ``image too large`` reason the pixel limit gives, so
every ingest path answers it the same way (HTTP 413, DICOM 0xA700, a ``rejected_messages`` row).

The estimate (docs/upload.md, "Decode memory budget") is

    decoded + working = W x H x frames x samples x bytes per sample + W x H x working bytes per pixel

where the decoded array is what the decoder returns (DICOM: SamplesPerPixel x BitsAllocated/8;
PNG: the channels and bit depth of its IHDR, 16-bit samples counted as 2 bytes, as the file
promises them; JPEG: the bands of Pillow's mode; never less than Pillow's own storage, 4 bytes a
pixel for any multi-band image), and the working copies are what
:func:`~covidet.imaging.reader.read_image` makes on top of it:

* PNG / JPEG: an 8-bit grayscale copy (``convert("L")``) and the float32 result: 5 bytes a pixel.
* DICOM: the display transform works in float64 (the Modality/VOI output and its scaled copy, one
  float64 per sample for a colour image's luminance product) plus the float32 result:
  8 x (samples + 1) + 4 bytes a pixel, 20 for a monochrome image.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings

from PIL import Image
from pydicom.dataset import Dataset

from covidet.imaging.errors import ImageReadError

__all__ = [
    "DEFAULT_MAX_DECODE_BYTES",
    "MAX_DECODE_BYTES_ENV",
    "check_decode_budget",
    "configured_max_decode_bytes",
    "decode_bytes",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_DECODE_BYTES = 512 * 1024 * 1024
"""Default budget: a 4096 x 4096 16-bit monochrome DICOM (the largest common chest X-ray detector)
costs 16,777,216 x (2 + 20) = 369,098,752 bytes and passes; a 7000 x 7000 16-bit RGBA PNG costs
49,000,000 x (8 + 5) = 637,000,000 bytes and is refused."""
MAX_DECODE_BYTES_ENV = "COVIDET_MAX_DECODE_BYTES"
"""The setting ``Settings.max_decode_bytes``, read here when a caller does not pass a budget."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> channels (0 gray, 2 RGB, 3 palette index, 4 gray + alpha, 6 RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PILLOW_WORKING = 1 + 4  # the 8-bit grayscale copy and the float32 result
_FLOAT64 = 8
_FLOAT32 = 4


def configured_max_decode_bytes() -> int:
    """The budget from ``COVIDET_MAX_DECODE_BYTES`` when set (a positive integer), else the default.

    Raises:
        ValueError: the variable is set but is not a positive integer (a misconfiguration must not
            silently become "no limit").
    """
    raw = os.environ.get(MAX_DECODE_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_DECODE_BYTES
    value = int(raw)
    if value < 1:
        raise ValueError(f"{MAX_DECODE_BYTES_ENV} must be a positive number of bytes, not {raw!r}")
    return value


def decode_bytes(source: bytes | Dataset) -> tuple[int, str]:
    """``(bytes, description)``: the estimated peak memory of decoding ``source`` and a short
    description of what was counted (``"7000x7000 PNG, 4 x 16-bit samples"``). Header only.

    ``source`` is a PNG or JPEG file, or a parsed DICOM data set (or its bytes are not accepted:
    the caller has already parsed it). Raises :class:`ImageReadError` for a header it cannot read.
    """
    if isinstance(source, Dataset):
        return _dicom_bytes(source)
    if source[:8] == _PNG_MAGIC and source[12:16] == b"IHDR" and len(source) >= 26:
        width, height, depth, colour = struct.unpack(">IIBB", source[16:26])
        channels = _PNG_CHANNELS.get(colour, 4)
        per_pixel = max(channels * max(depth // 8, 1), _pillow_storage(channels))
        total = width * height * (per_pixel + _PILLOW_WORKING)
        return total, f"{width}x{height} PNG, {channels} x {depth}-bit samples"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source))  # lazy: reads the header only
            width, height, bands, fmt = im.width, im.height, len(im.getbands()), im.format
    except Exception as exc:  # inspect_image already parsed it; kept as a one-line refusal
        raise ImageReadError(f"header cannot be parsed: {exc}") from exc
    total = width * height * (_pillow_storage(bands) + _PILLOW_WORKING)
    return total, f"{width}x{height} {fmt}, {bands} x 8-bit samples"


def _pillow_storage(bands: int) -> int:
    """Bytes a pixel in Pillow's own image memory: 1 for one band, 4 for any multi-band 8-bit mode
    (RGB and LA are stored in 4 bytes, like RGBA)."""
    return 1 if bands == 1 else 4


def _dicom_bytes(ds: Dataset) -> tuple[int, str]:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(f"DICOM image header is incomplete: {exc}") from exc
    pixels = rows * cols
    per_sample = max((bits + 7) // 8, 1)
    decoded = pixels * max(frames, 1) * samples * per_sample
    working = pixels * (_FLOAT64 * (samples + 1) + _FLOAT32)
    frames_text = f" x {frames} frames" if frames > 1 else ""
    return decoded + working, f"{cols}x{rows}{frames_text} DICOM, {samples} x {bits}-bit samples"


def check_decode_budget(source: bytes | Dataset, *, name: str, max_decode_bytes: int | None = None) -> None:
    """Refuse ``source`` when decoding it would cost more than ``max_decode_bytes`` (``None``:
    :func:`configured_max_decode_bytes`). Reads headers only; call it before any decoding.

    Raises:
        ImageReadError: ``"image too large: decoding <what> needs about N bytes, more than the
            limit of M (max_decode_bytes)"``, the wording every ingest path maps to "too large".
    """
    limit = configured_max_decode_bytes() if max_decode_bytes is None else max_decode_bytes
    try:
        needed, what = decode_bytes(source)
    except ImageReadError as exc:
        raise ImageReadError(name, exc.reason) from exc
    if needed > limit:
        logger.info(
            "refused %s before decoding: %s needs about %d bytes (limit %d)", name, what, needed, limit
        )
        raise ImageReadError(
            name,
            f"image too large: decoding {what} needs about {needed} bytes, "
            f"more than the limit of {limit} (max_decode_bytes)",
        )
