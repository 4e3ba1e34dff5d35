"""QIDO-RS query parameters (PS3.18 8.3.4): matching keys, ``includefield``, ``limit``/``offset``,
``fuzzymatching``; and the return attributes of each level (PS3.18 Tables 10.6.3-3 to -5) as datasets.

A matching key is named by keyword (``PatientID``) or tag (``00100020``). The keys covidet matches are
in :data:`MATCHING_KEYS`; another known attribute is ignored and named in a ``Warning`` header, as
PS3.18 8.3.4.1 asks; an unknown name or a malformed value is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from starlette.datastructures import QueryParams

from covidet.api.dicomweb.common import bad_request
from covidet.store import archive_queries as aq

__all__ = [
    "DEFAULT_LIMIT",
    "MATCHING_KEYS",
    "MAX_LIMIT",
    "SearchParams",
    "include_from",
    "instance_attributes",
    "parse_search",
    "series_attributes",
    "study_attributes",
]

#: Results of one answer when the client sets no ``limit``, and the most it may ask for.
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
#: Keys covidet matches, by level.
MATCHING_KEYS = {
    "study": (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "AccessionNumber",
        "StudyDate",
        "ModalitiesInStudy",
        "StudyDescription",
    ),
    "series": ("Modality", "SeriesInstanceUID"),
    "instance": ("SOPInstanceUID", "SOPClassUID"),
}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_DATE = re.compile(r"^\d{8}$")


@dataclass
class SearchParams:
    """A parsed QIDO request: the study-level query, UID lists of lower levels, paging and the
    extra attributes asked for (``include_all`` for ``includefield=all``)."""

    study: aq.StudyQuery
    modality: str | None = None
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()
    sop_class_uids: tuple[str, ...] = ()
    limit: int = DEFAULT_LIMIT
    limit_given: bool = False
    offset: int = 0
    include: list[str] = field(default_factory=list)
    include_all: bool = False
    fuzzy: bool = False
    ignored: list[str] = field(default_factory=list)


def _keyword(name: str) -> str:
    """The attribute keyword a query parameter names (keyword or 8-digit tag). 400 if none."""
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
    elif tag_for_keyword(name) is not None:
        return name
    raise bad_request(f"unknown attribute {name!r}: name it by DICOM keyword or 8-digit tag")


def _uids(value: str) -> tuple[str, ...]:
    items = tuple(u.strip() for u in re.split(r"[,\\]", value) if u.strip())
    if not items or not all(re.fullmatch(r"[0-9.]{1,64}", u) for u in items):
        raise bad_request(f"{value!r} is not a UID or a list of UIDs")
    return items


def _date(text: str, name: str) -> date | None:
    if text == "":
        return None
    if not _DATE.match(text):
        raise bad_request(
            f"{name}={text!r}: a date is YYYYMMDD, a range YYYYMMDD-YYYYMMDD (a side may be open)"
        )
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise bad_request(f"{name}={text!r} is not a calendar date") from None


def _code(value: str | None) -> str | None:
    """A code string key (Modality): ``None`` for any (absent, empty or ``*``)."""
    return None if value in (None, "", "*") else value


def _integer(params: QueryParams, name: str, default: int, maximum: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) > maximum:
        raise bad_request(f"{name}={text!r}: give a whole number from 0 to {maximum}")
    return int(text)


def parse_search(
    params: QueryParams, *, study_uid: str | None = None, series_uid: str | None = None
) -> SearchParams:
    """The search a QIDO query string asks for; ``study_uid`` / ``series_uid`` come from the path."""
    values: dict[str, str] = {}
    include: list[str] = []
    include_all = False
    for name, value in params.multi_items():
        if name == "includefield":
            for item in (v.strip() for v in value.split(",") if v.strip()):
                if item == "all":
                    include_all = True
                else:
                    include.append(_keyword(item))
        elif name not in _CONTROL:
            values[_keyword(name)] = value
    matched = {key for keys in MATCHING_KEYS.values() for key in keys}
    ignored = sorted(k for k in values if k not in matched)
    study_date = values.get("StudyDate", "")
    low, _, high = study_date.partition("-") if "-" in study_date else (study_date, "", study_date)
    study_uids = _uids(values["StudyInstanceUID"]) if values.get("StudyInstanceUID") else ()
    if study_uid is not None:
        study_uids = (study_uid,) if not study_uids or study_uid in study_uids else ("",)
    series_uids = _uids(values["SeriesInstanceUID"]) if values.get("SeriesInstanceUID") else ()
    if series_uid is not None:
        series_uids = (series_uid,) if not series_uids or series_uid in series_uids else ("",)
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise bad_request(f"fuzzymatching={fuzzy!r}: true or false")
    limit_text = params.get("limit")
    return SearchParams(
        study=aq.StudyQuery(
            patient_id=values.get("PatientID") or None,
            patient_name=values.get("PatientName") or None,
            study_uids=study_uids,
            accession_number=values.get("AccessionNumber") or None,
            study_description=values.get("StudyDescription") or None,
            date_from=_date(low, "StudyDate"),
            date_to=_date(high, "StudyDate"),
            modality=_code(values.get("ModalitiesInStudy")),
        ),
        modality=_code(values.get("Modality")),
        series_uids=series_uids,
        sop_uids=_uids(values["SOPInstanceUID"]) if values.get("SOPInstanceUID") else (),
        sop_class_uids=_uids(values["SOPClassUID"]) if values.get("SOPClassUID") else (),
        limit=_integer(params, "limit", DEFAULT_LIMIT, MAX_LIMIT),
        limit_given=limit_text is not None,
        offset=_integer(params, "offset", 0, 10**9),
        include=include,
        include_all=include_all,
        fuzzy=fuzzy == "true",
        ignored=ignored,
    )


# -------------------------------------------------------------------------------- return attributes


def _set(dataset: Dataset, keyword: str, value: object) -> None:
    """Set ``keyword``; ``None`` gives the attribute with no value (PS3.18: present, empty)."""
    if value is None:
        dataset.add_new(keyword, dictionary_VR(keyword), None)
    else:
        setattr(dataset, keyword, value)


def study_attributes(dataset: Dataset, study: aq.StudyRecord, retrieve_url: str, header: Dataset) -> None:
    """The study-level return keys of ``study`` (Table 10.6.3-3) into ``dataset``: covidet's records
    for what it indexes, the stored ``header`` (of an instance of the study) for the rest."""
    when = study.study_datetime
    for keyword, value in (
        ("SpecificCharacterSet", "ISO_IR 192"),
        ("StudyDate", when.strftime("%Y%m%d") if when else None),
        ("StudyTime", when.strftime("%H%M%S") if when else None),
        ("AccessionNumber", study.accession_number),
        ("InstanceAvailability", "ONLINE"),
        ("ModalitiesInStudy", list(study.modalities)),
        ("ReferringPhysicianName", header.get("ReferringPhysicianName") or None),
        ("TimezoneOffsetFromUTC", "+0000"),
        ("RetrieveURL", retrieve_url),
        ("PatientName", study.patient_name),
        ("PatientID", study.patient_key),
        ("PatientBirthDate", header.get("PatientBirthDate") or None),
        ("PatientSex", header.get("PatientSex") or None),
        ("StudyInstanceUID", study.study_instance_uid),
        ("StudyID", header.get("StudyID") or None),
        ("StudyDescription", study.description),
        ("NumberOfStudyRelatedSeries", study.series_count),
        ("NumberOfStudyRelatedInstances", study.instance_count),
    ):
        _set(dataset, keyword, value)


def series_attributes(dataset: Dataset, series: aq.SeriesRecord, header: Dataset, retrieve_url: str) -> None:
    """The series-level return keys (Table 10.6.3-4); number and description from the first
    instance's ``header``."""
    for keyword, value in (
        ("Modality", series.modality),
        ("SeriesDescription", header.get("SeriesDescription")),
        ("SeriesNumber", header.get("SeriesNumber")),
        ("SeriesInstanceUID", series.series_instance_uid),
        ("StudyInstanceUID", series.study_instance_uid),
        ("NumberOfSeriesRelatedInstances", len(series.instances)),
        ("PerformedProcedureStepStartDate", None),
        ("PerformedProcedureStepStartTime", None),
        ("RetrieveURL", retrieve_url),
    ):
        _set(dataset, keyword, value)


