"""covidet's holdings seen as a DICOM archive: patients → studies → series → instances.

The one place that answers "which DICOM instances does covidet hold" for DICOMweb (QIDO-RS, WADO-RS)
and Query/Retrieve (C-FIND, C-GET, C-MOVE). An instance is either an accepted image (``kind`` ``image``:
the file a modality sent, or a PNG/JPEG upload that is served converted to a DX object, see
:mod:`covidet.archive.instances`) or a DICOM object covidet made (``ai-sr``, ``review-sr``: rows of
:class:`~covidet.store.models.DicomObject`).

Matching follows PS3.4 C.2.2.2 where it is cheap to do so: single-value match, ``*`` / ``?`` wildcards
(case-insensitive for person names), UID lists, and date ranges (``from``/``to`` inclusive, either may be
open). Everything here runs inside a caller's session and returns plain frozen records, so callers never
hold ORM objects after the session ends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import TypeVar

from pydicom.uid import generate_uid
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import QueryableAttribute, Session

from covidet.store.models import DicomObject, Image, Patient, Study

__all__ = [
    "UPLOAD_SOP_CLASS_UID",
    "InstanceRecord",
    "SeriesRecord",
    "StudyQuery",
    "StudyRecord",
    "add_dicom_object",
    "count_studies",
    "dicom_like",
    "image_series_uid",
    "images_without_series_uid",
    "instance_by_uid",
    "instances",
    "record_series_uids",
    "search_studies",
    "series_of_studies",
]

#: A PNG/JPEG upload is served as a Digital X-Ray Image Storage - For Presentation object.
UPLOAD_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One DICOM instance covidet holds.

    ``path`` is relative to the image store; ``media_type`` is how the file is stored
    (``application/dicom``, or ``image/png`` / ``image/jpeg`` for uploads, which are served converted).
    ``image_id`` is the X-ray itself (``kind == "image"``) or the X-ray an SR describes.
    """

    kind: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    path: str
    media_type: str
    image_id: int
    study_id: int
    rows: int | None
    columns: int | None
    transfer_syntax_uid: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """A series: its UID, modality, the study it belongs to and its instances (in creation order)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    instances: tuple[InstanceRecord, ...]


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """A study with the patient attributes a study-level query returns."""

    study_id: int
    study_instance_uid: str
    patient_key: str
    patient_name: str | None
    accession_number: str | None
    description: str | None
    study_datetime: datetime | None
    modalities: tuple[str, ...]
    series_count: int
    instance_count: int


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """Study-level matching keys. ``None`` means "any". String keys take DICOM wildcards (``*``, ``?``);
    ``study_uids`` is a UID list match; ``date_from`` / ``date_to`` bound the study date inclusively;
    ``modality`` matches ModalitiesInStudy (any series of that modality)."""

    patient_id: str | None = None
    patient_name: str | None = None
    study_uids: tuple[str, ...] = field(default_factory=tuple)
    accession_number: str | None = None
    study_description: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    modality: str | None = None


def dicom_like(pattern: str) -> tuple[str, bool]:
    """A DICOM wildcard pattern as an SQL ``LIKE`` pattern (escape ``\\``) and whether it has wildcards."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    has_wildcard = "*" in pattern or "?" in pattern
    return escaped.replace("*", "%").replace("?", "_"), has_wildcard


def _match(
    column: QueryableAttribute[str] | QueryableAttribute[str | None],
    pattern: str | None,
    *,
    fold_case: bool = False,
) -> ColumnElement[bool] | None:
    """An SQL condition for a DICOM single-value or wildcard match of ``column``; ``None`` for any."""
    if pattern is None or pattern in ("", "*"):
        return None
    like, wild = dicom_like(pattern)
    if fold_case:
        return func.lower(column).like(like.lower(), escape="\\")
    return column.like(like, escape="\\") if wild else column == pattern


def image_series_uid(image: Image) -> str:
    """The image's Series Instance UID: the header's, or for a PNG/JPEG upload (and an image stored
    before it was recorded) one derived from the content hash, the same every time."""
    if image.series_instance_uid:
        return image.series_instance_uid
    return generate_uid(entropy_srcs=["covidet-upload-series", image.content_sha256])


