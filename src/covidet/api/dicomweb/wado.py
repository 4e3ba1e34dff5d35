"""WADO-RS (PS3.18 10.4): studies, series and instances as Part 10 files, their metadata as DICOM
JSON, frames, rendered pictures and bulk data. Radiologists and admins; every answer audited once.

Media types (``Accept``; see docs/dicomweb.md): instances ``multipart/related; type="application/dicom"``
as stored (or ``transfer-syntax=1.2.840.10008.1.2.1`` re-encoded); metadata ``application/dicom+json``;
frames and bulk data ``multipart/related; type="application/octet-stream"`` (uncompressed by default,
``transfer-syntax=*`` as stored); rendered ``image/png`` (default) or ``image/jpeg``. Anything else: 406.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import Response, StreamingResponse
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from covidet.api.auth import AuthenticatedUser, RadiologistUser
from covidet.api.deps import DatabaseDep, StoreDep
from covidet.api.dicomweb import pixels
from covidet.api.dicomweb.common import (
    PATIENT_DATA_HEADERS,
    audit_read,
    bad_request,
    find_instances,
    instance_url,
    not_acceptable,
    not_found,
)
from covidet.api.dicomweb.dicomjson import PIXEL_DATA_PATH, element_at, metadata_json
from covidet.api.dicomweb.media import MultipartBody, parse_accept
from covidet.archive import InstanceNotFound, instance_dataset, instance_part10
from covidet.ingest.storage import ImageStore
from covidet.store.archive_queries import InstanceRecord
from covidet.store.db import Database

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["DICOMweb"])

_PATIENT_DATA = PATIENT_DATA_HEADERS
_DICOM_TYPE = "application/dicom"
_RENDERED = ("image/png", "image/jpeg")
_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


def _gone(record: InstanceRecord, exc: Exception) -> HTTPException:
    logger.error("instance %s cannot be read: %s", record.sop_instance_uid, exc)
    reason = f"instance {record.sop_instance_uid} cannot be read: {exc}"
    return HTTPException(status.HTTP_409_CONFLICT, detail=reason)


def _frame_error(exc: pixels.FrameError) -> HTTPException:
    return HTTPException(exc.status, detail=exc.reason)


# ------------------------------------------------------------------------------- instances (Part 10)


def _retrieve_syntax(accept: str | None) -> str:
    """The transfer syntax asked for Part 10 retrieval: ``*`` (as stored) or a UID. 406 otherwise."""
    for wanted in parse_accept(accept):
        if wanted.media_type == "multipart/related":
            if wanted.params.get("type", _DICOM_TYPE).lower() == _DICOM_TYPE:
                return wanted.params.get("transfer-syntax", "*")
        elif wanted.media_type in ("*/*", "multipart/*"):
            return "*"
    raise not_acceptable(
        'instances are served as multipart/related; type="application/dicom" '
        f"(transfer-syntax=* as stored, or {ExplicitVRLittleEndian})"
    )


def _part10(db: Database, store: ImageStore, record: InstanceRecord, syntax: str) -> bytes:
    data = instance_part10(db, store, record)
    stored = record.transfer_syntax_uid or ExplicitVRLittleEndian
    if syntax in ("*", stored):
        return data
    return pixels.as_explicit_little_endian(data)


def _retrieve(
    request: Request, user: AuthenticatedUser, db: Database, store: ImageStore, records: list[InstanceRecord]
) -> StreamingResponse:
    syntax = _retrieve_syntax(request.headers.get("accept"))
    if syntax not in ("*", ExplicitVRLittleEndian):
        unlike = [r for r in records if (r.transfer_syntax_uid or ExplicitVRLittleEndian) != syntax]
        if unlike:
            raise not_acceptable(
                f"instance {unlike[0].sop_instance_uid} is stored as "
                f"{unlike[0].transfer_syntax_uid or ExplicitVRLittleEndian}: ask transfer-syntax=* "
                f"or {ExplicitVRLittleEndian}"
            )
    for record in records:  # a missing file is found before the answer starts, not half-way through it
        if record.media_type == _DICOM_TYPE and not store.path(record.path).is_file():
            raise _gone(record, InstanceNotFound(f"stored file {record.path} is missing"))
    audit_read(
        db,
        request,
        user,
        "dicomweb.retrieve",
        study_uids=[r.study_instance_uid for r in records],
        details={"instances": len(records), "transfer_syntax": syntax},
    )
    body = MultipartBody(_DICOM_TYPE)

    def parts() -> Iterator[tuple[str, bytes]]:
        for record in records:
            part_syntax = syntax if syntax != "*" else record.transfer_syntax_uid or ExplicitVRLittleEndian
            yield f"{_DICOM_TYPE}; transfer-syntax={part_syntax}", _part10(db, store, record, syntax)

    return StreamingResponse(body.iterate(parts()), media_type=body.content_type, headers=_PATIENT_DATA)


@router.get(_STUDY, summary="WADO-RS: retrieve a study")
def retrieve_study(
    request: Request, study: str, user: RadiologistUser, db: DatabaseDep, store: StoreDep
) -> StreamingResponse:
    """Every instance of the study, multipart/related; type="application/dicom"."""
    return _retrieve(request, user, db, store, find_instances(db, study))


@router.get(_SERIES, summary="WADO-RS: retrieve a series")
def retrieve_series(
    request: Request, study: str, series: str, user: RadiologistUser, db: DatabaseDep, store: StoreDep
) -> StreamingResponse:
    return _retrieve(request, user, db, store, find_instances(db, study, series))


@router.get(_INSTANCE, summary="WADO-RS: retrieve an instance")
def retrieve_instance(
    request: Request,
    study: str,
    series: str,
    instance: str,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
) -> StreamingResponse:
    return _retrieve(request, user, db, store, find_instances(db, study, series, instance))


# ----------------------------------------------------------------------------------------- metadata


def _metadata(
    request: Request, user: AuthenticatedUser, db: Database, store: ImageStore, records: list[InstanceRecord]
) -> Response:
    if not any(
        r.media_type in ("application/dicom+json", "application/json", "*/*", "application/*")
        for r in parse_accept(request.headers.get("accept"))
    ):
        raise not_acceptable("metadata is served as application/dicom+json")
    documents = []
    for record in records:
        try:
            dataset = instance_dataset(db, store, record, pixels=False)
        except (InstanceNotFound, OSError) as exc:
            raise _gone(record, exc) from None
        vr = pixels.pixel_vr(dataset, record.transfer_syntax_uid) if record.kind == "image" else None
        documents.append(metadata_json(dataset, instance_url(request, record), pixel_vr=vr))
    audit_read(
        db,
        request,
        user,
        "dicomweb.metadata",
        study_uids=[r.study_instance_uid for r in records],
        details={"instances": len(records)},
    )
    return Response(json.dumps(documents), media_type="application/dicom+json", headers=_PATIENT_DATA)


@router.get(_STUDY + "/metadata", summary="WADO-RS: metadata of a study")
def study_metadata(
    request: Request, study: str, user: RadiologistUser, db: DatabaseDep, store: StoreDep
) -> Response:
    return _metadata(request, user, db, store, find_instances(db, study))


@router.get(_SERIES + "/metadata", summary="WADO-RS: metadata of a series")
def series_metadata(
    request: Request, study: str, series: str, user: RadiologistUser, db: DatabaseDep, store: StoreDep
) -> Response:
    return _metadata(request, user, db, store, find_instances(db, study, series))


@router.get(_INSTANCE + "/metadata", summary="WADO-RS: metadata of an instance")
def instance_metadata(
    request: Request,
    study: str,
    series: str,
    instance: str,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
) -> Response:
    return _metadata(request, user, db, store, find_instances(db, study, series, instance))


# -------------------------------------------------------------------------------- frames, bulk data


def _octet_syntax(accept: str | None) -> tuple[str | None, str | None]:
    """(transfer syntax, image media type) asked for frames / bulk data: syntax ``None``
    (uncompressed), ``*`` or a UID; the media type only when the client asked for one (``image/jls``)."""
    for wanted in parse_accept(accept):
        if wanted.media_type == "multipart/related":
            kind = wanted.params.get("type", pixels.NATIVE).lower()
            if kind == pixels.NATIVE:
                return wanted.params.get("transfer-syntax"), None
            if kind in pixels.COMPRESSED_MEDIA_TYPES.values():
                return wanted.params.get("transfer-syntax", "*"), kind
            if kind in ("image/*", "*/*"):
                return wanted.params.get("transfer-syntax", "*"), None
        elif wanted.media_type in ("*/*", "multipart/*", pixels.NATIVE):
            return wanted.params.get("transfer-syntax"), None
    raise not_acceptable(
        'frames and bulk data are served as multipart/related; type="application/octet-stream" '
        "(uncompressed), or with transfer-syntax=* as stored"
    )


def _with_pixels(db: Database, store: ImageStore, record: InstanceRecord) -> Dataset:
    try:
        return instance_dataset(db, store, record, pixels=True)
    except (InstanceNotFound, OSError) as exc:
        raise _gone(record, exc) from None


def _frame_numbers(text: str) -> list[int]:
    items = [item.strip() for item in text.split(",")]
    if not items or not all(item.isdigit() and int(item) >= 1 for item in items) or len(items) > 1000:
        raise bad_request(f"frame list {text!r}: give frame numbers from 1, separated by commas")
    return [int(item) for item in items]


def _multipart(parts: list[tuple[str, bytes]]) -> Response:
    body = MultipartBody(parts[0][0].split(";")[0] if parts else pixels.NATIVE)
    return Response(body.build(parts), media_type=body.content_type, headers=_PATIENT_DATA)


@router.get(_INSTANCE + "/frames/{frame_list}", summary="WADO-RS: frames of an instance")
def retrieve_frames(
    request: Request,
    study: str,
    series: str,
    instance: str,
    frame_list: str,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
) -> Response:
    """Frames ``1,2,...`` of the instance: uncompressed little-endian samples by default."""
    numbers = _frame_numbers(frame_list)
    syntax, media = _octet_syntax(request.headers.get("accept"))
    (record,) = find_instances(db, study, series, instance)
    try:
        parts = pixels.frames(_with_pixels(db, store, record), numbers, syntax, media)
    except pixels.FrameError as exc:
        raise _frame_error(exc) from None
    audit_read(db, request, user, "dicomweb.frames", study_uids=[study], details={"frames": numbers})
    return _multipart(parts)


@router.get(_INSTANCE + "/bulkdata/{path:path}", summary="WADO-RS: bulk data of an instance")
def retrieve_bulkdata(
    request: Request,
    study: str,
    series: str,
    instance: str,
    path: str,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
) -> Response:
    """A bulk data value named by its tag path in the metadata's BulkDataURI (``7FE00010`` is all
    frames, as for ``frames``)."""
    syntax, media = _octet_syntax(request.headers.get("accept"))
    (record,) = find_instances(db, study, series, instance)
    dataset = _with_pixels(db, store, record)
    if path.strip("/").upper() == PIXEL_DATA_PATH:
        try:
            parts = pixels.frames(dataset, list(range(1, pixels.frame_count(dataset) + 1)), syntax, media)
        except pixels.FrameError as exc:
            raise _frame_error(exc) from None
    else:
        element = element_at(dataset, path)
        if element is None or not isinstance(element.value, bytes):
            raise not_found(f"no bulk data at {path!r} in instance {instance}")
        parts = [(pixels.NATIVE, element.value)]
    audit_read(db, request, user, "dicomweb.bulkdata", study_uids=[study], details={"bulkdata": path})
    return _multipart(parts)


# ------------------------------------------------------------------------------------------ rendered


def _rendered_type(accept: str | None) -> str:
    for wanted in parse_accept(accept):
        chosen = next((m for m in _RENDERED if wanted.matches(m)), None)
        if chosen:
            return chosen
    raise not_acceptable("rendered frames are served as image/png or image/jpeg")


def _window(text: str | None) -> pixels.Window | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise bad_request(f"window={text!r}: give center,width[,linear]") from None
    if len(parts) > 3 or (len(parts) == 3 and parts[2].lower() != "linear") or not width >= 1:
        raise bad_request(f"window={text!r}: only the linear function, width >= 1")
    return pixels.Window(center, width)


def _viewport(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() and 1 <= int(p) <= 8192 for p in parts):
        raise bad_request(f"viewport={text!r}: give width,height in pixels (1-8192)")
    return int(parts[0]), int(parts[1])


WindowQuery = Annotated[str | None, Query(description="center,width[,linear] on modality values")]
ViewportQuery = Annotated[str | None, Query(description="width,height to fit the picture into")]
QualityQuery = Annotated[int, Query(ge=1, le=100, description="JPEG quality")]


@router.get(_INSTANCE + "/rendered", summary="WADO-RS: an instance rendered")
@router.get(_INSTANCE + "/frames/{frame}/rendered", summary="WADO-RS: a frame rendered")
def rendered(
    request: Request,
    study: str,
    series: str,
    instance: str,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
    frame: int = 1,
    window: WindowQuery = None,
    viewport: ViewportQuery = None,
    quality: QualityQuery = 90,
) -> Response:
    """The frame (the first for an instance) as PNG or JPEG, windowed and fitted to a viewport."""
    media_type = _rendered_type(request.headers.get("accept"))
    chosen_window, chosen_viewport = _window(window), _viewport(viewport)
    (record,) = find_instances(db, study, series, instance)
    if record.kind != "image":
        raise not_acceptable(f"instance {instance} is a structured report: it has no pixels to render")
    try:
        data = pixels.render(
            _with_pixels(db, store, record),
            frame,
            media_type=media_type,
            window=chosen_window,
            viewport=chosen_viewport,
            quality=quality,
        )
    except pixels.FrameError as exc:
        raise _frame_error(exc) from None
    audit_read(
        db, request, user, "dicomweb.rendered", study_uids=[study], details={"frame": frame, "window": window}
    )
    return Response(data, media_type=media_type, headers=_PATIENT_DATA)
