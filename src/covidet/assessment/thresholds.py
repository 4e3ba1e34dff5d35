"""The numbers of triage (:class:`TriageThresholds`): the look-back window, the NEWS2 band edges and
clinical-response levels, and the image probability thresholds, each with its unit and source.

The rules that use them are in :mod:`covidet.assessment.triage`; the settings expose them as
``COVIDET_TRIAGE_THRESHOLDS`` (``docs/triage.md``). Pure Python.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from covidet.assessment.news2 import news2_parameters

__all__ = ["DEFAULT_THRESHOLDS", "TriageThresholds"]

_NEWS2 = "RCP NEWS2 2017 chart 1"


def _at_or_below(edge: float, unit: str, score: int) -> Any:
    """A NEWS2 band edge (default ``edge``, in ``unit``) at or below which the parameter scores ``score``."""
    return Field(edge, description=f"{unit} at or below which NEWS2 scores {score} ({_NEWS2})")


def _at_or_above(edge: float, unit: str, score: int) -> Any:
    """A NEWS2 band edge (default ``edge``, in ``unit``) at or above which the parameter scores ``score``."""
    return Field(edge, description=f"{unit} at or above which NEWS2 scores {score} ({_NEWS2})")


class TriageThresholds(BaseModel):
    """Every number triage uses, with its unit and source. Field names are flat snake_case so they can
    become ``COVIDET_TRIAGE_*`` settings; NEWS2 band edges are inclusive, in the chart's resolution."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- time ---------------------------------------------------------------------------------------
    window_minutes: float = Field(30.0, gt=0, description="look-back window of vital signs, minutes")
    clock_skew_seconds: float = Field(
        60.0, ge=0, description="readings up to this many seconds after `now` still count (device clocks)"
    )
    # --- NEWS2 SpO2 scale 1 (%) ----------------------------------------------------------------------
    spo2_score3_max: float = _at_or_below(91, "SpO2 %", 3)
    spo2_score2_max: float = _at_or_below(93, "SpO2 %", 2)
    spo2_score1_max: float = _at_or_below(95, "SpO2 %", 1)
    # --- NEWS2 respiratory rate (breaths/min) -------------------------------------------------------
    resp_rate_score3_max: float = _at_or_below(8, "breaths/min", 3)
    resp_rate_score1_max: float = _at_or_below(11, "breaths/min", 1)
    resp_rate_score2_min: float = _at_or_above(21, "breaths/min", 2)
    resp_rate_score3_min: float = _at_or_above(25, "breaths/min", 3)
    # --- NEWS2 temperature (°C) ---------------------------------------------------------------------
    temperature_score3_max: float = _at_or_below(35.0, "°C", 3)
    temperature_score1_max: float = _at_or_below(36.0, "°C", 1)
    temperature_score1_min: float = _at_or_above(38.1, "°C", 1)
    temperature_score2_min: float = _at_or_above(39.1, "°C", 2)
    # --- NEWS2 heart rate (beats/min) ---------------------------------------------------------------
    heart_rate_score3_max: float = _at_or_below(40, "beats/min", 3)
    heart_rate_score1_max: float = _at_or_below(50, "beats/min", 1)
    heart_rate_score1_min: float = _at_or_above(91, "beats/min", 1)
    heart_rate_score2_min: float = _at_or_above(111, "beats/min", 2)
    heart_rate_score3_min: float = _at_or_above(131, "beats/min", 3)
    # --- NEWS2 systolic blood pressure (mmHg) -------------------------------------------------------
    systolic_bp_score3_max: float = _at_or_below(90, "mmHg", 3)
    systolic_bp_score2_max: float = _at_or_below(100, "mmHg", 2)
    systolic_bp_score1_max: float = _at_or_below(110, "mmHg", 1)
    systolic_bp_score3_min: float = _at_or_above(220, "mmHg", 3)
    # --- NEWS2 clinical response --------------------------------------------------------------------
    news2_emergency_min: int = Field(
        7, ge=1, description="partial NEWS2 at or above which the response is emergency (RCP NEWS2 2017)"
    )
    news2_urgent_min: int = Field(
        5, ge=1, description="partial NEWS2 at or above which the response is urgent (RCP NEWS2 2017)"
    )
    # --- image ----------------------------------------------------------------------------------------
    positive_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="disease probability P(covid19)+P(pneumonia) at or above which the image is positive "
        "(same value as the detector's default decision threshold, covidet.detection.decision)",
    )
    strong_threshold: float = Field(
        0.9,
        ge=0,
        le=1,
        description="disease probability at or above which the image is strongly positive (rule H3); "
        "project choice, to be revisited with the calibrated model",
    )

    @model_validator(mode="after")
    def _check_order(self) -> Self:
        if self.strong_threshold < self.positive_threshold:
            raise ValueError("strong_threshold must be >= positive_threshold")
        if self.news2_emergency_min < self.news2_urgent_min:
            raise ValueError("news2_emergency_min must be >= news2_urgent_min")
        for spec in news2_parameters(self):
            lows = [edge for edge, _ in spec.low]
            highs = [edge for edge, _ in spec.high]
            if lows != sorted(set(lows)) or highs != sorted(set(highs)):
                raise ValueError(f"{spec.name} band edges must be strictly increasing")
            if lows and highs and lows[-1] >= highs[0]:
                raise ValueError(f"{spec.name}: low bands overlap high bands")
        return self


#: The thresholds of the tables in :mod:`covidet.assessment.triage` (and docs/triage.md).
DEFAULT_THRESHOLDS = TriageThresholds()
