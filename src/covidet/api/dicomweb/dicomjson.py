"""DICOM JSON (PS3.18 F.2) of stored datasets, with bulk data as BulkDataURI.

:func:`metadata_json` encodes a dataset read without its pixels with pydicom's
``Dataset.to_json_dict``; binary values (OB, OW, OF, OD, OL, OV, UN) longer than
:data:`BULK_DATA_THRESHOLD` bytes become ``BulkDataURI`` references to the instance's ``bulkdata``
resource, addressed by their tag path (``7FE00010``; ``00540016/0/00181078`` inside a sequence item),
and Pixel Data is always a ``BulkDataURI`` (with the VR it has in the file), as Cornerstone's
``dicom-image-loader`` and OHIF expect. :func:`element_at` resolves such a path back to the element.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = ["BULK_DATA_THRESHOLD", "PIXEL_DATA_PATH", "element_at", "metadata_json", "to_json"]

logger = logging.getLogger(__name__)

#: Binary values longer than this (bytes) are sent as BulkDataURI in metadata.
BULK_DATA_THRESHOLD = 1024
PIXEL_DATA_PATH = "7FE00010"
_TAG_TEXT = re.compile(r"^[0-9A-Fa-f]{8}$")


def _paths(dataset: Dataset, prefix: str = "") -> dict[int, str]:
    """``id(element) -> tag path`` of every element of ``dataset``, sequence items included."""
    found: dict[int, str] = {}
    for element in dataset:  # iterating converts raw elements, so the ids stay valid afterwards
        path = f"{prefix}{element.tag:08X}"
        found[id(element)] = path
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                found.update(_paths(item, f"{path}/{index}/"))
    return found


def to_json(dataset: Dataset) -> dict[str, Any]:
    """``dataset`` as DICOM JSON without bulk data references (QIDO results, STOW responses)."""
    return dataset.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)


def metadata_json(dataset: Dataset, instance_url: str, *, pixel_vr: str | None) -> dict[str, Any]:
    """The metadata of one instance: ``dataset`` (read without pixels) as DICOM JSON, bulk values by
    reference under ``{instance_url}/bulkdata/<tag path>``; ``pixel_vr`` (``OB`` / ``OW``) adds the
    Pixel Data reference of an image, ``None`` for an object without pixels (an SR). The File Meta
    group (0002) is not part of the metadata (frames say their transfer syntax in their media type)."""
    paths = _paths(dataset)

    def bulk_uri(element: DataElement) -> str:
        return f"{instance_url}/bulkdata/{paths.get(id(element), f'{element.tag:08X}')}"

    encoded = dataset.to_json_dict(
        bulk_data_threshold=BULK_DATA_THRESHOLD,
        bulk_data_element_handler=bulk_uri,
        suppress_invalid_tags=True,
    )
    if pixel_vr is not None:
        uri = f"{instance_url}/bulkdata/{PIXEL_DATA_PATH}"
        encoded[PIXEL_DATA_PATH] = {"vr": pixel_vr, "BulkDataURI": uri}
    return dict(sorted(encoded.items()))


def element_at(dataset: Dataset, path: str) -> DataElement | None:
    """The element a bulk data path names (``TTTTTTTT`` or ``TTTTTTTT/index/TTTTTTTT/...``), or
    ``None`` when the path is malformed or leads nowhere."""
    parts = path.strip("/").split("/")
    if len(parts) % 2 == 0:
        return None
    current: Dataset = dataset
    for position in range(0, len(parts), 2):
        text = parts[position]
        if not _TAG_TEXT.match(text):
            return None
        tag = Tag(int(text, 16))
        if tag not in current:
            return None
        element = current[tag]
        if position == len(parts) - 1:
            return element
        index = parts[position + 1]
        if element.VR != "SQ" or not index.isdigit() or int(index) >= len(element.value):
            return None
        current = element.value[int(index)]
    return None
