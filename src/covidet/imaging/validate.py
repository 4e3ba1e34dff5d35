"""The acceptance check of an image: *whatever covidet acknowledges, it can analyse*.

:func:`validate_image` is the one check the DICOM receiver and the HTTPS upload run before they
acknowledge (C-STORE success, HTTP 201); both refuse the same inputs for the same reasons. In order:

1. **Header** (:func:`~covidet.imaging.reader.inspect_image`): single frame, pixel count under the
   limit (a decompression bomb is refused before any decoding), pixel data of the promised length,
   a transfer syntax with an installed decoder; then the memory the decode will cost, estimated
   from the header, within ``max_decode_bytes`` (:mod:`.decode_budget`: a 16-bit RGBA image under
   the pixel limit can still cost hundreds of MB).
2. **Chest radiograph** (:func:`check_chest_radiograph`, DICOM): Modality, BodyPartExamined,
   photometric interpretation and samples per pixel of a projection radiograph, and a minimum size.
   A refusal here raises :class:`NotChestRadiograph`.
3. **Complete, consistent compressed frame** (:func:`check_frame_complete`): a JPEG, JPEG-LS,
   JPEG 2000 or HTJ2K frame must end with its end-of-image / end-of-codestream marker, and the size
   in its own header (SOF / SIZ) must be the data set's Rows x Columns; an RLE frame's segment
   offsets must lie inside the frame. The decoders silently pad a cut stream (libjpeg returns a
   half-grey image without an error), so decoding alone does not find truncation; and they size
   their output from the frame header, so a frame claiming 60000 x 60000 pixels inside a small
   image would be a decompression bomb that the DICOM header check cannot see.
4. **Decode** the frame once, with the decoder the analysis will use (:mod:`.frames`), and run the
   display transform (Modality LUT, VOI LUT or window) on a small crop, which finds malformed LUTs
   and windows at the cost of a few pixels. PNG and JPEG files are decoded by
   :func:`~covidet.imaging.reader.read_image`.

Everything refused raises :class:`~covidet.imaging.reader.ImageReadError` (one-line reason):
:class:`NotChestRadiograph` for a readable image that is not what covidet assesses, a reason
starting ``image too large`` for the size limits, anything else for an image that cannot be decoded.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, RLELossless

from covidet.imaging.decode_budget import check_decode_budget
from covidet.imaging.display import grayscale_display
from covidet.imaging.frames import decode_frame
from covidet.imaging.reader import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageHeader,
    ImageReadError,
    inspect_image,
    read_image,
)

__all__ = [
    "CHEST_BODY_PARTS",
    "MIN_IMAGE_SIDE",
    "RADIOGRAPHY_MODALITIES",
    "SECONDARY_CAPTURE",
    "NotChestRadiograph",
    "check_chest_radiograph",
    "check_frame_complete",
    "validate_image",
]

logger = logging.getLogger(__name__)

#: Modality values of projection radiography: CR, DX, and the non-standard DR and retired RG that some
#: older modalities still send.
RADIOGRAPHY_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
#: Secondary Capture Image Storage: a digitised film or a gateway's conversion, Modality often OT.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Words that mark a chest in BodyPartExamined (upper case, matched as substrings: "CHEST",
#: "PORT CHEST", "THORAX", "TORAX" (es/pt), "LUNG"). An absent or empty value is accepted.
CHEST_BODY_PARTS = ("CHEST", "THORA", "TORAX", "LUNG")
#: Smallest accepted width and height, pixels: below this there is nothing to assess (thumbnails,
#: icons, test patterns); the detector's inputs are hundreds of pixels on a side.
MIN_IMAGE_SIDE = 128

_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
#: End-of-image (JPEG, JPEG-LS) and end-of-codestream (JPEG 2000, HTJ2K) markers are both FF D9.
_END_MARKER = b"\xff\xd9"
_CROP = 16  # side of the crop the display transform is checked on
#: Start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 (JPEG) and SOF55 (JPEG-LS).
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
)
#: JPEG (baseline, extended, lossless) and JPEG-LS.
_JPEG_FAMILY = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81))
#: JPEG 2000 and HTJ2K.
_J2K_FAMILY = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 201, 202, 203))


class NotChestRadiograph(ImageReadError):
    """A readable image that is not a chest radiograph covidet assesses (wrong modality, body part,
    photometric interpretation or size)."""


@dataclass(frozen=True, slots=True)
class ValidatedImage:
    """An image that passed :func:`validate_image`: its header, ready for the store and database."""

    header: ImageHeader


def validate_image(
    source: bytes,
    *,
    dataset: Dataset | None = None,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_decode_bytes: int | None = None,
) -> ValidatedImage:
    """Check ``source`` (DICOM Part 10, PNG or JPEG bytes) as described in the module docstring.

    ``dataset`` is the already parsed DICOM when the caller has it (the receiver), so the object is
    not parsed again. The pixels are decoded exactly once. ``max_decode_bytes`` bounds the memory of
    that decode (``None``: ``COVIDET_MAX_DECODE_BYTES`` or the default, see :mod:`.decode_budget`).

    Raises:
        NotChestRadiograph: readable, but not a chest radiograph covidet accepts.
        ImageReadError: anything else that makes the image unusable (with a one-line reason).
    """
    header = inspect_image(dataset if dataset is not None else source, name=name, max_pixels=max_pixels)
    if header.media_type != "application/dicom":
        check_decode_budget(source, name=name, max_decode_bytes=max_decode_bytes)
        _check_side(name, header.width, header.height)
        read_image(source, name=name, max_pixels=max_pixels, max_bytes=max_bytes)  # Pillow decodes
        return ValidatedImage(header)
    ds = dataset if dataset is not None else _parse(source, name)
    check_decode_budget(ds, name=name, max_decode_bytes=max_decode_bytes)
    check_chest_radiograph(ds, name=name)
    tsyntax = UID(header.transfer_syntax_uid or "")
    if tsyntax.is_encapsulated:
        try:
            frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
        except Exception as exc:
            raise ImageReadError(name, f"truncated or corrupt encapsulated pixel data: {exc}") from exc
        check_frame_complete(frame, tsyntax, name=name, rows=header.height, columns=header.width)
    _decode(ds, tsyntax, name)
    return ValidatedImage(header)


def _parse(source: bytes, name: str) -> Dataset:
    try:  # inspect_image parsed the same bytes a moment ago, so this does not fail in practice
        return dcmread(io.BytesIO(source), force=True)
    except Exception as exc:
        raise ImageReadError(name, f"truncated or corrupt DICOM: {exc}") from exc


def _check_side(name: str, width: int, height: int) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        raise NotChestRadiograph(
            name,
            f"image of {width}x{height} pixels is too small for a chest radiograph "
            f"(at least {MIN_IMAGE_SIDE} pixels on each side)",
        )


def _upper(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip().upper()


def check_chest_radiograph(ds: Dataset, *, name: str = "<bytes>") -> None:
    """Refuse a DICOM image that is not a projection radiograph of the chest.

    Rules (docs/dicom.md, "What is accepted"): Modality in :data:`RADIOGRAPHY_MODALITIES` (plus
    ``OT`` for Secondary Capture); BodyPartExamined absent, empty or naming the chest
    (:data:`CHEST_BODY_PARTS`); MONOCHROME1/2 with one sample per pixel (colour RGB/YBR with three
    samples only for Secondary Capture); at least :data:`MIN_IMAGE_SIDE` pixels on each side.

    Raises:
        NotChestRadiograph: naming the attribute and its value.
    """
    sop_class = str(ds.get("SOPClassUID") or "")
    is_sc = sop_class == SECONDARY_CAPTURE
    modality = _upper(ds, "Modality")
    allowed = RADIOGRAPHY_MODALITIES | ({"OT"} if is_sc else set())
    if modality not in allowed:
        raise NotChestRadiograph(
            name,
            f"Modality {modality or '(missing)'} is not a radiograph "
            f"(accepted: {', '.join(sorted(allowed))})",
        )
    body_part = _upper(ds, "BodyPartExamined")
    if body_part and not any(word in body_part for word in CHEST_BODY_PARTS):
        raise NotChestRadiograph(name, f"BodyPartExamined {body_part} is not the chest")
    photometric = _upper(ds, "PhotometricInterpretation")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if photometric in _MONOCHROME:
        ok = samples == 1
    else:
        ok = is_sc and photometric in _COLOUR and samples == 3
    if not ok:
        raise NotChestRadiograph(
            name,
            f"PhotometricInterpretation {photometric or '(missing)'} with {samples} samples per pixel is "
            "not a radiograph (MONOCHROME1/2, 1 sample; RGB/YBR only for Secondary Capture)",
        )
    _check_side(name, int(ds.Columns), int(ds.Rows))


def check_frame_complete(
    frame: bytes,
    transfer_syntax: UID,
    *,
    name: str = "<bytes>",
    rows: int | None = None,
    columns: int | None = None,
) -> None:
    """Refuse a compressed frame that was cut short, or whose own header gives another size than
    ``rows`` x ``columns`` (see the module docstring, step 3).

    The frame may end with padding after the marker (DICOM pads fragments to an even length with
    00, some encoders with FF). FF D9 cannot occur inside JPEG entropy-coded data (an FF there is
    followed by 00 or a restart marker) nor inside JPEG 2000 packet data (bit stuffing), so the
    check has no false alarms on complete frames.
    """
    if transfer_syntax == RLELossless:
        _check_rle(frame, name)
        return
    if not str(transfer_syntax).startswith("1.2.840.10008.1.2.4."):
        return  # deflate is checked by parsing; other encapsulated syntaxes have no decoder here
    if not frame.rstrip(b"\x00\xff").endswith(_END_MARKER):
        raise ImageReadError(
            name,
            f"truncated compressed frame: {len(frame)} bytes without the end marker FFD9 "
            f"({transfer_syntax.name})",
        )
    if rows is not None and columns is not None:
        _check_frame_size(frame, transfer_syntax, name, rows, columns)


def _check_frame_size(frame: bytes, transfer_syntax: UID, name: str, rows: int, columns: int) -> None:
    """The frame header's size must be the data set's (read from SOF / SIZ, without decoding)."""
    uid = str(transfer_syntax)
    if uid in _JPEG_FAMILY:
        size = _jpeg_size(frame)
    elif uid in _J2K_FAMILY:
        size = _j2k_size(frame)
    else:
        return
    if size is None:
        raise ImageReadError(name, f"compressed frame has no readable frame header ({transfer_syntax.name})")
    if size != (rows, columns):
        raise ImageReadError(
            name,
            f"compressed frame is {size[1]}x{size[0]} pixels, the DICOM header says {columns}x{rows}",
        )


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the first SOF marker segment of a JPEG or JPEG-LS stream, or ``None``."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            if pos + 9 > len(frame):
                return None
            rows, columns = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            return rows, columns
        if marker == 0xDA or marker == 0xD9:  # scan or end before any frame header
            return None
        pos += 2 + struct.unpack(">H", frame[pos + 2 : pos + 4])[0]
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the SIZ marker segment of a JPEG 2000 / HTJ2K codestream, or ``None``."""
    start = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC + SIZ; a JP2 wrapper puts boxes first
    if start < 0 or start + 28 > len(frame):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">LLLL", frame[start + 8 : start + 24])
    return ysiz - yosiz, xsiz - xosiz


