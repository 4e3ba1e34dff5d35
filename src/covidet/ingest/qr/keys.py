"""The request identifier of a C-FIND, C-GET or C-MOVE, read into what covidet can match.

:func:`parse_request` checks the Query/Retrieve Level against the information model (Patient Root:
PATIENT, STUDY, SERIES, IMAGE; Study Root: the same without PATIENT) and turns the matching keys
covidet supports into a :class:`QueryKeys`; it raises :class:`IdentifierError` (status 0xA900, with
the Error Comment) for an identifier that cannot be read that way. Keys with a value that covidet
does not match on are listed in :attr:`QueryKeys.unsupported`, so C-FIND can answer *pending,
warning: optional keys not supported* (0xFF01) and return them empty, as PS3.4 C.4.1.1.3.2 allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from covidet.store.archive_queries import StudyQuery

__all__ = [
    "LEVELS",
    "PATIENT_ROOT",
    "STUDY_ROOT",
    "UNIQUE_KEYS",
    "IdentifierError",
    "QueryKeys",
    "date_range",
    "parse_request",
]

#: Query/Retrieve levels, highest first.
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
PATIENT_ROOT, STUDY_ROOT = "patient", "study"

#: Keys covidet matches on, by the level that introduces them (higher levels' keys count below).
_MATCHED: dict[str, frozenset[str]] = {
    "PATIENT": frozenset({"PatientID", "PatientName"}),
    "STUDY": frozenset(
        {"StudyInstanceUID", "StudyDate", "AccessionNumber", "ModalitiesInStudy", "StudyDescription"}
    ),
    "SERIES": frozenset({"SeriesInstanceUID", "Modality"}),
    "IMAGE": frozenset({"SOPInstanceUID", "SOPClassUID"}),
}
#: Elements of an identifier that are never keys.
_NOT_KEYS = frozenset(
    {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"}
)
#: The unique key a C-GET / C-MOVE must give at each level (PS3.4 C.4.2.2.1 / C.4.3.2.1).
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_DATE = re.compile(r"^\d{8}$")


class IdentifierError(ValueError):
    """The identifier cannot be answered: ``status`` (0xA900 unless said) and the reason."""

    def __init__(self, reason: str, status: int = 0xA900) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class QueryKeys:
    """A request identifier as covidet matches it: ``study`` holds the patient- and study-level keys
    (see :class:`~covidet.store.archive_queries.StudyQuery`); the series and image keys are UID lists
    (empty: any) and a modality / SOP class (``None``: any)."""

    level: str
    root: str
    study: StudyQuery
    modalities_in_study: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    modality: str | None = None
    sop_uids: tuple[str, ...] = ()
    sop_class_uid: str | None = None
    unsupported: tuple[str, ...] = field(default_factory=tuple)


def _text(identifier: Dataset, keyword: str) -> str | None:
    """The key's single value as text; ``None`` when absent, empty or universal (``*``)."""
    if keyword not in identifier:
        return None
    value = identifier[keyword].value
    if value is None:
        return None
    if isinstance(value, MultiValue):
        raise IdentifierError(f"{keyword} takes one value here, not a list")
    text = str(value).strip()
    return None if text in ("", "*") else text


def _uids(identifier: Dataset, keyword: str) -> tuple[str, ...]:
    """A UID list match (PS3.4 C.2.2.2.2): every value, empty for universal matching."""
    if keyword not in identifier or identifier[keyword].value in (None, ""):
        return ()
    value = identifier[keyword].value
    values = [value] if isinstance(value, str) else list(value)
    uids = tuple(str(v).strip() for v in values if str(v).strip())
    if any("*" in uid or "?" in uid for uid in uids):
        raise IdentifierError(f"{keyword} takes UIDs, not wildcards")
    return uids


def _day(text: str, keyword: str) -> date:
    if not _DATE.match(text):
        raise IdentifierError(f"{keyword} {text!r} is not a date YYYYMMDD")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as exc:
        raise IdentifierError(f"{keyword} {text!r} is not a date") from exc


