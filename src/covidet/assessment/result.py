"""What triage returns (:class:`TriageResult`) and how results compare: priority order, alert,
change of priority. Pure Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from covidet.domain import Priority, VitalSign

__all__ = ["TriageResult", "as_utc", "is_alert", "priority_changed", "priority_rank"]

_RANK = {Priority.ROUTINE: 0, Priority.HIGH: 1, Priority.URGENT: 2}


def priority_rank(priority: Priority | str) -> int:
    """0 routine, 1 high, 2 urgent: sort key of a worklist (descending)."""
    return _RANK[Priority(priority)]


@dataclass(frozen=True)
class TriageResult:
    """Outcome of :func:`covidet.assessment.triage.triage`.

    ``reasons`` are human-readable, most important first, and contain no relative times, so the same
    inputs give the same text on a later re-triage. ``news2_scores`` maps each measured parameter (a
    :class:`VitalSign` attribute name) to its NEWS2 score; ``disease_probability`` is
    ``P(covid19) + P(pneumonia)`` (``None`` without an assessment).
    """

    priority: Priority
    reasons: list[str]
    news2_partial: int | None
    vitals_used: list[VitalSign]
    rule: str
    news2_scores: dict[str, int] = field(default_factory=dict)
    disease_probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict; keys are the field names, times ISO 8601 UTC."""
        return {
            "priority": str(self.priority),
            "reasons": list(self.reasons),
            "news2_partial": self.news2_partial,
            "vitals_used": [_vital_to_dict(v) for v in self.vitals_used],
            "rule": self.rule,
            "news2_scores": dict(self.news2_scores),
            "disease_probability": self.disease_probability,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string (UTF-8 text, ``≤`` kept as is)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)


def _vital_to_dict(v: VitalSign) -> dict[str, Any]:
    return {
        "patient_id": v.patient_id,
        "measured_at": as_utc(v.measured_at).isoformat(),
        "spo2_percent": v.spo2_percent,
        "temperature_c": v.temperature_c,
        "heart_rate_per_min": v.heart_rate_per_min,
        "respiratory_rate_per_min": v.respiratory_rate_per_min,
        "systolic_bp_mmhg": v.systolic_bp_mmhg,
        "extra": dict(v.extra),
    }


def is_alert(result: TriageResult) -> bool:
    """An urgent result raises an alert."""
    return result.priority is Priority.URGENT


def priority_changed(old: TriageResult | None, new: TriageResult) -> bool:
    """Whether the priority differs from the previous result; a first result (``old is None``) is a
    change, so a first triage that is urgent raises its alert."""
    return old is None or old.priority != new.priority


def as_utc(t: datetime) -> datetime:
    """Aware UTC datetime; naive ones are UTC by the project's convention."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
