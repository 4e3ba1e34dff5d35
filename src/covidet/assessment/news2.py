"""NEWS2 scoring of one vital-sign value: the bands of the Royal College of Physicians' chart
(*National Early Warning Score (NEWS) 2*, 2017, chart 1; SpO2 scale 1), half-up rounding to the
chart's resolution, and the band text the triage reasons quote.

The chart itself, and why values are rounded, is in :mod:`covidet.assessment.triage`'s docstring and
``docs/triage.md``; the band edges are fields of
:class:`~covidet.assessment.thresholds.TriageThresholds`. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the thresholds import this module to validate their band edges
    from covidet.assessment.thresholds import TriageThresholds

__all__ = ["News2Parameter", "news2_parameters"]


@dataclass(frozen=True, slots=True)
class News2Parameter:
    """One NEWS2 parameter: the VitalSign attribute, how to print it, and its bands.

    ``low`` is ``(max, score)`` ascending (value ≤ max scores score, first match); ``high`` is
    ``(min, score)`` ascending (value ≥ min, last match); between them the score is 0.
    """

    key: str
    name: str
    unit: str  # after the value: "91%", "26/min"
    band_unit: str  # after a band edge: "≤ 91%", "≥ 25" (rates print bare, as charted)
    decimals: int
    low: tuple[tuple[float, int], ...]
    high: tuple[tuple[float, int], ...]

    @property
    def resolution(self) -> float:
        return 10.0**-self.decimals

    def round(self, value: float) -> float:
        """Half-up rounding to the chart resolution (``round`` would round 91.5 to 92 but 92.5 to 92)."""
        quantum = Decimal(1).scaleb(-self.decimals)
        return float(Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP))

    def fmt(self, x: float) -> str:
        return f"{x:.{self.decimals}f}"

    def score(self, value: float) -> tuple[int, str]:
        """NEWS2 score of a value (rounded first) and the band it fell in, as text ("92–93%")."""
        v = self.round(value)
        res = self.resolution
        below: float | None = None  # upper edge of the band below, exclusive
        for edge, score in self.low:
            if v <= edge:
                return score, self._band(None if below is None else below + res, edge)
            below = edge
        for i in range(len(self.high) - 1, -1, -1):
            edge, score = self.high[i]
            if v >= edge:
                top = self.high[i + 1][0] - res if i + 1 < len(self.high) else None
                return score, self._band(edge, top)
        return 0, self._band(
            None if below is None else below + res, self.high[0][0] - res if self.high else None
        )

    def _band(self, lo: float | None, hi: float | None) -> str:
        """Inclusive band ``[lo, hi]`` in chart values: "≤ 91%", "92–93%", "≥ 96%"."""
        if lo is None and hi is not None:
            return f"≤ {self.fmt(hi)}{self.band_unit}"
        if hi is None and lo is not None:
            return f"≥ {self.fmt(lo)}{self.band_unit}"
        if lo is None or hi is None:
            return "any value"
        return f"{self.fmt(lo)}–{self.fmt(hi)}{self.band_unit}"

    def value_text(self, value: float) -> str:
        return f"{self.name} {self.fmt(self.round(value))}{self.unit}"


def news2_parameters(t: TriageThresholds) -> tuple[News2Parameter, ...]:
    """The five NEWS2 parameters the sensors measure, in reporting order (respiratory first)."""
    return (
        News2Parameter(
            "spo2_percent",
            "SpO2",
            "%",
            "%",
            0,
            ((t.spo2_score3_max, 3), (t.spo2_score2_max, 2), (t.spo2_score1_max, 1)),
            (),
        ),
        News2Parameter(
            "respiratory_rate_per_min",
            "respiratory rate",
            "/min",
            "",
            0,
            ((t.resp_rate_score3_max, 3), (t.resp_rate_score1_max, 1)),
            ((t.resp_rate_score2_min, 2), (t.resp_rate_score3_min, 3)),
        ),
        News2Parameter(
            "temperature_c",
            "temperature",
            " °C",
            " °C",
            1,
            ((t.temperature_score3_max, 3), (t.temperature_score1_max, 1)),
            ((t.temperature_score1_min, 1), (t.temperature_score2_min, 2)),
        ),
        News2Parameter(
            "heart_rate_per_min",
            "heart rate",
            "/min",
            "",
            0,
            ((t.heart_rate_score3_max, 3), (t.heart_rate_score1_max, 1)),
            ((t.heart_rate_score1_min, 1), (t.heart_rate_score2_min, 2), (t.heart_rate_score3_min, 3)),
        ),
        News2Parameter(
            "systolic_bp_mmhg",
            "systolic BP",
            " mmHg",
            " mmHg",
            0,
            ((t.systolic_bp_score3_max, 3), (t.systolic_bp_score2_max, 2), (t.systolic_bp_score1_max, 1)),
            ((t.systolic_bp_score3_min, 3),),
        ),
    )