def _check_rle(frame: bytes, name: str) -> None:
    if len(frame) < 64:
        raise ImageReadError(name, f"truncated RLE frame: {len(frame)} bytes, less than its 64-byte header")
    count, *offsets = struct.unpack("<16L", frame[:64])
    used = offsets[:count]
    if not 1 <= count <= 15 or any(not 64 <= off < len(frame) for off in used) or used != sorted(used):
        raise ImageReadError(
            name, f"truncated or corrupt RLE frame: segment offsets {used} outside its {len(frame)} bytes"
        )


def _decode(ds: Dataset, tsyntax: UID, name: str) -> None:
    """Decode the frame as :func:`read_image` will, and run the display transform on a crop."""
    label = tsyntax.name if tsyntax.name == str(tsyntax) else f"{tsyntax.name} [{tsyntax}]"
    try:
        arr, _ = decode_frame(ds, tsyntax)
    except BaseException as exc:  # a Rust decoder's PanicException derives from BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        reason = " ".join(str(exc).split())
        raise ImageReadError(name, f"cannot decode DICOM pixel data ({label}): {reason[:300]}") from exc
    if arr.ndim != 2:
        return  # colour (Secondary Capture): converted to luminance by the reader, nothing to fail
    try:
        crop = np.ascontiguousarray(arr[:_CROP, :_CROP])
        grayscale_display(crop, ds)
    except Exception as exc:  # malformed LUT descriptors, window width < 1, ...
        raise ImageReadError(name, f"cannot apply DICOM LUT/windowing: {exc}") from exc