def date_range(text: str | None, keyword: str = "StudyDate") -> tuple[date | None, date | None]:
    """A DICOM date or range (``D``, ``D-``, ``-D``, ``D1-D2``) as inclusive bounds."""
    if text is None:
        return None, None
    if "-" not in text:
        day = _day(text, keyword)
        return day, day
    start, _, end = text.partition("-")
    try:
        low = _day(start, keyword) if start else None
        high = _day(end, keyword) if end else None
    except IdentifierError as exc:
        raise IdentifierError(f"{keyword} {text!r} is not a date range YYYYMMDD-YYYYMMDD") from exc
    if low is None and high is None:
        raise IdentifierError(f"{keyword} {text!r} is not a date range")
    if low and high and low > high:
        raise IdentifierError(f"{keyword} range {text!r} ends before it starts")
    return low, high


def _multi(identifier: Dataset, keyword: str) -> tuple[str, ...]:
    """A code-string key that may hold several values (ModalitiesInStudy): any of them matches."""
    if keyword not in identifier or identifier[keyword].value in (None, ""):
        return ()
    value = identifier[keyword].value
    values = [value] if isinstance(value, str) else list(value)
    return tuple(v for v in (str(x).strip().upper() for x in values) if v and v != "*")


def parse_request(identifier: Dataset | None, root: str, *, retrieve: bool = False) -> QueryKeys:
    """Read ``identifier`` of a request under the ``root`` information model (``patient`` or
    ``study``). ``retrieve``: a C-GET / C-MOVE, which must name the unique key of its level.

    Raises:
        IdentifierError: no or unknown level, PATIENT level under Study Root, a malformed key, or a
            retrieve without its level's unique key.
    """
    if identifier is None:
        raise IdentifierError("the request identifier cannot be decoded", status=0xC000)
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise IdentifierError(f"QueryRetrieveLevel {level or '(none)'!r} is not PATIENT/STUDY/SERIES/IMAGE")
    if level == "PATIENT" and root == STUDY_ROOT:
        raise IdentifierError("PATIENT level is not part of the Study Root model")
    depth = LEVELS.index(level)
    matched = frozenset().union(*(_MATCHED[lv] for lv in LEVELS[: depth + 1]))
    unsupported = tuple(
        sorted(
            element.keyword
            for element in identifier
            if element.keyword
            and element.keyword not in _NOT_KEYS
            and element.keyword not in matched
            and element.VR != "SQ"
            and element.value not in (None, "", "*")
        )
    )
    if retrieve:
        unique = UNIQUE_KEYS[level]
        if not (_uids(identifier, unique) if unique != "PatientID" else _text(identifier, unique)):
            raise IdentifierError(f"a retrieve at {level} level needs {unique}")
        if unique == "PatientID" and any(c in (_text(identifier, unique) or "") for c in "*?"):
            raise IdentifierError("a retrieve needs a PatientID without wildcards")
    date_from, date_to = date_range(_text(identifier, "StudyDate")) if depth >= 1 else (None, None)
    study = StudyQuery(
        patient_id=_text(identifier, "PatientID"),
        patient_name=_text(identifier, "PatientName"),
        study_uids=_uids(identifier, "StudyInstanceUID") if depth >= 1 else (),
        accession_number=_text(identifier, "AccessionNumber") if depth >= 1 else None,
        study_description=_text(identifier, "StudyDescription") if depth >= 1 else None,
        date_from=date_from,
        date_to=date_to,
    )
    return QueryKeys(
        level=level,
        root=root,
        study=study,
        modalities_in_study=_multi(identifier, "ModalitiesInStudy") if depth >= 1 else (),
        series_uids=_uids(identifier, "SeriesInstanceUID") if depth >= 2 else (),
        modality=(_text(identifier, "Modality") or "").upper() or None if depth >= 2 else None,
        sop_uids=_uids(identifier, "SOPInstanceUID") if depth >= 3 else (),
        sop_class_uid=_text(identifier, "SOPClassUID") if depth >= 3 else None,
        unsupported=unsupported,
    )
