"""``GET /api/v1/exports/training-manifest``: signed reviews as a training set for ``covidet train``.

The answer is a zip archive in the dataset format that :func:`covidet.detection.data.load_manifest`
reads; unzip it and run ``covidet train --data <folder>``::

    manifest.csv   image,label,patient_id,source,review_id,signed_at,width,height
    boxes.csv      image,label,x1,y1,x2,y2,box_source
    images/<image id>.png
    README.txt     provenance and the disclaimer

One row per image with a signed review (its newest signed review): ``label`` is the reviewer's
image-level conclusion; the boxes are those the reviewer confirmed, relabelled or added
(``box_source`` ``review-confirm`` / ``review-relabel`` / ``review-add``), in pixels of the PNG, which
has the original image's size. AI findings the reviewer did not act on, rejected or deleted are not
exported. There is no ``split`` column: ``covidet train`` splits by patient itself.

De-identification: images are re-encoded as PNG (16-bit when the source has more than 8 bits), so no
DICOM header travels, and ``patient_id`` is a keyed pseudonym, ``p`` + 16 hex digits of
HMAC-SHA256(secret_key, patient key): stable across exports of one server (so patient-level splits
hold), not reversible without the server's secret. Names, UIDs and dates of the studies are not
exported. Burned-in text in the pixels, if any, is not removed.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import os
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypedDict

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from PIL import Image as PILImage
from starlette.background import BackgroundTask

from covidet import DISCLAIMER, __version__
from covidet.api.auth import RadiologistUser, record_audit
from covidet.api.deps import DatabaseDep, StoreDep
from covidet.api.schemas import AUTH_ERRORS, IsoDateTime, OpenApiResponses, as_utc
from covidet.imaging.reader import ImageReadError, read_image
from covidet.ingest.storage import ImageStore
from covidet.store import review_queries as rq
from covidet.store.db import Database

__all__ = [
    "BOXES_COLUMNS",
    "MANIFEST_COLUMNS",
    "ExportCounts",
    "patient_pseudonym",
    "router",
    "write_training_export",
]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/exports", tags=["exports"])

MANIFEST_COLUMNS = ("image", "label", "patient_id", "source", "review_id", "signed_at", "width", "height")
BOXES_COLUMNS = ("image", "label", "x1", "y1", "x2", "y2", "box_source")


class ExportCounts(TypedDict):
    """What a training export holds: images and boxes written, ids of the images skipped."""

    images: int
    boxes: int
    skipped: list[int]


def patient_pseudonym(secret: str, patient_key: str) -> str:
    """``p`` + 16 hex digits of HMAC-SHA256(secret, patient key): stable, not reversible without it."""
    digest = hmac.new(secret.encode(), f"covidet-export:{patient_key}".encode(), hashlib.sha256).hexdigest()
    return "p" + digest[:16]


def _png(path: Path) -> tuple[bytes, int, int]:
    xray = read_image(path, name=path.name)
    if xray.bits_stored > 8:
        array = np.round(np.clip(xray.pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)  # Pillow: mode I;16
    else:
        array = xray.to_uint8()
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue(), xray.width, xray.height


def write_training_export(
    rows: list[rq.ExportRow], store: ImageStore, secret: str, out: Path
) -> ExportCounts:
    """Write the zip of ``rows`` (see the module docstring) to ``out``; returns counts
    ``{"images", "boxes", "skipped"}`` (images whose stored file could not be read are skipped)."""
    manifest = io.StringIO()
    boxes = io.StringIO()
    manifest_writer = csv.writer(manifest, lineterminator="\n")
    boxes_writer = csv.writer(boxes, lineterminator="\n")
    manifest_writer.writerow(MANIFEST_COLUMNS)
    boxes_writer.writerow(BOXES_COLUMNS)
    written = box_count = 0
    skipped: list[int] = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for row in rows:
            name = f"images/{row.image_id}.png"
            try:
                data, width, height = _png(store.path(row.image_path))
            except (ImageReadError, OSError, ValueError) as exc:
                logger.warning("training export: image %d skipped: %s", row.image_id, exc)
                skipped.append(row.image_id)
                continue
            # PNG is already compressed: stored as is.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_STORED)
            manifest_writer.writerow(
                (
                    name,
                    row.label,
                    patient_pseudonym(secret, row.patient_key),
                    "covidet-review",
                    row.review_id,
                    row.signed_at.isoformat(),
                    width,
                    height,
                )
            )
            for box in row.boxes:
                boxes_writer.writerow(
                    (
                        name,
                        box.label,
                        f"{box.x1:.2f}",
                        f"{box.y1:.2f}",
                        f"{box.x2:.2f}",
                        f"{box.y2:.2f}",
                        f"review-{box.action}",
                    )
                )
                box_count += 1
            written += 1
        archive.writestr("manifest.csv", manifest.getvalue())
        archive.writestr("boxes.csv", boxes.getvalue())
        archive.writestr(
            "README.txt",
            f"covidet {__version__} training export: {written} image(s) with signed reviews, "
            f"{box_count} box(es).\n"
            "Read by `covidet train --data <this folder>` (manifest.csv + boxes.csv + images/).\n"
            "Labels and boxes are radiologists' signed reviews; boxes in pixels of the PNGs.\n"
            "patient_id is a keyed pseudonym; images carry no DICOM header.\n"
            f"Research data: {DISCLAIMER}.\n",
        )
    return {"images": written, "boxes": box_count, "skipped": skipped}


def _export(
    db: Database, store: ImageStore, secret: str, since: datetime | None, until: datetime | None
) -> tuple[Path, ExportCounts]:
    with db.session() as session:
        rows = rq.training_export_rows(session, since=since, until=until)
    fd, name = tempfile.mkstemp(prefix="covidet-export-", suffix=".zip")
    os.close(fd)
    path = Path(name)
    try:
        counts = write_training_export(rows, store, secret, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, counts


_ZIP_RESPONSE: OpenApiResponses = {
    200: {
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        "description": "zip: manifest.csv, boxes.csv, images/*.png, README.txt",
    }
}


@router.get(
    "/training-manifest",
    response_class=FileResponse,
    responses=_ZIP_RESPONSE | AUTH_ERRORS,
)
async def training_manifest(
    request: Request,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
    since: Annotated[IsoDateTime | None, Query(description="signed at or after (ISO 8601)")] = None,
    until: Annotated[IsoDateTime | None, Query(description="signed at or before (ISO 8601)")] = None,
) -> FileResponse:
    """Signed reviews as a zip that ``covidet train --data`` reads (see docs/api.md)."""
    start, end = as_utc(since, "since"), as_utc(until, "until")
    secret = request.app.state.secret_key
    path, counts = await run_in_threadpool(_export, db, store, secret, start, end)
    details: dict[str, object] = {
        **counts,
        "since": start.isoformat() if start else None,
        "until": end.isoformat() if end else None,
    }
    try:
        await run_in_threadpool(
            record_audit, db, request, "export.training_manifest", user=user, details=details
        )
    except BaseException:
        path.unlink(missing_ok=True)  # not served: the export could not be audited
        raise
    return FileResponse(
        path,
        media_type="application/zip",
        filename="covidet-training-export.zip",
        headers={"Cache-Control": "private, no-store"},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
