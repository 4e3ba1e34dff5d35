"""Schemas and parameter types shared by the routers.

Each router defines its own resource schemas in families (``XCreate`` / ``XUpdate`` / ``XPublic``);
this module holds what they share: the error body, the pagination parameters and envelope, bounded
id and text types, and the answers every authenticated route documents. Bounds matter for more than
tidiness: an id beyond 32 bits or a NUL character would reach PostgreSQL as an error (a 500), so the
API refuses them first, as 422s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import HTTPException, Path, Query, status
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StringConstraints

from covidet.assessment.triage import news2_of_reading
from covidet.store.worklist_queries import AiSummary, VitalValue

if TYPE_CHECKING:
    from covidet.store.models import Patient

__all__ = [
    "AUTH_ERRORS",
    "JSON_NUMBER",
    "MAX_ID",
    "MAX_OFFSET",
    "NO_CONTROL_PATTERN",
    "UNSAFE_ERRORS",
    "VITAL_UNITS",
    "AiPublic",
    "ErrorPublic",
    "IdPath",
    "IsoDateTime",
    "Limit",
    "Offset",
    "OpenApiResponses",
    "OptionalIdQuery",
    "PageMeta",
    "PatientRef",
    "ReviewStatePublic",
    "SearchText",
    "TextBody",
    "VitalValuePublic",
    "ai_public",
    "as_utc",
    "error_responses",
    "vitals_public",
]

#: Largest id accepted anywhere: ids are 32-bit integers in PostgreSQL.
MAX_ID = 2**31 - 1
#: Largest pagination offset (beyond it a client is scanning, not paging).
MAX_OFFSET = 1_000_000
#: One line of printable text: no control characters (NUL, in particular, which PostgreSQL refuses).
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"
#: A route's extra OpenAPI ``responses`` (FastAPI's ``responses=``): status code -> model/description/content.
OpenApiResponses = dict[int | str, dict[str, object]]


class ErrorPublic(BaseModel):
    """Every refusal: ``detail`` says what was wrong in one line. Request validation errors (422) also
    list each problem in ``errors`` (FastAPI's ``loc`` / ``msg`` / ``type`` items)."""

    detail: str
    errors: list[dict[str, object]] | None = None


class PageMeta(BaseModel):
    """The envelope of every list: ``total`` items match the filters; this page holds those from
    ``offset`` on, at most ``limit``."""

    total: int = Field(ge=0)
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)


class PatientRef(BaseModel):
    """A patient as other resources name it: covidet's id, the key the devices sent, the name."""

    id: int
    patient_key: str
    name: str | None = None

    @classmethod
    def of(cls, patient: Patient) -> PatientRef:
        """The reference to a stored patient (read inside its session)."""
        return cls(id=patient.id, patient_key=patient.patient_key, name=patient.name)


IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="covidet id (opaque positive integer)")]
OptionalIdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=200, description="page size, 1-200")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
SearchText = Annotated[
    str | None,
    Query(min_length=1, max_length=64, pattern=NO_CONTROL_PATTERN, description="case-insensitive substring"),
]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


#: Free text in a request body (a review comment): any characters but NUL, at most 10,000.
TextBody = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(_no_nul)]


def _iso_text(value: object) -> object:
    # Pydantic would also take a number (or a numeric string, such as a query's "0.5") as seconds since
    # 1970; the OpenAPI document promises an ISO 8601 date-time, so nothing else is accepted.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-11-28T09:30:00Z")
    return value


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
#: A time in a query: ISO 8601 text only (a date alone is midnight); see :func:`as_utc`.
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text)]


def _json_number(value: object) -> object:
    # The JSON Schema of an integer or number field admits JSON numbers only (3 and 3.0 alike), but
    # pydantic's lax mode also takes "3" and true; strict mode would refuse 3.0, which the schema allows.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a JSON number")
    return value


#: For a body's integer or number, last in its ``Annotated`` (after the ``Field`` bounds, which then
#: stay in the OpenAPI document): a JSON number only (an integer may be written 3.0), never a string
#: or a boolean.
JSON_NUMBER = BeforeValidator(_json_number)


