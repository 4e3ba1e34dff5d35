"""What the receiver acknowledges, with dcmtk's storescu as the sender: nothing undecodable, nothing
that is not a chest radiograph, no silent re-labelling of a stored instance (issue 19, items 2-5).
The whole hostile corpus goes through both paths in tests/hostile."""

from __future__ import annotations

import io
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGBaseline8Bit, generate_uid
from sqlalchemy import select

from covidet.imaging.reader import read_image
from covidet.store.models import Image, Patient, RejectedMessage, Study
from tests.ingest.conftest import MODALITY_AE, Harness, encode_file, storescu
from tests.ingest.dicom_receivers import receiver_factory  # noqa: F401 (fixture)

SUCCESS_LINE = "Received Store Response (Success)"


def _save(ds: Dataset, path: Path, **attributes: object) -> Path:
    copy = deepcopy(ds)
    for keyword, value in attributes.items():
        if value is None:
            delattr(copy, keyword)
        else:
            setattr(copy, keyword, value)
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    copy.file_meta.MediaStorageSOPClassUID = copy.SOPClassUID
    copy.save_as(path, enforce_file_format=True)
    return path


def _rows(harness: Harness) -> tuple[list[Image], list[RejectedMessage]]:
    with harness.db.session() as session:
        images = list(session.scalars(select(Image).order_by(Image.id)))
        refused = list(session.scalars(select(RejectedMessage).order_by(RejectedMessage.id)))
    return images, refused


def test_cut_or_undecodable_frames_are_refused_with_cannot_understand(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    cxr_dicom_files: list[Path],
    tmp_path: Path,
) -> None:
    """Half a JPEG X-ray was acknowledged and labelled by the AI; now storescu gets 0xC000."""
    harness = receiver_factory()
    jpeg = dcmread(encode_file(cxr_dicom_files[0], tmp_path / "jpeg.dcm", JPEGBaseline8Bit))
    frame = next(generate_frames(jpeg.PixelData, number_of_frames=1))
    half = frame[: len(frame) // 2]
    cut = _save(jpeg, tmp_path / "cut.dcm", PixelData=encapsulate([half]), SOPInstanceUID=generate_uid())
    png = io.BytesIO()
    from PIL import Image as PILImage

    PILImage.fromarray(read_image(cxr_dicom_files[1]).to_uint8()).save(png, format="PNG")
    png_in_jpeg = _save(
        jpeg, tmp_path / "png.dcm", PixelData=encapsulate([png.getvalue()]), SOPInstanceUID=generate_uid()
    )

    result = storescu(harness.port, [cut, png_in_jpeg], "-xy", "-nh")
    assert result.stdout.count("Received Store Response (Error: CannotUnderstand)") == 2, result.stdout
    assert SUCCESS_LINE not in result.stdout
    images, refused = _rows(harness)
    assert images == []
    assert [r.source for r in refused] == [MODALITY_AE, MODALITY_AE]
    assert "truncated compressed frame" in refused[0].reason
    assert "end marker FFD9" in refused[1].reason  # PNG bytes do not end like a JPEG

    good = storescu(harness.port, [tmp_path / "jpeg.dcm"], "-xy")
    assert SUCCESS_LINE in good.stdout, good.stdout
    [stored] = _rows(harness)[0]
    assert read_image(harness.store.path(stored.path)).pixels.shape == (jpeg.Rows, jpeg.Columns)


def test_non_chest_objects_relabelled_as_dx_are_refused(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    cxr_dicom_files: list[Path],
    tmp_path: Path,
) -> None:
    """A CT and an MR sent under the DX SOP class, and a DX of a knee, were assessed as chest X-rays."""
    harness = receiver_factory()
    dx = "1.2.840.10008.5.1.4.1.1.1.1"
    files = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        source = get_testdata_file(name, download=False)
        assert source is not None
        files.append(_save(dcmread(source), tmp_path / name, SOPClassUID=dx, SOPInstanceUID=generate_uid()))
    knee = dcmread(cxr_dicom_files[2])
    files.append(_save(knee, tmp_path / "knee.dcm", BodyPartExamined="KNEE", SOPInstanceUID=generate_uid()))

    result = storescu(harness.port, files, "-nh")
    assert result.stdout.count("Received Store Response (Error: DataSetDoesNotMatchSOPClass)") == 3, (
        result.stdout
    )
    images, refused = _rows(harness)
    assert images == []
    reasons = [r.reason for r in refused]
    assert "Modality CT is not a radiograph" in reasons[0]
    assert "Modality MR is not a radiograph" in reasons[1]
    assert "BodyPartExamined KNEE is not the chest" in reasons[2]


def test_twelve_bit_jpeg_extended_is_accepted_and_decodes(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The docs list JPEG Extended as accepted: a 12-bit stream (pydicom's JPGExtended.dcm as a
    Secondary Capture) is stored and decodes; pydicom's non-conformant JPEG-lossy.dcm is refused."""
    harness = receiver_factory()
    good_source = get_testdata_file("JPGExtended.dcm", download=False)
    bad_source = get_testdata_file("JPEG-lossy.dcm", download=False)
    assert good_source is not None and bad_source is not None
    chest = {"Modality": "OT", "BodyPartExamined": None}
    good = _save(dcmread(good_source), tmp_path / "good.dcm", SOPInstanceUID=generate_uid(), **chest)
    bad = _save(dcmread(bad_source), tmp_path / "bad.dcm", SOPInstanceUID=generate_uid(), **chest)
    result = storescu(harness.port, [good, bad], "-xx", "-nh")
    assert result.stdout.count(SUCCESS_LINE) == 1, result.stdout
    assert "Received Store Response (Error: CannotUnderstand)" in result.stdout
    [stored], [refused] = _rows(harness)
    assert stored.transfer_syntax_uid == "1.2.840.10008.1.2.4.51"
    assert read_image(harness.store.path(stored.path)).bits_stored == 12
    assert "cannot decode DICOM pixel data" in refused.reason


def test_a_resend_with_a_corrected_patient_id_is_refused_not_ignored(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    cxr_dicom_files: list[Path],
    tmp_path: Path,
) -> None:
    """The same SOP Instance UID with another PatientID used to get Success and be dropped silently."""
    harness = receiver_factory()
    source = cxr_dicom_files[3]
    original = dcmread(source)
    corrected = _save(original, tmp_path / "corrected.dcm", PatientID="CORRECTED-42")
    moved = _save(original, tmp_path / "moved.dcm", StudyInstanceUID=generate_uid())

    first = storescu(harness.port, [source, source])  # the same object twice: idempotent
    assert first.stdout.count(SUCCESS_LINE) == 2, first.stdout
    again = storescu(harness.port, [corrected, moved], "-nh", "-d")
    assert SUCCESS_LINE not in again.stdout
    assert again.stdout.count("DIMSE Status                  : 0xc001: Error: Cannot understand") == 2, (
        again.stdout[-3000:]
    )

    [image], refused = _rows(harness)
    with harness.db.session() as session:
        study = session.get(Study, image.study_id)
        assert study is not None
        patient = session.get(Patient, study.patient_id)
        assert patient is not None
        assert patient.patient_key == original.PatientID  # the stored record is unchanged
    assert [r.source for r in refused] == [MODALITY_AE, MODALITY_AE]
    assert "conflict: already stored with another PatientID" in refused[0].reason
    assert "conflict: already stored with another StudyInstanceUID" in refused[1].reason
    assert all(r.payload for r in refused)  # the refused object is kept for the operator
