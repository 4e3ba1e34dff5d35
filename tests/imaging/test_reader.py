"""Tests of covidet.imaging.read_image on real DICOM/PNG/JPEG files (no mocks)."""

from __future__ import annotations

import csv
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    MPEG2MPML,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from covidet.imaging import DEFAULT_MAX_PIXELS, ImageReadError, XRayImage, read_image

# ------------------------------------------------------------------------------------------ helpers


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed with pydicom / pydicom-data"
    return Path(path)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, scaled to [0, 1]."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def make_dicom(
    values: np.ndarray,
    *,
    bits_allocated: int = 16,
    bits_stored: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    **elements: object,
) -> bytes:
    """A single-frame CR/DX file (with preamble) holding `values` uncompressed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = DigitalXRayImageStorageForPresentation if bits_stored > 8 else ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "P-0001"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    dtype = f"{'i' if signed else 'u'}{bits_allocated // 8}"
    ds.PixelData = values.astype(dtype).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def gradient(low: int, high: int, rows: int = 4) -> np.ndarray:
    """`rows` identical rows of the integers low..high inclusive."""
    return np.tile(np.arange(low, high + 1, dtype=np.int64), (rows, 1))


def png_bytes(image: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **params)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit grayscale PNG of width x height, compressed to a few hundred KB."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000))
    idat += compressor.compress(row * (height % 1000)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def read_error(source: object, **kwargs: object) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(source, **kwargs)  # type: ignore[arg-type]
    return info.value


# ------------------------------------------------------------------------- real MONOCHROME1 chest PA


def test_rg1_chest_pa_is_inverted_and_windowed(rg1_dicom: Path) -> None:
    ds = pydicom.dcmread(rg1_dicom)
    img = read_image(rg1_dicom)

    assert img.source_format == "dicom"
    assert img.photometric == "MONOCHROME1"
    assert img.bits_stored == ds.BitsStored == 15
    assert img.pixels.shape == (ds.Rows, ds.Columns) == (img.height, img.width) == (1955, 1841)
    assert img.pixels.dtype == np.float32
    assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
    assert img.modality == "CR" and img.view_position == "PA" and img.patient_id == "9RG1"
    assert img.sop_instance_uid == ds.SOPInstanceUID
    assert img.pixel_spacing_mm is None  # the file's PixelSpacing is "0.000\0.000"

    raw = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    assert np.corrcoef(raw.ravel(), img.pixels.ravel())[0, 1] < -0.99
    # Window 15000/30000 over unsigned 15-bit data is linear there, then inverted:
    expected = 1.0 - linear_window(raw, 15000.0, 30000.0)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)

    # Displayed as a radiograph: air-filled lungs dark, mediastinum/spine bright.
    h, w = img.pixels.shape
    right_lung = img.pixels[h // 4 : h // 2, w // 5 : 2 * w // 5].mean()
    left_lung = img.pixels[h // 4 : h // 2, 3 * w // 5 : 4 * w // 5].mean()
    mediastinum = img.pixels[h // 4 : h // 2, 9 * w // 20 : 11 * w // 20].mean()
    assert right_lung < mediastinum - 0.2 and left_lung < mediastinum - 0.2

    assert read_image(rg1_dicom.read_bytes()).pixels.tobytes() == img.pixels.tobytes()


def test_to_uint8_rounds(rg1_dicom: Path) -> None:
    img = read_image(rg1_dicom)
    u8 = img.to_uint8()
    assert u8.dtype == np.uint8 and u8.shape == img.pixels.shape
    np.testing.assert_array_equal(u8, np.round(img.pixels * 255).astype(np.uint8))


# ------------------------------------------------------------------------------- synthetic DICOM


def test_8bit_monochrome2_without_voi_uses_data_min_max() -> None:
    values = gradient(10, 250)
    img = read_image(make_dicom(values, bits_allocated=8, bits_stored=8))
    assert img.bits_stored == 8 and img.photometric == "MONOCHROME2"
    assert img.pixels[0, 0] == 0.0 and img.pixels[0, -1] == 1.0
    np.testing.assert_allclose(img.pixels[2], (values[2] - 10) / 240, atol=1e-6)


def test_12bit_window_center_width_is_linear() -> None:
    values = gradient(0, 4095)
    data = make_dicom(values, bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    img = read_image(data)
    assert img.bits_stored == 12
    np.testing.assert_allclose(img.pixels[0], linear_window(values[0], 2048, 1024), atol=1e-6)
    assert img.pixels[0, 1000] == 0.0 and img.pixels[0, 1536] == 0.0  # at/below the window
    assert img.pixels[0, 2561] == 1.0 and img.pixels[0, 4095] == 1.0  # above it
    assert img.pixels[0, 2048] == pytest.approx(0.5 + 0.5 / 1023, abs=1e-6)


def test_monochrome1_is_one_minus_monochrome2() -> None:
    values = gradient(0, 4095)
    kwargs = {"bits_stored": 12, "WindowCenter": 2048, "WindowWidth": 2048}
    mono2 = read_image(make_dicom(values, photometric="MONOCHROME2", **kwargs))
    mono1 = read_image(make_dicom(values, photometric="MONOCHROME1", **kwargs))
    assert mono1.photometric == "MONOCHROME1"
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)
    assert mono1.pixels[0, 0] == 1.0 and mono1.pixels[0, -1] == 0.0  # low values are white


def test_signed_12bit_with_rescale_and_window() -> None:
    values = gradient(-2048, 2047)
    data = make_dicom(
        values,
        bits_stored=12,
        signed=True,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=-1000,
        WindowWidth=4000,
    )
    img = read_image(data)
    modality = 2.0 * values[0] - 1000.0
    np.testing.assert_allclose(img.pixels[0], linear_window(modality, -1000, 4000), atol=1e-6)
    assert img.pixels[0, 2048] == pytest.approx(0.5, abs=1e-3)  # raw 0 -> modality -1000 = centre


def test_signed_16bit_without_voi_spans_zero_to_one() -> None:
    values = gradient(-30000, 30000, rows=2)[:, ::100]
    img = read_image(make_dicom(values, signed=True))
    expected = (values[0] + 30000) / 60000
    np.testing.assert_allclose(img.pixels[1], expected, atol=1e-6)


def test_voi_lut_sequence_is_applied_in_preference_to_window() -> None:
    values = gradient(0, 1023)
    lut = np.round(np.sqrt(np.arange(1024) / 1023) * 4095).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [1024, 0, 16])  # LUTDescriptor: 16 bits per entry declared, 12 used
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUTData
    data = make_dicom(values, bits_stored=10, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10)
    img = read_image(data)
    np.testing.assert_allclose(img.pixels[0], lut / 4095, atol=1e-6)
    assert img.pixels[0, 255] == pytest.approx(np.sqrt(255 / 1023), abs=1e-3)  # not windowing


def test_dicom_metadata_and_imager_pixel_spacing_fallback() -> None:
    data = make_dicom(gradient(0, 9), ImagerPixelSpacing=[0.139, 0.143])
    img = read_image(data, name="synthetic.dcm")
    assert img.patient_id == "P-0001" and img.modality == "DX" and img.view_position == "PA"
    assert img.study_instance_uid and img.series_instance_uid and img.sop_instance_uid
    assert img.pixel_spacing_mm == (0.139, 0.143)
    with_spacing = read_image(make_dicom(gradient(0, 9), PixelSpacing=[0.2, 0.25]))
    assert with_spacing.pixel_spacing_mm == (0.2, 0.25)


def test_dicom_without_preamble_is_detected_from_content(tmp_path: Path) -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(gradient(0, 99), bits_stored=12)))
    ds.file_meta, ds.preamble = FileMetaDataset(), None  # a bare implicit-VR data set
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    raw = buf.getvalue()
    assert raw[128:132] != b"DICM"
    path = tmp_path / "scan.png"  # misleading extension: content decides
    path.write_bytes(raw)
    img = read_image(path)
    assert img.source_format == "dicom" and img.width == 100
    np.testing.assert_allclose(img.pixels[0], np.arange(100) / 99, atol=1e-6)


# --------------------------------------------------------------------------- compressed DICOM


@pytest.mark.parametrize(
    ("compressed", "uncompressed"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE Lossless
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
        ("JPEG2000.dcm", "JPEG2000_UNC.dcm"),  # JPEG 2000
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # JPEG 2000 lossless, the MONOCHROME1 chest
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),  # RLE, RGB
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),  # JPEG lossless (process 14), RGB
    ],
)
def test_lossless_compressed_matches_uncompressed_twin(compressed: str, uncompressed: str) -> None:
    a = read_image(pydicom_file(compressed))
    b = read_image(pydicom_file(uncompressed))
    assert pydicom.dcmread(pydicom_file(compressed)).file_meta.TransferSyntaxUID.is_compressed
    assert (a.width, a.height, a.photometric, a.bits_stored) == (
        b.width,
        b.height,
        b.photometric,
        b.bits_stored,
    )
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_jpeg_baseline_ybr_matches_rgb_twin_closely() -> None:
    lossy = read_image(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))  # JPEG baseline, YBR_FULL
    reference = read_image(pydicom_file("SC_rgb.dcm"))
    assert lossy.photometric == reference.photometric == "RGB"
    assert lossy.pixels.shape == (100, 100)
    assert np.abs(lossy.pixels - reference.pixels).mean() < 0.02


@pytest.mark.parametrize(
    ("filename", "bits"),
    [
        ("JPEG-LL.dcm", 16),  # JPEG lossless, signed 16-bit
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", 8),  # JPEG lossless, 8-bit
        ("JPGExtended.dcm", 12),  # JPEG extended (process 2 & 4), 12-bit
    ],
)
def test_jpeg_lossless_and_extended_decode(filename: str, bits: int) -> None:
    ds = pydicom.dcmread(pydicom_file(filename))
    img = read_image(pydicom_file(filename))
    assert img.bits_stored == bits
    assert img.pixels.shape == (ds.Rows, ds.Columns)
    raw = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "WindowCenter" in ds:
        expected = linear_window(raw, float(ds.WindowCenter), float(ds.WindowWidth))
    else:  # no VOI: min..max of the data
        expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0


# ------------------------------------------------------------------------------------ PNG / JPEG


def test_png_8bit_from_bytes_and_path(tmp_path: Path) -> None:
    values = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    data = png_bytes(Image.fromarray(values, mode="L"))
    path = tmp_path / "gray.dcm"  # wrong extension on purpose
    path.write_bytes(data)
    for img in (read_image(data), read_image(path)):
        assert (img.source_format, img.photometric, img.bits_stored) == ("png", "MONOCHROME2", 8)
        assert (img.width, img.height) == (256, 3)
        np.testing.assert_array_equal(img.pixels[1], np.arange(256, dtype=np.float32) / 255)
        np.testing.assert_array_equal(img.to_uint8(), values)


def test_png_16bit_scales_by_65535() -> None:
    values = np.tile(np.arange(0, 65536, 257, dtype=np.uint16), (2, 1))
    img = read_image(png_bytes(Image.fromarray(values)))
    assert img.bits_stored == 16 and img.photometric == "MONOCHROME2"
    np.testing.assert_allclose(img.pixels[0], values[0] / 65535, atol=1e-7)
    assert img.pixels[0, -1] == 1.0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_png_is_converted_to_luminance(mode: str) -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), mode="RGB")
    image = rgb.convert(mode)
    img = read_image(png_bytes(image))
    assert img.photometric == "RGB" and img.bits_stored == 8 and img.pixels.shape == (8, 12)
    np.testing.assert_array_equal(img.to_uint8(), np.asarray(image.convert("L")))


def test_jpeg_gray_and_exif_orientation(tmp_path: Path) -> None:
    values = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (32, 1))  # 64 wide, 32 high
    plain = tmp_path / "x.jpg"
    Image.fromarray(values).save(plain, "JPEG", quality=95)
    img = read_image(plain)
    assert (img.source_format, img.photometric, img.bits_stored) == ("jpeg", "MONOCHROME2", 8)
    assert np.abs(img.pixels * 255 - values).max() <= 3

    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "JPEG", quality=95, exif=exif)
    rotated = read_image(buf.getvalue())
    assert (rotated.width, rotated.height) == (32, 64)
    np.testing.assert_allclose(rotated.pixels, np.rot90(img.pixels, k=-1), atol=1 / 255)


def test_real_dataset_jpegs_match_manifest(data_root: Path) -> None:
    with (data_root / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["tier_tiny"] == "1"][:6]
    assert rows
    for row in rows:
        path = data_root / row["image"]
        img = read_image(path)
        assert img.source_format == "jpeg"
        assert (img.width, img.height) == (int(row["width"]), int(row["height"]))
        with Image.open(path) as im:
            np.testing.assert_array_equal(img.to_uint8(), np.asarray(im.convert("L")))


def test_xray_image_rejects_inconsistent_shape() -> None:
    with pytest.raises(ValueError, match="does not match"):
        XRayImage(
            np.zeros((4, 5), np.float32),
            width=4,
            height=5,
            bits_stored=8,
            source_format="png",
            photometric="MONOCHROME2",
        )


# ------------------------------------------------------------------------------------------ errors


def test_missing_empty_and_directory(tmp_path: Path) -> None:
    err = read_error(tmp_path / "nope.dcm")
    assert str(err) == "nope.dcm: file not found" and err.reason == "file not found"
    assert isinstance(err, ValueError)
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert str(read_error(tmp_path / "empty.dcm")) == "empty.dcm: empty file"
    assert str(read_error(b"")) == "<bytes>: empty file"
    assert "is a directory" in str(read_error(tmp_path))


def test_image_read_error_pickles_and_accepts_a_single_message() -> None:
    err = pickle.loads(pickle.dumps(ImageReadError("a.png", "empty file")))
    assert (str(err), err.source, err.reason) == ("a.png: empty file", "a.png", "empty file")
    single = ImageReadError("upload rejected\nby gateway")
    assert (str(single), single.reason) == ("upload rejected by gateway", "upload rejected by gateway")


@pytest.mark.parametrize(
    "content", [b"PatientName,Label\nDoe^John,covid19\n" * 20, b"GIF89a" + bytes(200), bytes(1000)]
)
def test_non_image_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(content)
    assert str(read_error(path)) == "scan.dcm: not a DICOM file and not a PNG/JPEG image"


def test_truncated_dicom(rg1_dicom: Path) -> None:
    data = rg1_dicom.read_bytes()
    err = read_error(data[: len(data) // 2], name="half.dcm")
    assert str(err).startswith("half.dcm: truncated or corrupt DICOM pixel data (Explicit VR Little Endian")
    assert "\n" not in str(err)


def test_dicom_without_pixel_data(rg1_dicom: Path) -> None:
    ds = pydicom.dcmread(rg1_dicom, stop_before_pixels=True)
    buf = io.BytesIO()
    ds.save_as(buf)
    assert str(read_error(buf.getvalue(), name="x.dcm")) == "x.dcm: DICOM has no pixel data"


def test_multiframe_dicom_is_refused() -> None:
    err = read_error(pydicom_file("emri_small.dcm"))
    assert "multi-frame DICOM (10 frames) is not supported" in err.reason


def test_unsupported_and_corrupt_compressed_transfer_syntax() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(gradient(0, 255), bits_allocated=8, bits_stored=8)))
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is not a JPEG stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    for tsyntax, expected in [
        (MPEG2MPML, "DICOM transfer syntax MPEG2 Main Profile / Main Level [1.2.840.10008.1.2.4.100] is not"),
        (
            JPEGBaseline8Bit,
            "cannot decode DICOM pixel data (JPEG Baseline (Process 1) [1.2.840.10008.1.2.4.50])",
        ),
    ]:
        ds.file_meta.TransferSyntaxUID = tsyntax
        buf = io.BytesIO()
        ds.save_as(buf)
        assert expected in read_error(buf.getvalue()).reason


def test_decoder_panic_on_corrupt_rle_becomes_image_read_error() -> None:
    # pylibjpeg-rle (Rust) panics on this corruption; PanicException derives from BaseException.
    ds = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    second_segment = struct.unpack_from("<I", frame, 8)[0]
    frame[second_segment + 390] = 0
    ds.PixelData = encapsulate([bytes(frame)])
    buf = io.BytesIO()
    ds.save_as(buf)
    err = read_error(buf.getvalue())
    assert err.reason.startswith("cannot decode DICOM pixel data (RLE Lossless [1.2.840.10008.1.2.5]): ")


def test_truncated_png_and_jpeg() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (128, 128), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise))
    err = read_error(data[: len(data) // 2], name="cut.png")
    assert str(err) == "cut.png: truncated or corrupt PNG/JPEG: image file is truncated"
    assert "header cannot be parsed" in read_error(data[:40]).reason
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG")
    assert read_error(buf.getvalue()[:2000]).reason.startswith("truncated or corrupt PNG/JPEG: image file is")


def test_png_bomb_refused_from_header() -> None:
    # 9000 x 9000 = 81 Mpx: above our default limit, below Pillow's own warning threshold.
    err = read_error(png_bomb(9000, 9000), name="bomb.png")
    assert str(err) == (
        f"bomb.png: image too large: 9000x9000 = 81000000 pixels, more than the limit of {DEFAULT_MAX_PIXELS}"
    )
    # 30000 x 30000 = 900 Mpx: Pillow's decompression-bomb error inside Image.open, converted.
    data = png_bomb(30000, 30000)
    assert len(data) < 1_000_000
    err = read_error(data, name="huge.png")
    assert err.reason.startswith("image too large:") and "900000000 pixels" in err.reason


def test_max_pixels_override(rg1_dicom: Path) -> None:
    small = png_bytes(Image.new("L", (100, 100)))
    assert read_image(small, max_pixels=10_000).width == 100
    assert read_error(small, max_pixels=9_999).reason == (
        "image too large: 100x100 = 10000 pixels, more than the limit of 9999"
    )
    assert "1841x1955 = 3599155 pixels" in read_error(rg1_dicom, max_pixels=1_000_000).reason


def test_oversized_dicom_refused_before_decoding() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(gradient(0, 9))))
    ds.Rows, ds.Columns = 20_000, 20_000  # pixel data far too short: decoding would fail differently
    buf = io.BytesIO()
    ds.save_as(buf)
    assert "20000x20000 = 400000000 pixels" in read_error(buf.getvalue()).reason


def test_zero_size_images() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(gradient(0, 9))))
    ds.Rows = 0
    buf = io.BytesIO()
    ds.save_as(buf)
    assert read_error(buf.getvalue()).reason == "zero-size image (10x0)"


def test_reader_keeps_its_public_names_after_the_split() -> None:
    """Issue 20 split the reader; ``covidet.imaging.reader`` and ``covidet.imaging`` still give every
    public name, as the same objects as their new homes."""
    from covidet import imaging
    from covidet.imaging import errors, inspection, reader

    assert all(hasattr(reader, name) for name in reader.__all__)
    assert all(getattr(imaging, name) is getattr(reader, name) for name in imaging.__all__)
    assert reader.ImageReadError is errors.ImageReadError
    assert reader.DEFAULT_MAX_PIXELS == errors.DEFAULT_MAX_PIXELS
    assert reader.inspect_image is inspection.inspect_image
    assert reader.ImageHeader is inspection.ImageHeader
