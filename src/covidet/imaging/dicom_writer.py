"""Make proper DICOM objects from plain images: what a modality would send for a PNG/JPEG X-ray.

Used by the device simulator, the tests and the benchmarks to send the dataset's real chest X-rays
over C-STORE. The result is a Digital X-Ray Image Storage - For Presentation object (modality DX),
8-bit MONOCHROME2, Explicit VR Little Endian, with the patient and study identifiers given.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from covidet.imaging.reader import read_image

__all__ = ["DX_FOR_PRESENTATION", "dicom_bytes", "new_dataset", "xray_to_dicom"]

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def xray_to_dicom(
    source: str | Path | bytes | np.ndarray,
    *,
    patient_id: str,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    accession_number: str = "",
    study_description: str = "Chest X-ray",
    acquired_at: datetime | None = None,
) -> Dataset:
    """A DX (for presentation) dataset holding ``source`` as 8-bit grayscale.

    ``source`` is an image file (any format :func:`read_image` reads), its bytes, or an (H, W) uint8
    array. Missing UIDs are generated; pass the same ``study_instance_uid`` for images of one study.
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 2 or source.dtype != np.uint8:
            raise ValueError(f"array must be (H, W) uint8, got {source.shape} {source.dtype}")
        pixels = source
    else:
        pixels = read_image(source).to_uint8()
    acquired_at = acquired_at or datetime.now(UTC)
    sop_instance_uid = sop_instance_uid or generate_uid()

    ds = new_dataset(DX_FOR_PRESENTATION, sop_instance_uid)
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name or patient_id
    ds.AccessionNumber = accession_number
    ds.StudyDescription = study_description
    ds.StudyDate = ds.ContentDate = acquired_at.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = acquired_at.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Manufacturer = "covidet simulator"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def new_dataset(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """An Explicit VR Little Endian dataset of this SOP class and instance, with its file meta
    (pydicom's implementation UID), ready to be filled and written as a Part 10 file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    """``ds`` encoded as a DICOM Part 10 file (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
