"""A patient's sex and age as the X-ray's DICOM header states them, for the worklist ("where known").

covidet's database keeps patients by the identifier devices send, without sex or age; a DICOM study
usually carries them (Patient's Sex (0010,0040), Patient's Age (0010,1010), or Patient's Birth Date
(0010,0030) with the Study Date (0008,0020)). They are read from the stored file's header only
(``stop_before_pixels``), and remembered per file: files in the image store are content-addressed and
never change. PNG and JPEG uploads, and headers without these attributes, give ``None``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

__all__ = ["Demographics", "dicom_demographics"]

logger = logging.getLogger(__name__)

_TAGS = ["PatientSex", "PatientAge", "PatientBirthDate", "StudyDate"]
_SEX = {"M": "M", "F": "F", "O": "other"}
_AGE_UNITS = {"Y": "y", "M": "mo", "W": "wk", "D": "d"}


@dataclass(frozen=True, slots=True)
class Demographics:
    """``sex``: ``M``, ``F``, ``other`` or ``None``; ``age``: e.g. ``64 y``, ``7 mo``, or ``None``."""

    sex: str | None = None
    age: str | None = None


def _date(text: object) -> date | None:
    value = str(text or "").strip()
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _age(age: object, birth: object, study: object) -> str | None:
    text = str(age or "").strip().upper()
    # Age String: nnnD, nnnW, nnnM or nnnY (PS3.5 6.2).
    if len(text) == 4 and text[:3].isdigit() and text[3] in _AGE_UNITS:
        return f"{int(text[:3])} {_AGE_UNITS[text[3]]}"
    born, seen = _date(birth), _date(study)
    if born is None or seen is None or seen < born:
        return None
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{years} y"


@lru_cache(maxsize=4096)
def _read(path: str) -> Demographics:
    import pydicom  # only when a DICOM file is asked about

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception as exc:  # an unreadable header only costs the column
        logger.debug("no demographics from %s: %s", path, exc)
        return Demographics()
    sex = _SEX.get(str(ds.get("PatientSex") or "").strip().upper())
    return Demographics(sex, _age(ds.get("PatientAge"), ds.get("PatientBirthDate"), ds.get("StudyDate")))


def dicom_demographics(path: Path, media_type: str) -> Demographics:
    """Sex and age from the header of the stored file at ``path`` (``Demographics()`` when it is not
    DICOM or says nothing)."""
    if media_type != "application/dicom" or not path.is_file():
        return Demographics()
    return _read(str(path))
