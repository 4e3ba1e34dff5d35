"""The format of an input from its content, and the DICOM header values the readers share.

Contract: the format is recognised from the bytes, never from a file name: :data:`PNG_MAGIC`,
:data:`JPEG_MAGIC`, else DICOM (``DICM`` at offset 128, or a preamble-less dataset with pixel-related
tags). :func:`parse_dicom` raises :class:`~covidet.imaging.errors.ImageReadError` for anything else;
:func:`transfer_syntax` always answers one (for a dataset without file meta, the encoding pydicom
detected, which it also records in the file meta); :func:`header_text` is a stripped string or ``None``.
"""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from covidet.imaging.errors import ImageReadError, one_line

__all__ = ["JPEG_MAGIC", "PNG_MAGIC", "header_text", "parse_dicom", "transfer_syntax"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def parse_dicom(data: bytes, name: str) -> Dataset:
    """The dataset in ``data`` (read with ``force=True``), refused unless it is a DICOM image."""
    has_preamble = data[128:132] == b"DICM"
    not_an_image = "not a DICOM file and not a PNG/JPEG image"
    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        reason = f"truncated or corrupt DICOM: {one_line(exc)}" if has_preamble else not_an_image
        raise ImageReadError(name, reason) from exc
    if not has_preamble and not any(k in ds for k in ("PixelData", "Rows", "Columns")):
        raise ImageReadError(name, not_an_image)
    return ds


def transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax of ``ds``, recorded in its file meta when it had none."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax:
        return UID(tsyntax)
    # Preamble-less datasets carry no file meta: use the encoding pydicom detected while reading.
    implicit, little = ds.original_encoding
    tsyntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    tsyntax = tsyntax if little or little is None else ExplicitVRBigEndian
    ds.file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


def header_text(ds: Dataset, keyword: str) -> str | None:
    """The value of ``keyword`` as a stripped string; ``None`` when absent or blank."""
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    return text or None