def _image_record(image: Image, study_uid: str) -> InstanceRecord:
    is_dicom = image.media_type == "application/dicom"
    return InstanceRecord(
        kind="image",
        study_instance_uid=study_uid,
        series_instance_uid=image_series_uid(image),
        sop_instance_uid=image.sop_instance_uid,
        sop_class_uid=(image.sop_class_uid or UPLOAD_SOP_CLASS_UID) if is_dicom else UPLOAD_SOP_CLASS_UID,
        modality=(image.modality or "OT") if is_dicom else "DX",
        path=image.path,
        media_type=image.media_type,
        image_id=image.id,
        study_id=image.study_id,
        rows=image.rows,
        columns=image.columns,
        transfer_syntax_uid=image.transfer_syntax_uid if is_dicom else None,
        created_at=image.received_at,
    )


def _object_record(obj: DicomObject, study_uid: str) -> InstanceRecord:
    return InstanceRecord(
        kind=obj.kind,
        study_instance_uid=study_uid,
        series_instance_uid=obj.series_instance_uid,
        sop_instance_uid=obj.sop_instance_uid,
        sop_class_uid=obj.sop_class_uid,
        modality=obj.modality,
        path=obj.path,
        media_type="application/dicom",
        image_id=obj.image_id,
        study_id=obj.study_id,
        rows=None,
        columns=None,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        created_at=obj.created_at,
    )


