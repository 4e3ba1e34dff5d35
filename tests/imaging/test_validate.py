"""The acceptance check shared by the DICOM receiver and the HTTPS upload (covidet.imaging.validate),
on real files: a chest X-ray of the dataset as DX (uncompressed and JPEG via dcmcjpeg) and pydicom's
test files. Each refusal here is a case the old header-only check acknowledged."""

from __future__ import annotations

import csv
import io
import logging
import subprocess
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from covidet.imaging.dicom_writer import dicom_bytes, xray_to_dicom
from covidet.imaging.reader import ImageReadError, inspect_image, read_image
from covidet.imaging.validate import NotChestRadiograph, validate_image


@pytest.fixture(scope="module")
def chest(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Dataset]:
    """A real chest X-ray as DX: uncompressed, and JPEG baseline (dcmcjpeg +eb)."""
    with (data_root / "manifest.csv").open(newline="") as handle:
        first = next(csv.DictReader(handle))
    folder = tmp_path_factory.mktemp("validate")
    plain = xray_to_dicom(data_root / first["image"], patient_id="validate-1")
    (folder / "plain.dcm").write_bytes(dicom_bytes(plain))
    subprocess.run(
        ["dcmcjpeg", "+eb", str(folder / "plain.dcm"), str(folder / "jpeg.dcm")],
        check=True,
        capture_output=True,
    )
    return plain, dcmread(folder / "jpeg.dcm")


def _bytes(ds: Dataset, **attributes: object) -> bytes:
    copy = deepcopy(ds)
    copy.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        if value is None:
            delattr(copy, keyword)
        else:
            setattr(copy, keyword, value)
    buffer = io.BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _frame(ds: Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def test_good_images_pass_and_read(chest: tuple[Dataset, Dataset]) -> None:
    plain, jpeg = chest
    for data in (_bytes(plain), _bytes(jpeg)):
        header = validate_image(data).header
        assert (header.width, header.height) == (plain.Columns, plain.Rows)
        assert read_image(data).pixels.shape == (plain.Rows, plain.Columns)


@pytest.mark.parametrize("percent", [25, 50, 90, 99])
def test_a_cut_jpeg_frame_is_refused(chest: tuple[Dataset, Dataset], percent: int) -> None:
    """libjpeg decodes a cut frame without an error (the old check acknowledged it); refused now."""
    _, jpeg = chest
    frame = _frame(jpeg)
    cut = frame[: len(frame) * percent // 100]
    data = _bytes(jpeg, PixelData=encapsulate([cut + b"\0" * (len(cut) % 2)]))
    inspect_image(data)  # the old, header-only acceptance check passes it...
    cut_ds = dcmread(io.BytesIO(data))
    padded, _ = get_decoder(JPEGBaseline8Bit).as_array(cut_ds, index=0, decoding_plugin="pylibjpeg")
    assert padded.shape == (jpeg.Rows, jpeg.Columns)  # ...and the old reader's decoder pads it silently
    with pytest.raises(ImageReadError, match=r"truncated compressed frame.*without the end marker FFD9"):
        validate_image(data)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(data)  # the analysis's reader (Pillow for 8-bit baseline) refuses it too


def test_undecodable_frames_are_refused_without_error_tracebacks(
    chest: tuple[Dataset, Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    _, jpeg = chest
    frame = bytearray(_frame(jpeg))
    rng = np.random.default_rng(3)
    start = frame.find(b"\xff\xda") + 20
    frame[start:-2:7] = rng.integers(0, 256, len(frame[start:-2:7]), dtype=np.uint8).tobytes()
    scrambled = _bytes(jpeg, PixelData=encapsulate([bytes(frame)]))
    lossy_path = get_testdata_file("JPEG-lossy.dcm", download=False)
    assert lossy_path is not None
    lossy = _bytes(dcmread(lossy_path), Modality="OT", BodyPartExamined=None)
    with caplog.at_level(logging.INFO):
        for data in (scrambled, lossy):
            inspect_image(data)  # the old check acknowledged both
            with pytest.raises(ImageReadError, match="cannot decode DICOM pixel data"):
                validate_image(data)
            with pytest.raises(ImageReadError, match="cannot decode"):
                read_image(data)  # the analysis's reader: pydicom logged a traceback per plugin here
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_twelve_bit_jpeg_extended_is_supported() -> None:
    """pydicom's JPGExtended.dcm (12-bit, process 4) decodes with pylibjpeg-libjpeg: accepted."""
    path = get_testdata_file("JPGExtended.dcm", download=False)
    assert path is not None
    data = _bytes(dcmread(path), Modality="OT", BodyPartExamined=None)
    assert validate_image(data).header.transfer_syntax_uid == "1.2.840.10008.1.2.4.51"
    assert read_image(data).bits_stored == 12


def test_a_frame_larger_than_its_header_says_is_refused_before_decoding(
    chest: tuple[Dataset, Dataset],
) -> None:
    _, jpeg = chest
    frame = _frame(jpeg)
    sof = frame.find(b"\xff\xc0")
    bomb = frame[: sof + 5] + (20_000).to_bytes(2, "big") * 2 + frame[sof + 9 :]
    with pytest.raises(ImageReadError, match="compressed frame is 20000x20000 pixels"):
        validate_image(_bytes(jpeg, PixelData=encapsulate([bomb])))


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"Modality": "CT"}, "Modality CT is not a radiograph"),
        ({"Modality": "MR"}, "Modality MR"),
        ({"Modality": "US"}, "Modality US"),
        ({"Modality": "RTIMAGE"}, "Modality RTIMAGE"),
        ({"Modality": None}, r"Modality \(missing\)"),
        ({"BodyPartExamined": "KNEE"}, "BodyPartExamined KNEE is not the chest"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "PhotometricInterpretation PALETTE COLOR"),
    ],
)
def test_not_a_chest_radiograph_is_refused(
    chest: tuple[Dataset, Dataset], attributes: dict[str, object], reason: str
) -> None:
    plain, _ = chest
    data = _bytes(plain, **attributes)
    inspect_image(data)  # the old check acknowledged it, and the AI labelled it
    with pytest.raises(NotChestRadiograph, match=reason):
        validate_image(data)


@pytest.mark.parametrize("body_part", ["CHEST", "THORAX", "PORT CHEST", "LUNG", "", None])
def test_chest_body_parts_pass(chest: tuple[Dataset, Dataset], body_part: str | None) -> None:
    plain, _ = chest
    validate_image(_bytes(plain, BodyPartExamined=body_part))


def test_tiny_images_are_refused(chest: tuple[Dataset, Dataset]) -> None:
    plain, _ = chest
    tiny = _bytes(plain, Rows=64, Columns=64, PixelData=plain.PixelData[: 64 * 64])
    with pytest.raises(NotChestRadiograph, match="64x64 pixels is too small"):
        validate_image(tiny)
    png = io.BytesIO()
    from PIL import Image

    Image.new("L", (100, 100)).save(png, format="PNG")
    with pytest.raises(NotChestRadiograph, match="100x100"):
        validate_image(png.getvalue())
