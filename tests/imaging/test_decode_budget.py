"""The decode memory budget (issue 19, item 17): an image under the pixel limit whose decode would
still cost hundreds of MB is refused from its header, on both ingest paths, before any decoding.

The bombs are a few hundred KB to a MB on the wire and are never decoded in this process: the
server (HTTPS, in a thread) and the receiver (C-STORE from dcmtk's storescu) refuse them from the
header. Arithmetic of the default budget: docs/upload.md, "Decode memory budget".
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import select

from covidet.config import Settings
from covidet.imaging.decode_budget import (
    DEFAULT_MAX_DECODE_BYTES,
    MAX_DECODE_BYTES_ENV,
    check_decode_budget,
    configured_max_decode_bytes,
    decode_bytes,
)
from covidet.imaging.reader import ImageReadError
from covidet.store.models import Image, RejectedMessage
from tests.api.test_upload import make_app, post, serve_in_thread
from tests.ingest.conftest import MODALITY_AE, Harness, storescu
from tests.ingest.dicom_receivers import receiver_factory  # noqa: F401 (fixture)

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def png_16bit_rgba(side: int) -> bytes:
    """A valid side x side PNG, 16 bits per sample, RGBA, with a small pattern: ~400 KB for 7000.

    Written chunk by chunk with zlib (Pillow cannot write 16-bit RGBA), one row at a time, so the
    test never holds the 392 MB of raw rows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)  # bit depth 16, colour type 6: RGBA
    pixels = np.zeros((side, 4), dtype=">u2")
    pixels[::97] = (40000, 20000, 10000, 65535)  # a sparse pattern: not a single run of zeros
    row = b"\0" + pixels.tobytes()  # filter byte 0 (None) + the samples
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rle_dx(side: int, path: Path) -> Path:
    """A side x side 16-bit monochrome DX chest image of zeros, RLE Lossless: ~1 MB for 6000,
    a 72 MB frame once decoded and several hundred MB through the display transform."""
    # PackBits per row (the standard forbids runs across rows): 0x81 = repeat the next byte 128 times.
    full, rest = divmod(side, 128)
    row = b"\x81\x00" * full + (bytes([257 - rest, 0]) if rest else b"")
    segment = row * side
    segment += b"\0" * (len(segment) % 2)
    offsets = [64, 64 + len(segment)]  # two segments: the high and the low byte of each sample
    frame = struct.pack("<16L", 2, *offsets, *([0] * 13)) + segment * 2

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.BodyPartExamined = "P-BOMB", "Bomb^Test", "DX", "CHEST"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _header(rows: int, cols: int, bits: int = 16, samples: int = 1, frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = rows, cols, bits, samples
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


# ------------------------------------------------------------------------------------------ estimate


def test_the_estimate_and_the_default_budget_as_documented() -> None:
    """The arithmetic of docs/upload.md: a 4096 x 4096 16-bit X-ray passes, the 16-bit RGBA bomb
    (under the 50 Mpixel limit) does not."""
    xray, _ = decode_bytes(_header(4096, 4096))
    assert xray == 4096 * 4096 * (2 + 20) == 369_098_752 < DEFAULT_MAX_DECODE_BYTES
    check_decode_budget(_header(4096, 4096), name="xray.dcm")  # no error
    bomb, what = decode_bytes(png_16bit_rgba(7000))
    assert bomb == 7000 * 7000 * (4 * 2 + 5) == 637_000_000 > DEFAULT_MAX_DECODE_BYTES
    assert what == "7000x7000 PNG, 4 x 16-bit samples"
    for fmt in ("PNG", "JPEG"):  # 8-bit RGB: Pillow stores it in 4 bytes a pixel, counted as such
        buffer = io.BytesIO()
        PILImage.new("RGB", (200, 100)).save(buffer, format=fmt)
        assert decode_bytes(buffer.getvalue())[0] == 200 * 100 * (4 + 5)
    frames, what = decode_bytes(_header(2000, 2000, frames=100))
    assert frames == 2000 * 2000 * (100 * 2 + 20) and "x 100 frames" in what
    assert Settings().max_decode_bytes == DEFAULT_MAX_DECODE_BYTES


def test_the_budget_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_DECODE_BYTES_ENV, "100000000")
    assert configured_max_decode_bytes() == 100_000_000 == Settings().max_decode_bytes
    with pytest.raises(ImageReadError, match=r"^xray\.dcm: image too large: decoding 4096x4096 DICOM"):
        check_decode_budget(_header(4096, 4096), name="xray.dcm")
    check_decode_budget(_header(4096, 4096), name="xray.dcm", max_decode_bytes=400_000_000)
    monkeypatch.setenv(MAX_DECODE_BYTES_ENV, "0")
    with pytest.raises(ValueError, match="positive"):
        configured_max_decode_bytes()


# ------------------------------------------------------------------------------------- ingest paths


def test_https_upload_refuses_a_16bit_rgba_bomb_and_keeps_serving(tmp_path: Path) -> None:
    app, keys = make_app(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}")
    bomb = png_16bit_rgba(7000)
    assert len(bomb) < 1024 * 1024
    with serve_in_thread(app) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
        refused = post(client, keys.uploader.api_key, bomb, "rgba16.png", patient_id="P-1")
        assert refused.status_code == 413, refused.text
        detail = refused.json()["detail"]
        assert "image too large" in detail and "7000x7000 PNG, 4 x 16-bit samples" in detail
        assert "max_decode_bytes" in detail
        # Still serving, and a legitimate 16-bit PNG (grayscale, 1024 x 1024) is accepted.
        good = png_16bit_rgba(1024)
        ok = post(client, keys.uploader.api_key, good, "small-rgba16.png", patient_id="P-1")
        assert ok.status_code == 201, ok.text
    with app.state.db.session() as session:
        rejected = list(session.scalars(select(RejectedMessage)))
        images = list(session.scalars(select(Image)))
    assert len(images) == 1
    assert len(rejected) == 1 and "max_decode_bytes" in rejected[0].reason


def test_cstore_refuses_a_dicom_whose_decode_exceeds_the_budget(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    tmp_path: Path,
) -> None:
    """6000 x 6000 x 16 bits: 36 Mpixels, under the pixel limit, ~1 MB on the wire; its decode
    would cost 36,000,000 x 22 = 792 MB. Before the budget it was acknowledged (0x0000)."""
    harness = receiver_factory()
    bomb = rle_dx(6000, tmp_path / "bomb.dcm")
    assert bomb.stat().st_size < 2 * 1024 * 1024
    result = storescu(harness.port, [bomb], "-xr", "-nh")  # propose RLE Lossless
    assert "Received Store Response (Success)" not in result.stdout, result.stdout
    assert "Received Store Response (Refused: OutOfResources)" in result.stdout, result.stdout  # 0xA700
    with harness.db.session() as session:
        images = list(session.scalars(select(Image)))
        rejected = list(session.scalars(select(RejectedMessage)))
    assert images == []
    assert [r.source for r in rejected] == [MODALITY_AE]
    assert "image too large" in rejected[0].reason and "6000x6000 DICOM" in rejected[0].reason
    # Still serving: a small image of the same kind is acknowledged.
    good = storescu(harness.port, [rle_dx(512, tmp_path / "small.dcm")], "-xr", "-nh")
    assert "Received Store Response (Success)" in good.stdout, good.stdout