def instances(
    session: Session,
    *,
    study_ids: Iterable[int] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[InstanceRecord]:
    """The instances of the given studies (ids or one UID), optionally narrowed to a series or an
    instance, X-rays first, then covidet's objects, each in creation order."""
    image_query = select(Image, Study.study_instance_uid).join(Study, Image.study_id == Study.id)
    object_query = select(DicomObject, Study.study_instance_uid).join(Study, DicomObject.study_id == Study.id)
    if study_ids is not None:
        ids = list(study_ids)
        image_query = image_query.where(Image.study_id.in_(ids))
        object_query = object_query.where(DicomObject.study_id.in_(ids))
    if study_uid is not None:
        image_query = image_query.where(Study.study_instance_uid == study_uid)
        object_query = object_query.where(Study.study_instance_uid == study_uid)
    if sop_uid is not None:
        image_query = image_query.where(Image.sop_instance_uid == sop_uid)
        object_query = object_query.where(DicomObject.sop_instance_uid == sop_uid)
    if series_uid is not None:
        object_query = object_query.where(DicomObject.series_instance_uid == series_uid)
    records = [_image_record(image, uid) for image, uid in session.execute(image_query.order_by(Image.id))]
    if series_uid is not None:  # an upload's series UID is derived, not stored: filter after
        records = [r for r in records if r.series_instance_uid == series_uid]
    records += [
        _object_record(obj, uid) for obj, uid in session.execute(object_query.order_by(DicomObject.id))
    ]
    return records


def instance_by_uid(session: Session, sop_uid: str) -> InstanceRecord | None:
    """The instance with this SOP Instance UID, or ``None``."""
    found = instances(session, sop_uid=sop_uid)
    return found[0] if found else None


def series_of_studies(session: Session, study_ids: Iterable[int]) -> list[SeriesRecord]:
    """Every series of the given studies, grouped from their instances."""
    grouped: dict[tuple[str, str], list[InstanceRecord]] = defaultdict(list)
    for record in instances(session, study_ids=study_ids):
        grouped[(record.study_instance_uid, record.series_instance_uid)].append(record)
    return [
        SeriesRecord(study_uid, series_uid, members[0].modality, tuple(members))
        for (study_uid, series_uid), members in grouped.items()
    ]


#: A SELECT over Study joined with Patient (the rows it selects vary).
_StudySelect = TypeVar("_StudySelect", bound=Select)


def _where_study_matches(statement: _StudySelect, query: StudyQuery) -> _StudySelect:
    """``statement`` (over Study joined with Patient) narrowed by the SQL-level keys of ``query``
    (all but ``modality``)."""
    for condition in (
        _match(Patient.patient_key, query.patient_id),
        _match(Patient.name, query.patient_name, fold_case=True),
        _match(Study.accession_number, query.accession_number),
        _match(Study.description, query.study_description, fold_case=True),
    ):
        if condition is not None:
            statement = statement.where(condition)
    if query.study_uids:
        statement = statement.where(Study.study_instance_uid.in_(query.study_uids))
    if query.date_from is not None:
        statement = statement.where(
            Study.study_datetime >= datetime.combine(query.date_from, time.min, tzinfo=UTC)
        )
    if query.date_to is not None:
        statement = statement.where(
            Study.study_datetime <= datetime.combine(query.date_to, time.max, tzinfo=UTC)
        )
    return statement


def count_studies(session: Session, query: StudyQuery) -> tuple[int, int]:
    """(studies, distinct patients) matching ``query``'s SQL-level keys (all but ``modality``) that
    hold at least one X-ray, counted in the database without loading them: an upper bound of what
    :func:`search_studies` returns, exact when ``query.modality`` is ``None``. Every such study has
    at least one series, so it is also a lower bound of the series below them (Q/R refuses an
    over-broad query with it before loading anything)."""
    held = select(Image.id).where(Image.study_id == Study.id).exists()
    statement = _where_study_matches(
        select(func.count(Study.id), func.count(func.distinct(Patient.id))).join(
            Patient, Study.patient_id == Patient.id
        ),
        query,
    ).where(held)
    studies, patients = session.execute(statement).one()
    return int(studies), int(patients)


def search_studies(
    session: Session, query: StudyQuery, *, limit: int | None = None, offset: int = 0
) -> list[StudyRecord]:
    """The studies matching ``query``, newest first (study date, then arrival), after ``offset``, at
    most ``limit`` of them. Only studies that hold at least one instance are returned."""
    statement = _where_study_matches(
        select(Study, Patient).join(Patient, Study.patient_id == Patient.id), query
    )
    statement = statement.order_by(Study.study_datetime.desc().nulls_last(), Study.id.desc())
    rows = list(session.execute(statement))
    series = series_of_studies(session, [study.id for study, _ in rows])
    by_study: dict[str, list[SeriesRecord]] = defaultdict(list)
    for one in series:
        by_study[one.study_instance_uid].append(one)
    results: list[StudyRecord] = []
    for study, patient in rows:
        members = by_study.get(study.study_instance_uid, [])
        modalities = tuple(sorted({s.modality for s in members}))
        if not members or (query.modality and query.modality not in modalities):
            continue
        results.append(
            StudyRecord(
                study_id=study.id,
                study_instance_uid=study.study_instance_uid,
                patient_key=patient.patient_key,
                patient_name=patient.name,
                accession_number=study.accession_number,
                description=study.description,
                study_datetime=study.study_datetime,
                modalities=modalities,
                series_count=len(members),
                instance_count=sum(len(s.instances) for s in members),
            )
        )
    end = None if limit is None else offset + limit
    return results[offset:end]


def add_dicom_object(session: Session, obj: DicomObject) -> DicomObject:
    """Record ``obj`` unless an object with its SOP Instance UID is already recorded (then return
    that one): storing the same SR twice is a no-op."""
    existing = session.scalar(select(DicomObject).where(DicomObject.sop_instance_uid == obj.sop_instance_uid))
    if existing is not None:
        return existing
    session.add(obj)
    session.flush()
    return obj


def record_series_uids(session: Session, uids: Mapping[int, str | None]) -> None:
    """Record the Series Instance UID of each image id in ``uids``; ``None`` (not readable) records
    the UID derived by :func:`image_series_uid`, so the image is not picked again. Missing ids are
    skipped."""
    for image_id, uid in uids.items():
        image = session.get(Image, image_id)
        if image is not None:
            image.series_instance_uid = uid if uid is not None else image_series_uid(image)


def images_without_series_uid(session: Session, *, limit: int = 500) -> Sequence[tuple[int, str]]:
    """(image id, store path) of DICOM images whose series UID is not recorded yet (stored before
    revision 0004), for a back-fill that reads their headers."""
    statement = (
        select(Image.id, Image.path)
        .where(Image.series_instance_uid.is_(None), Image.media_type == "application/dicom")
        .order_by(Image.id)
        .limit(limit)
    )
    return [(int(i), str(p)) for i, p in session.execute(statement)]
