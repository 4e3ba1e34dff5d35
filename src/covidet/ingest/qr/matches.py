"""What a Query/Retrieve request matches in covidet's archive, and the C-FIND response identifiers.

Matching runs over :mod:`covidet.store.archive_queries` (studies with their patient, series grouped
from instances) inside the caller's session and returns plain records. :func:`find_matches` stops
with :class:`TooManyMatches` beyond the caller's bound, so a broad query is refused, never truncated
silently. :func:`response_identifier` answers exactly the keys the request asked for (PS3.4
C.4.1.2.3): covidet's value where it has one, zero length where it has none, plus the unique keys
of the levels down to the query's and ``RetrieveAETitle``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sized
from dataclasses import dataclass, replace

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from covidet.ingest.qr.keys import PATIENT_ROOT, QueryKeys
from covidet.store.archive_queries import (
    InstanceRecord,
    SeriesRecord,
    StudyRecord,
    count_studies,
    instances,
    search_studies,
    series_of_studies,
)

__all__ = [
    "InstanceMatch",
    "PatientMatch",
    "SeriesMatch",
    "TooManyMatches",
    "find_matches",
    "instances_of",
    "response_identifier",
    "study_uids_of",
]


class TooManyMatches(Exception):
    """More than ``limit`` matches: the request is refused, not cut."""

    def __init__(self, level: str, limit: int) -> None:
        super().__init__(f"more than {limit} {level.lower()} matches: narrow the query")
        self.level = level
        self.limit = limit


@dataclass(frozen=True, slots=True)
class PatientMatch:
    """A patient and the studies of it that match (for the patient-level counts)."""

    patient_key: str
    patient_name: str | None
    studies: tuple[StudyRecord, ...]


@dataclass(frozen=True, slots=True)
class SeriesMatch:
    study: StudyRecord
    series: SeriesRecord


@dataclass(frozen=True, slots=True)
class InstanceMatch:
    study: StudyRecord
    series: SeriesRecord
    instance: InstanceRecord


Match = PatientMatch | StudyRecord | SeriesMatch | InstanceMatch

#: Attribute keyword -> the value covidet holds for a match (pydicom converts it on assignment).
AttributeValues = dict[str, str | int | list[str] | None]


def _check(found: Sized, level: str, limit: int | None) -> None:
    if limit is not None and len(found) > limit:
        raise TooManyMatches(level, limit)


def _narrowed_below_studies(keys: QueryKeys) -> bool:
    """Whether a key filters after the study search (then the study count bounds nothing): every
    study :func:`count_studies` counts holds an instance, so has at least one series and instance."""
    series_keys = keys.level in ("SERIES", "IMAGE") and (keys.series_uids or keys.modality)
    image_keys = keys.level == "IMAGE" and (keys.sop_uids or keys.sop_class_uid)
    return bool(keys.modalities_in_study or series_keys or image_keys)


def find_matches(session: Session, keys: QueryKeys, *, limit: int | None = None) -> list[Match]:
    """The patients, studies, series or instances (by ``keys.level``) matching ``keys``, newest study
    first. Raises :class:`TooManyMatches` when there are more than ``limit``, counted in the database
    before anything is loaded when no key narrows the matches below the studies."""
    if keys.level == "IMAGE" and keys.sop_uids and not keys.study.study_uids:
        # By SOP Instance UIDs alone (no StudyInstanceUID): find their studies by UID first, so the
        # request never loads the whole archive.
        held = [record for uid in keys.sop_uids for record in instances(session, sop_uid=uid)]
        if not held:
            return []
        studies_of = tuple(dict.fromkeys(record.study_instance_uid for record in held))
        keys = replace(keys, study=replace(keys.study, study_uids=studies_of))
    if limit is not None and not _narrowed_below_studies(keys):
        studies_held, patients_held = count_studies(session, keys.study)
        if (patients_held if keys.level == "PATIENT" else studies_held) > limit:
            raise TooManyMatches(keys.level, limit)
    studies = search_studies(session, keys.study)
    if keys.modalities_in_study:
        wanted = set(keys.modalities_in_study)
        studies = [s for s in studies if wanted.intersection(s.modalities)]
    if keys.level == "PATIENT":
        grouped: dict[str, list[StudyRecord]] = defaultdict(list)
        for study in studies:
            grouped[study.patient_key].append(study)
        patients = [
            PatientMatch(key, members[0].patient_name, tuple(members)) for key, members in grouped.items()
        ]
        _check(patients, "PATIENT", limit)
        return list(patients)
    if keys.level == "STUDY":
        _check(studies, "STUDY", limit)
        return list(studies)
    by_uid = {s.study_instance_uid: s for s in studies}
    series = [
        SeriesMatch(by_uid[one.study_instance_uid], one)
        for one in series_of_studies(session, [s.study_id for s in studies])
        if (not keys.series_uids or one.series_instance_uid in keys.series_uids)
        and (keys.modality is None or one.modality == keys.modality)
    ]
    if keys.level == "SERIES":
        _check(series, "SERIES", limit)
        return list(series)
    found = [
        InstanceMatch(match.study, match.series, instance)
        for match in series
        for instance in match.series.instances
        if (not keys.sop_uids or instance.sop_instance_uid in keys.sop_uids)
        and (keys.sop_class_uid is None or instance.sop_class_uid == keys.sop_class_uid)
    ]
    _check(found, "IMAGE", limit)
    return list(found)


def instances_of(session: Session, matches: list[Match]) -> list[InstanceRecord]:
    """Every instance under ``matches`` (what a C-GET / C-MOVE sends), each once, X-rays before the
    SRs of each study."""
    study_ids = [
        study.study_id
        for match in matches
        if isinstance(match, PatientMatch | StudyRecord)
        for study in (match.studies if isinstance(match, PatientMatch) else (match,))
    ]
    records: list[InstanceRecord] = instances(session, study_ids=study_ids) if study_ids else []
    for match in matches:
        if isinstance(match, InstanceMatch):
            records.append(match.instance)
        elif isinstance(match, SeriesMatch):
            records.extend(match.series.instances)
    seen: dict[str, InstanceRecord] = {}
    for record in records:
        seen.setdefault(record.sop_instance_uid, record)
    return list(seen.values())


def study_uids_of(matches: list[Match]) -> list[str]:
    """The Study Instance UIDs ``matches`` touch (what the audit records), each once, in order."""
    uids: dict[str, None] = {}
    for match in matches:
        if isinstance(match, PatientMatch):
            studies: tuple[StudyRecord, ...] = match.studies
        elif isinstance(match, StudyRecord):
            studies = (match,)
        else:
            studies = (match.study,)
        for study in studies:
            uids.setdefault(study.study_instance_uid, None)
    return list(uids)


def _patient_values(key: str, name: str | None, studies: tuple[StudyRecord, ...]) -> AttributeValues:
    return {
        "PatientID": key,
        "PatientName": name or "",
        "NumberOfPatientRelatedStudies": len(studies),
        "NumberOfPatientRelatedSeries": sum(s.series_count for s in studies),
        "NumberOfPatientRelatedInstances": sum(s.instance_count for s in studies),
    }


def _study_values(study: StudyRecord) -> AttributeValues:
    when = study.study_datetime
    return {
        **_patient_values(study.patient_key, study.patient_name, (study,)),
        "StudyInstanceUID": study.study_instance_uid,
        "StudyDate": when.strftime("%Y%m%d") if when else "",
        "StudyTime": when.strftime("%H%M%S") if when else "",
        "AccessionNumber": study.accession_number or "",
        "StudyDescription": study.description or "",
        "ModalitiesInStudy": list(study.modalities),
        "NumberOfStudyRelatedSeries": study.series_count,
        "NumberOfStudyRelatedInstances": study.instance_count,
    }


def _values(match: Match) -> AttributeValues:
    """Every attribute covidet knows of ``match`` (a response carries those the request asked for)."""
    if isinstance(match, PatientMatch):
        return _patient_values(match.patient_key, match.patient_name, match.studies)
    if isinstance(match, StudyRecord):
        return _study_values(match)
    values = _study_values(match.study)
    series = match.series
    values |= {
        "SeriesInstanceUID": series.series_instance_uid,
        "Modality": series.modality,
        "NumberOfSeriesRelatedInstances": len(series.instances),
    }
    if isinstance(match, InstanceMatch):
        instance = match.instance
        values |= {
            "SOPInstanceUID": instance.sop_instance_uid,
            "SOPClassUID": instance.sop_class_uid,
            "InstanceNumber": next(
                (
                    i + 1
                    for i, r in enumerate(series.instances)
                    if r.sop_instance_uid == instance.sop_instance_uid
                ),
                "",
            ),
        }
        if instance.rows is not None:
            values |= {"Rows": instance.rows, "Columns": instance.columns}
    return values


#: The unique key of each level, always returned down to the query's level.
_UNIQUE = (("PATIENT", "PatientID"), ("STUDY", "StudyInstanceUID"), ("SERIES", "SeriesInstanceUID"))


def response_identifier(request: Dataset, match: Match, keys: QueryKeys, ae_title: str) -> Dataset:
    """The C-FIND response identifier of ``match`` for ``request`` (see the module docstring)."""
    values = _values(match)
    response = Dataset()
    response.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names are kept as the modality sent them
    for element in request:
        keyword = element.keyword
        if keyword in ("SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle") or not keyword:
            continue
        if keyword in values:
            setattr(response, keyword, values[keyword])
        else:
            response.add_new(element.tag, element.VR, [] if element.VR == "SQ" else None)
    for level, keyword in _UNIQUE:
        if level == "PATIENT" and keys.root != PATIENT_ROOT:
            continue
        if keyword in values and keyword not in response:
            setattr(response, keyword, values[keyword])
        if level == keys.level:
            break
    if keys.level == "IMAGE" and "SOPInstanceUID" not in response:
        response.SOPInstanceUID = values["SOPInstanceUID"]
    response.QueryRetrieveLevel = keys.level
    response.RetrieveAETitle = ae_title
    return response