def as_utc(moment: datetime | None, name: str) -> datetime | None:
    """A query-parameter time as aware UTC (naive times are taken as UTC, as everywhere in covidet).

    Raises:
        HTTPException: 422 for a time that cannot be expressed in UTC (year 1 with a positive offset).
    """
    if moment is None:
        return None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{name}: time out of range"
        ) from None


def error_responses(*codes: int) -> OpenApiResponses:
    """OpenAPI ``responses`` for these error codes, each with the :class:`ErrorPublic` body."""
    descriptions = {
        400: "Malformed request",
        401: "Not authenticated: no, an unknown, an expired or a revoked credential",
        403: "Authenticated, but not allowed: wrong role, missing CSRF token, another user's object",
        404: "No such object",
        409: "Conflicts with the object's state (a signed review, a taken name)",
        413: "Too large",
        415: "Unsupported media type",
        422: "Invalid parameters or body",
        429: "Too many failed sign-ins: try again after Retry-After seconds",
    }
    return {code: {"model": ErrorPublic, "description": descriptions[code]} for code in codes}


#: What every authenticated route may answer besides its own results.
AUTH_ERRORS = error_responses(401, 403, 422)
#: ... and every authenticated POST, PUT, PATCH or DELETE: a body that cannot be parsed is a 400 (the
#: CSRF check reads the form of a cookie-authenticated request, whatever the route's own body); a body
#: over ``max_body_bytes`` is a 413 (covidet.api.limits).
UNSAFE_ERRORS = error_responses(400, 401, 403, 413, 422)


# ------------------------------------------------------------- summaries shared by several resources

#: Units of the vital-sign columns, for display.
VITAL_UNITS = {
    "spo2_percent": "%",
    "respiratory_rate_per_min": "/min",
    "temperature_c": "°C",
    "heart_rate_per_min": "/min",
    "systolic_bp_mmhg": "mmHg",
}


class AiPublic(BaseModel):
    """The newest successful AI analysis of an image. Preliminary, unreviewed, not for clinical use."""

    inference_id: int
    label: str | None = Field(description="image-level decision: covid19, pneumonia or normal")
    score: float | None = Field(
        None,
        description="AI score of the finding: the image-level score of `label` (0-1, from the box "
        "scores by the decision rule), the number the triage reasons, the viewer and the reports show; "
        "not a calibrated probability",
    )
    top_score: float | None = Field(description="highest single box score; null without findings")
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    finished_at: datetime | None


class VitalValuePublic(BaseModel):
    """The latest value of one vital sign and its NEWS2 score (0-3); ``abnormal`` when the score > 0."""

    value: float
    unit: str
    measured_at: datetime
    news2: int | None
    abnormal: bool


class ReviewStatePublic(BaseModel):
    """``signed`` when a signed review exists (the newest is named), ``draft`` when only drafts do,
    ``none`` otherwise."""

    state: str
    review_id: int | None = None
    reviewer: str | None = None
    label: str | None = None
    signed_at: datetime | None = None


def ai_public(summary: AiSummary | None) -> AiPublic | None:
    """:class:`AiPublic` of a :class:`covidet.store.review_queries.AiSummary` (or ``None``)."""
    if summary is None:
        return None
    return AiPublic(
        inference_id=summary.inference_id,
        label=summary.label,
        score=summary.probabilities.get(summary.label) if summary.label else None,
        top_score=summary.top_score,
        probabilities=summary.probabilities,
        model_name=summary.model_name,
        model_version=summary.model_version,
        finished_at=summary.finished_at,
    )


def vitals_public(values: Mapping[str, VitalValue]) -> dict[str, VitalValuePublic]:
    """``{parameter: VitalValuePublic}`` of :func:`covidet.store.review_queries.latest_vitals` values."""
    public = {}
    for name, v in values.items():
        score = news2_of_reading(name, v.value)
        public[name] = VitalValuePublic(
            value=v.value,
            unit=VITAL_UNITS[name],
            measured_at=v.measured_at,
            news2=score,
            abnormal=bool(score),
        )
    return public
