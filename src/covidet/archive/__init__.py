"""covidet as a DICOM archive: the instances it holds (X-rays, uploads served as DX, and the SRs it
makes) as DICOM datasets and Part 10 bytes, for DICOMweb and Query/Retrieve; and the storing of the AI
and review SRs in the study of their X-ray. The queries are in :mod:`covidet.store.archive_queries`.
"""

from covidet.archive.instances import InstanceNotFound, instance_dataset, instance_part10, upload_as_dicom
from covidet.archive.results import archive_ai_sr, archive_review_sr, backfill_series_uids, publish_review_sr

__all__ = [
    "InstanceNotFound",
    "archive_ai_sr",
    "archive_review_sr",
    "backfill_series_uids",
    "instance_dataset",
    "instance_part10",
    "publish_review_sr",
    "upload_as_dicom",
]
