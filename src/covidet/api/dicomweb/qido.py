"""QIDO-RS (PS3.18 10.6): search for studies, series and instances of covidet's archive.

Answers are DICOM JSON (``application/dicom+json``), ``200`` with an empty array when nothing matches
(PS3.18 allows 204 too; every client reads ``[]``, and it keeps one shape). Results are newest study
first; ``limit`` (default 200, at most 1000) and ``offset`` page them, and when more results exist than
were sent without a client ``limit``, a ``Warning: 299`` header says so. Radiologists and admins; one
audit event (``dicomweb.search``) per answer, listing the studies it holds.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom import dcmread
from pydicom.dataset import Dataset

from covidet.api.auth import AuthenticatedUser, RadiologistUser
from covidet.api.deps import DatabaseDep, StoreDep
from covidet.api.dicomweb.common import (
    PATIENT_DATA_HEADERS,
    audit_read,
    instance_url,
    not_acceptable,
    study_url,
)
from covidet.api.dicomweb.dicomjson import to_json
from covidet.api.dicomweb.media import parse_accept
from covidet.api.dicomweb.qido_keys import (
    SearchParams,
    include_from,
    instance_attributes,
    parse_search,
    series_attributes,
    study_attributes,
)
from covidet.ingest.storage import ImageStore
from covidet.store import archive_queries as aq
from covidet.store.db import Database

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["DICOMweb"])

_JSON_TYPES = ("application/dicom+json", "application/json", "application/*", "*/*")


def _header(store: ImageStore, record: aq.InstanceRecord) -> Dataset:
    """The stored header of ``record`` without pixels; an upload's DX object has fixed numbers
    (series 1, instance 1, 8 bits) and is not converted for a search."""
    if record.media_type != "application/dicom":
        upload = Dataset()
        upload.SeriesNumber, upload.InstanceNumber, upload.BitsAllocated = 1, 1, 8
        upload.SeriesDescription = "Chest X-ray (upload)"
        return upload
    try:
        return dcmread(store.path(record.path), stop_before_pixels=True)
    except Exception as exc:  # a damaged or missing file: still listed, with the database's keys
        logger.error("header of instance %s not readable: %s", record.sop_instance_uid, exc)
        return Dataset()


def _matches(params: SearchParams, series: aq.SeriesRecord) -> bool:
    return (params.modality in (None, series.modality)) and (
        not params.series_uids or series.series_instance_uid in params.series_uids
    )


def _instance_matches(params: SearchParams, record: aq.InstanceRecord) -> bool:
    return (not params.sop_uids or record.sop_instance_uid in params.sop_uids) and (
        not params.sop_class_uids or record.sop_class_uid in params.sop_class_uids
    )


def _search(
    request: Request,
    user: AuthenticatedUser,
    db: Database,
    store: ImageStore,
    level: str,
    params: SearchParams,
    *,
    with_study: bool = False,
) -> Response:
    """The answer to a search at ``level``; ``with_study`` adds the study attributes to series and
    instances (searches across all studies, PS3.18 10.6.3.3)."""
    if not any(r.media_type in _JSON_TYPES for r in parse_accept(request.headers.get("accept"))):
        raise not_acceptable("search results are served as application/dicom+json")
    with db.session() as session:
        studies = aq.search_studies(session, params.study)
        by_uid = {s.study_instance_uid: s for s in studies}
        rows: list[tuple[Any, ...]]
        if level == "study":
            rows = [(s,) for s in studies]
        else:
            every = aq.series_of_studies(session, [s.study_id for s in studies])
            series = [s for s in every if _matches(params, s)]
            if level == "series":
                rows = [(by_uid[s.study_instance_uid], s) for s in series]
            else:
                rows = [
                    (by_uid[s.study_instance_uid], s, i)
                    for s in series
                    for i in s.instances
                    if _instance_matches(params, i)
                ]
    page = rows[params.offset : params.offset + params.limit]
    first: dict[int, aq.InstanceRecord] = {}
    if level == "study" and page:  # the study keys a header holds come from the study's first X-ray
        with db.session() as session:
            for record in aq.instances(session, study_ids=[row[0].study_id for row in page]):
                first.setdefault(record.study_id, record)
    documents = []
    for row in page:
        dataset = Dataset()
        study = row[0]
        if level == "series":
            header = _header(store, row[1].instances[0])
        elif level == "instance":
            header = _header(store, row[2])
        else:
            header = _header(store, first[study.study_id]) if study.study_id in first else Dataset()
        if with_study or level == "study":
            study_attributes(dataset, study, study_url(request, study.study_instance_uid), header)
        if level == "series":
            series_url = f"{study_url(request, study.study_instance_uid)}/series/{row[1].series_instance_uid}"
            series_attributes(dataset, row[1], header, series_url)
        elif level == "instance":
            instance_attributes(dataset, row[2], header, instance_url(request, row[2]))
        if params.include or params.include_all:
            include_from(dataset, header, params.include, everything=params.include_all)
        documents.append(to_json(dataset))
    audit_read(
        db,
        request,
        user,
        "dicomweb.search",
        study_uids=[row[0].study_instance_uid for row in page],
        details={"level": level, "query": dict(request.query_params), "results": len(page)},
    )
    headers = dict(PATIENT_DATA_HEADERS)
    warnings = []
    if params.ignored:
        names = ", ".join(params.ignored)
        warnings.append(f'299 covidet "The following attributes are not supported for matching: {names}"')
    if not params.limit_given and len(rows) > params.offset + params.limit:
        warnings.append(
            '299 covidet "The number of results exceeded the maximum supported by the server. '
            'Additional results can be requested."'
        )
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    return Response(json.dumps(documents), media_type="application/dicom+json", headers=headers)


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request, user: RadiologistUser, db: DatabaseDep, store: StoreDep) -> Response:
    return _search(request, user, db, store, "study", parse_search(request.query_params))


@router.get("/series", summary="QIDO-RS: search for series of all studies")
def search_all_series(request: Request, user: RadiologistUser, db: DatabaseDep, store: StoreDep) -> Response:
    return _search(request, user, db, store, "series", parse_search(request.query_params), with_study=True)


@router.get("/studies/{study}/series", summary="QIDO-RS: search for series of a study")
def search_series(
    request: Request, study: str, user: RadiologistUser, db: DatabaseDep, store: StoreDep
) -> Response:
    return _search(request, user, db, store, "series", parse_search(request.query_params, study_uid=study))


@router.get("/instances", summary="QIDO-RS: search for instances of all studies")
def search_all_instances(
    request: Request, user: RadiologistUser, db: DatabaseDep, store: StoreDep
) -> Response:
    return _search(request, user, db, store, "instance", parse_search(request.query_params), with_study=True)


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for instances of a study")
def search_study_instances(
    request: Request, study: str, user: RadiologistUser, db: DatabaseDep, store: StoreDep
) -> Response:
    return _search(request, user, db, store, "instance", parse_search(request.query_params, study_uid=study))


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: search for instances of a series")
def search_series_instances(
    request: Request, study: str, series: str, user: RadiologistUser, db: DatabaseDep, store: StoreDep
) -> Response:
    params = parse_search(request.query_params, study_uid=study, series_uid=series)
    return _search(request, user, db, store, "instance", params)