def instance_attributes(
    dataset: Dataset, record: aq.InstanceRecord, header: Dataset, retrieve_url: str
) -> None:
    """The instance-level return keys (Table 10.6.3-5), image attributes from ``header``."""
    image = record.kind == "image"
    for keyword, value in (
        ("SOPClassUID", record.sop_class_uid),
        ("SOPInstanceUID", record.sop_instance_uid),
        ("InstanceAvailability", "ONLINE"),
        ("TimezoneOffsetFromUTC", "+0000"),
        ("RetrieveURL", retrieve_url),
        ("InstanceNumber", header.get("InstanceNumber")),
        ("Rows", record.rows if image else None),
        ("Columns", record.columns if image else None),
        ("BitsAllocated", header.get("BitsAllocated") if image else None),
        ("NumberOfFrames", int(header.get("NumberOfFrames") or 1) if image else None),
        ("Modality", record.modality),
        ("SeriesInstanceUID", record.series_instance_uid),
        ("StudyInstanceUID", record.study_instance_uid),
    ):
        _set(dataset, keyword, value)


def include_from(dataset: Dataset, header: Dataset, keywords: Iterable[str], *, everything: bool) -> None:
    """Copy the ``includefield`` attributes (every attribute for ``all``) from ``header`` into
    ``dataset``, not replacing a return key; an attribute the header lacks is sent empty."""
    if everything:
        for element in header:
            if element.tag not in dataset and element.tag.group != 0x0002:
                dataset.add(element)
    for keyword in keywords:
        if keyword in dataset:
            continue
        if keyword in header:
            dataset.add(header[keyword])
        elif dictionary_VR(keyword) != "SQ":
            _set(dataset, keyword, None)
