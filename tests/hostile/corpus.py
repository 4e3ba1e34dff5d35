"""The hostile-input corpus: files built at test time, each with the outcome covidet must give it on
both ingest paths (DICOM C-STORE and HTTPS upload).

Sources: pydicom's test files (``pydicom.data.get_testdata_file``, package pydicom-data) and one real
chest X-ray of the dataset turned into a DX object, from which the generated cases are derived:
truncated at several offsets, compressed frames cut short or scrambled, wrong transfer-syntax labels,
huge headers, non-chest modalities relabelled as chest radiographs, and decompression bombs.

Expected outcomes (docs/dicom.md, "Statuses returned"; docs/upload.md):

- ``dicom``: the C-STORE status (``0x0000`` accepted; ``0xA700`` too large; ``0xA900`` not a chest
  radiograph / no pixels; ``0xC000`` truncated, corrupt or undecodable), or :data:`NEGOTIATION`
  (the SOP class is refused at association negotiation, so no C-STORE can carry it), or
  :data:`UNSENDABLE` (not a DICOM object a sender can put in a C-STORE: PNG, text, a file cut inside
  its file meta information).
- ``http``: the status of ``POST /api/v1/images`` (201 accepted; 413 too large; 415 not an image
  format; 422 refused).
"""

from __future__ import annotations

import io
import random
import struct
import subprocess
import zlib
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from covidet.imaging.dicom_writer import xray_to_dicom

__all__ = ["NEGOTIATION", "UNSENDABLE", "Case", "build_corpus"]

NEGOTIATION = "negotiation"
UNSENDABLE = "unsendable"

DX = "1.2.840.10008.5.1.4.1.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Case:
    """One corpus file and the outcomes it must get."""

    name: str
    data: bytes
    dicom: int | str
    http: int
    why: str


