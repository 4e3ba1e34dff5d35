"""The DICOM dataset of an instance covidet holds.

A DICOM file that came over C-STORE or an upload is returned as stored (byte for byte for
:func:`instance_part10`). A PNG/JPEG upload has no DICOM of its own: it is served as a Digital X-Ray
Image Storage - For Presentation object (8-bit MONOCHROME2, Explicit VR Little Endian) made on the fly
with the UIDs covidet gave it at ingest, so that the same upload is always the same instance and an SR
can refer to it.
"""

from __future__ import annotations

import io
import logging
from functools import partial
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from covidet.imaging.dicom_writer import xray_to_dicom
from covidet.store.archive_queries import InstanceRecord
from covidet.store.db import Database
from covidet.store.files import ImageStore
from covidet.store.study_queries import get_image

__all__ = ["InstanceNotFound", "instance_dataset", "instance_part10", "upload_as_dicom"]

logger = logging.getLogger(__name__)


class InstanceNotFound(LookupError):
    """The instance's record exists but its file does not (the message names the path)."""


def _file(store: ImageStore, relative: str) -> Path:
    path = store.path(relative)
    if not path.is_file():
        raise InstanceNotFound(f"stored file {relative} is missing from the image store")
    return path


def upload_as_dicom(db: Database, store: ImageStore, image_id: int) -> Dataset:
    """The PNG/JPEG upload ``image_id`` as a DX dataset with its recorded patient, study, series and
    SOP Instance UIDs. Deterministic: the same upload gives the same dataset (pixels and identifiers).
    """
    from covidet.store.archive_queries import image_series_uid

    with db.session() as session:
        image = get_image(session, image_id)
        if image is None:
            raise InstanceNotFound(f"no image with id {image_id}")
        study, patient = image.study, image.study.patient
        acquired = study.study_datetime or image.received_at
        # The values are taken now; the picture is converted after the session closed (a decode holds
        # no connection).
        convert = partial(
            xray_to_dicom,
            _file(store, image.path),
            patient_id=patient.patient_key,
            patient_name=patient.name,
            study_instance_uid=study.study_instance_uid,
            series_instance_uid=image_series_uid(image),
            sop_instance_uid=image.sop_instance_uid,
            accession_number=study.accession_number or "",
            study_description=study.description or "Chest X-ray (upload)",
            acquired_at=acquired,
        )
        media_type, filename = image.media_type, image.original_filename
    dataset = convert()
    # Type 2 attributes of the Patient and General Study modules, empty: an upload does not say them.
    dataset.PatientBirthDate = ""
    dataset.PatientSex = ""
    dataset.ReferringPhysicianName = ""
    dataset.Manufacturer = "covidet (converted upload)"
    dataset.ImageType = ["DERIVED", "SECONDARY"]
    dataset.DerivationDescription = f"converted by covidet from an uploaded {media_type} file"[:1024]
    if filename:
        dataset.ImageComments = f"uploaded as {filename}"[:10240]
    return dataset


def instance_dataset(
    db: Database, store: ImageStore, record: InstanceRecord, *, pixels: bool = True
) -> Dataset:
    """The dataset of ``record`` (without the pixel data when ``pixels`` is false, cheaper for
    metadata). Raises :class:`InstanceNotFound` when its file is gone."""
    if record.media_type != "application/dicom":
        dataset = upload_as_dicom(db, store, record.image_id)
        if not pixels:
            del dataset.PixelData
        return dataset
    return dcmread(_file(store, record.path), stop_before_pixels=not pixels)


def instance_part10(db: Database, store: ImageStore, record: InstanceRecord) -> bytes:
    """``record`` as a DICOM Part 10 file: the stored bytes for DICOM, the converted object for an
    upload."""
    if record.media_type == "application/dicom":
        return _file(store, record.path).read_bytes()
    buffer = io.BytesIO()
    upload_as_dicom(db, store, record.image_id).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
