"""Property-based fuzzing of the image acceptance check, :func:`covidet.imaging.validate.validate_image`.

Whatever a modality or uploader sends, the check either accepts it, and then the analysis's reader
decodes it (*whatever covidet acknowledges, it can analyse*), or refuses it with
:class:`~covidet.imaging.reader.ImageReadError` and a one-line reason; never another exception. Inputs:
arbitrary bytes, and real PNG, JPEG and DICOM (uncompressed and JPEG Baseline) chest-sized images cut,
overwritten or extended at random places.

Like tests/ingest/test_mqtt_fuzz.py: ``FUZZ_MAX_EXAMPLES`` inputs per property (default 150 here), and
``make fuzz`` runs many more, keeping failures in ``out/hypothesis/``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from covidet.imaging.reader import ImageReadError, read_image
from covidet.imaging.validate import validate_image
from tests.hostile.corpus import part10

# pydicom warns about every malformed value it meets while parsing junk; the refusal is what counts here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

_FUZZING = "FUZZ_MAX_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_MAX_EXAMPLES", "150")),
    deadline=None,  # no timing assertions
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=DirectoryBasedExampleDatabase(Path(__file__).parents[2] / "out" / "hypothesis")
    if _FUZZING
    else None,
)
SIDE = 160  # above the 128-px minimum of a chest radiograph, small enough to fuzz quickly


def _gradient() -> np.ndarray:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    return ((x * 3 + y * 5) % 256).astype(np.uint8)


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(_gradient()).save(out, format="PNG")
    return out.getvalue()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(_gradient()).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _dx(transfer_syntax: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.BodyPartExamined = "FUZZ-1", "Fuzz^Test", "DX", "CHEST"
    ds.Rows = ds.Columns = SIDE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([_jpeg()]) if transfer_syntax == JPEGBaseline8Bit else _gradient().tobytes()
    return part10(ds)


SEEDS = {
    "png": _png(),
    "jpeg": _jpeg(),
    "dicom": _dx(ExplicitVRLittleEndian),
    "dicom-jpeg": _dx(JPEGBaseline8Bit),
}


def _accepted_means_decodable(data: bytes) -> None:
    try:
        validate_image(data, name="fuzz")
    except ImageReadError:
        return
    pixels = read_image(data).pixels  # accepted: the analysis's reader must decode it
    assert pixels.ndim == 2 and pixels.size > 0 and np.isfinite(pixels).all()


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_the_unchanged_seed_is_accepted(kind: str) -> None:
    validate_image(SEEDS[kind], name=kind)  # the mutations below start from valid files


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_accepted_decodably_or_refused_cleanly(data: bytes) -> None:
    _accepted_means_decodable(data)


@FUZZ
@given(
    kind=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["cut", "overwrite", "insert"]),
            st.floats(0, 1),
            st.binary(min_size=1, max_size=16),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_real_images_are_accepted_decodably_or_refused_cleanly(
    kind: str, edits: list[tuple[str, float, bytes]]
) -> None:
    data = bytearray(SEEDS[kind])
    for action, where, junk in edits:
        at = int(where * (len(data) - 1)) if data else 0
        if action == "cut":
            del data[at:]
        elif action == "overwrite":
            data[at : at + len(junk)] = junk
        else:
            data[at:at] = junk
    _accepted_means_decodable(bytes(data))