def part10(ds: Dataset, label: str | None = None, *, implicit: bool = False, little: bool = True) -> bytes:
    """``ds`` as a Part-10 file whose file meta says transfer syntax ``label`` (default: the data
    set's own), with the data set encoded as ``implicit``/``little`` regardless of the label: the way
    to make a file that lies about its encoding."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = label or ds.file_meta.TransferSyntaxUID
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = implicit, little
    write_dataset(body, ds)
    return out.getvalue() + body.getvalue()


def fresh(ds: Dataset, **attributes: object) -> Dataset:
    """A copy of ``ds`` with a new SOP Instance UID (each case is its own instance) and ``attributes``."""
    copy = deepcopy(ds)  # a shallow copy shares DataElements: setting a value would change ``ds``
    copy.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        if value is None:
            delattr(copy, keyword)
        else:
            setattr(copy, keyword, value)
    return copy


def as_dx(path: str, **attributes: object) -> Dataset:
    """A pydicom test file relabelled as a DX chest radiograph (SOP class only, unless told more)."""
    return fresh(dcmread(path), **{"SOPClassUID": DX, **attributes})


def with_frame(ds: Dataset, frame: bytes) -> bytes:
    copy = fresh(ds)
    copy.PixelData = encapsulate([frame])
    return part10(copy)


def _testdata(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom-data lacks {name}"
    return str(path)


def bomb_png(side: int = 30_000) -> bytes:
    """A valid side x side 1-bit PNG of zeros: ~110 KB, 900 Mpixel once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = b"\0" * (1 + (side + 7) // 8) * 1000
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def build_corpus(chest_jpeg: Path, workdir: Path, *, max_bytes: int) -> list[Case]:
    """Every case, built from the real X-ray ``chest_jpeg`` and pydicom's files (``workdir`` holds
    the intermediate files dcmtk needs). ``max_bytes`` is the ingest size limit under test."""
    base = xray_to_dicom(chest_jpeg, patient_id="hostile-1")
    base_path = workdir / "base.dcm"
    base.save_as(base_path, enforce_file_format=True)
    jpeg_path = workdir / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", "+eb", str(base_path), str(jpeg_path)], check=True, capture_output=True)
    jpeg = dcmread(jpeg_path)
    frame = next(generate_frames(jpeg.PixelData, number_of_frames=1))
    plain = part10(fresh(base))
    cases: list[Case] = []

    def add(name: str, data: bytes, dicom: int | str, http: int, why: str) -> None:
        cases.append(Case(name, data, dicom, http, why))

    # --- accepted: what a modality really sends -----------------------------------------------------
    add("dx-uncompressed", plain, 0x0000, 201, "a chest X-ray as DX, Explicit VR Little Endian")
    add("dx-jpeg-baseline", with_frame(jpeg, frame), 0x0000, 201, "dcmcjpeg +eb")
    j2k = fresh(base)
    j2k.compress(JPEG2000Lossless)
    add("dx-jpeg2000-lossless", part10(j2k), 0x0000, 201, "pydicom/openjpeg")
    rle = fresh(base)
    rle.compress(RLELossless)
    add("dx-rle", part10(rle), 0x0000, 201, "pydicom RLE encoder")
    extended = as_dx(_testdata("JPGExtended.dcm"), SOPClassUID=SC, Modality="OT", BodyPartExamined=None)
    add("sc-jpeg-extended-12bit", part10(extended), 0x0000, 201, "12-bit JPEG Extended decodes (libjpeg)")
    thorax = fresh(base, BodyPartExamined="THORAX")
    add("dx-body-part-thorax", part10(thorax), 0x0000, 201, "THORAX is the chest")
    wordy = fresh(base)
    for group in range(0x0011, 0x0011 + 2 * 80, 2):  # 20 000 private elements before the pixels
        block = wordy.private_block(group, "HOSTILE", create=True)
        for offset in range(250):
            block.add_new(offset, "LO", f"value {group:04x}-{offset}")
    add("dx-huge-header", part10(wordy), 0x0000, 201, "a large header within the byte limit is fine")

    # --- truncated ----------------------------------------------------------------------------------
    for percent in (25, 50, 90, 99):
        cut = frame[: len(frame) * percent // 100]
        add(
            f"jpeg-frame-cut-{percent}",
            with_frame(jpeg, cut + b"\0" * (len(cut) % 2)),
            0xC000,
            422,
            "libjpeg pads a cut frame silently: refused by the end-marker check",
        )
    for label, offset in (("in-pixel-data", len(plain) // 2), ("last-bytes", len(plain) - 2)):
        add(f"dicom-cut-{label}", plain[:offset], 0xC000, 422, "pixel data shorter than Rows x Columns")
    add("dicom-cut-in-header", plain[:600], 0xA900, 422, "ends before its pixel data: no pixel data")
    add("dicom-cut-in-meta", plain[:150], UNSENDABLE, 422, "no file meta to send it with")
    add("dicom-cut-in-preamble", plain[:100], UNSENDABLE, 415, "not even 'DICM'")

    # --- scrambled frames and wrong transfer-syntax labels --------------------------------------------
    scrambled = bytearray(frame)
    rng = random.Random(19)
    start = scrambled.find(b"\xff\xda") + 20
    for index in range(start, len(scrambled) - 2, 7):
        scrambled[index] = rng.randrange(256)
    add("jpeg-scrambled-entropy", with_frame(jpeg, bytes(scrambled)), 0xC000, 422, "libjpeg refuses it")
    png = io.BytesIO()
    from PIL import Image as PILImage

    PILImage.open(chest_jpeg).convert("L").save(png, format="PNG")
    add("png-labelled-jpeg-baseline", with_frame(jpeg, png.getvalue()), 0xC000, 422, "PNG in a JPEG frame")
    codestream = next(generate_frames(j2k.PixelData, number_of_frames=1))
    add("j2k-labelled-jpeg-baseline", with_frame(jpeg, codestream), 0xC000, 422, "J2K in a JPEG frame")
    native = fresh(base)
    add(
        "native-labelled-jpeg-baseline",
        part10(native, JPEGBaseline8Bit),
        0xC000,
        422,
        "no encapsulated fragments",
    )
    add(
        "jpeg-labelled-explicit-le",
        part10(fresh(jpeg), ExplicitVRLittleEndian),
        0xC000,
        422,
        "encapsulated data read as native pixels: too short",
    )
    lossy = as_dx(_testdata("JPEG-lossy.dcm"), SOPClassUID=SC, Modality="OT", BodyPartExamined=None)
    add("jpeg-lossy-pydicom", part10(lossy), 0xC000, 422, "non-conformant scan (Se != 63): libjpeg refuses")
    add(
        "jpeg-extended-labelled-baseline",
        part10(fresh(lossy), JPEGBaseline8Bit),
        0xC000,
        422,
        "a 12-bit stream labelled 8-bit baseline",
    )

    # --- not a chest radiograph -----------------------------------------------------------------------
    add("ct-relabelled-dx", part10(as_dx(_testdata("CT_small.dcm"))), 0xA900, 422, "Modality CT")
    add("mr-relabelled-dx", part10(as_dx(_testdata("MR_small.dcm"))), 0xA900, 422, "Modality MR")
    add("us-relabelled-dx", part10(as_dx(_testdata("US1_UNCR.dcm"))), 0xA900, 422, "Modality US, RGB")
    rtdose = as_dx(_testdata("rtdose_1frame.dcm"))
    add("rtdose-relabelled-dx", part10(rtdose, implicit=True), 0xA900, 422, "Modality RTDOSE")
    add("cr-extremity", part10(fresh(dcmread(_testdata("RG3_UNCR.dcm")))), 0xA900, 422, "CR of a hand")
    add("dx-body-part-knee", part10(fresh(base, BodyPartExamined="KNEE")), 0xA900, 422, "not the chest")
    tiny = fresh(base, Rows=64, Columns=64)
    tiny.PixelData = base.PixelData[: 64 * 64]
    add("dx-tiny", part10(tiny), 0xA900, 422, "64 x 64 pixels")
    add("dx-no-modality", part10(fresh(base, Modality=None)), 0xA900, 422, "Modality is type 1")
    nopixels = fresh(base, PixelData=None)
    add("dx-no-pixel-data", part10(nopixels), 0xA900, 422, "no pixel data")
    add("ct-original", part10(fresh(dcmread(_testdata("CT_small.dcm")))), NEGOTIATION, 422, "CT SOP class")

    # --- decompression bombs and size limits -----------------------------------------------------------
    claims = fresh(jpeg, Rows=60_000, Columns=60_000)
    claims.PixelData = encapsulate([frame])
    add("dx-header-claims-60000x60000", part10(claims), 0xA700, 413, "3.6 Gpixel by its header")
    sof = frame.find(b"\xff\xc0")
    big_frame = frame[: sof + 5] + struct.pack(">HH", 20_000, 20_000) + frame[sof + 9 :]
    add(
        "jpeg-frame-claims-20000x20000",
        with_frame(jpeg, big_frame),
        0xC000,
        422,
        "frame header disagrees with Rows x Columns: refused before the decoder allocates 400 MB",
    )
    heavy = fresh(base)
    heavy.private_block(0x0013, "HOSTILE", create=True).add_new(0x00, "OB", b"\0" * (max_bytes + 1024))
    add("dx-over-byte-limit", part10(heavy), 0xA700, 413, "more bytes than max_image_bytes")
    add("png-bomb", bomb_png(), UNSENDABLE, 413, "900 Mpixel PNG")

    # --- upload-only formats -----------------------------------------------------------------------------
    add("png-chest", png.getvalue(), UNSENDABLE, 201, "a PNG chest X-ray")
    jpeg_file = chest_jpeg.read_bytes()
    add("jpeg-file-cut", jpeg_file[: len(jpeg_file) // 2], UNSENDABLE, 422, "Pillow refuses a cut JPEG")
    add("text", b"patient notes, not an image\n" * 20, UNSENDABLE, 415, "not an image")
    add("png-tiny", _tiny_png(), UNSENDABLE, 422, "32 x 32 pixels")
    return cases


def _tiny_png() -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("L", (32, 32), 128).save(buffer, format="PNG")
    return buffer.getvalue()
