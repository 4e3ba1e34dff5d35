"""Small vital-sign trend charts for the viewer, computed here and drawn as inline SVG by the template
(no JavaScript, no chart library: the page works with scripts off and prints as it looks)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from covidet.assessment.triage import news2_of_reading

if TYPE_CHECKING:
    from covidet.store.models import VitalSignRecord
    from covidet.store.worklist_queries import VitalValue

__all__ = ["CHART_HEIGHT", "CHART_WIDTH", "SERIES", "TrendChart", "trend_charts"]

CHART_WIDTH = 240
CHART_HEIGHT = 44
_PAD = 4.0

#: (column of VitalSignRecord, title, unit), in the order NEWS2 charts them.
SERIES: tuple[tuple[str, str, str], ...] = (
    ("spo2_percent", "SpO2", "%"),
    ("respiratory_rate_per_min", "Resp. rate", "/min"),
    ("heart_rate_per_min", "Heart rate", "/min"),
    ("temperature_c", "Temperature", "°C"),
    ("systolic_bp_mmhg", "Systolic BP", "mmHg"),
)


@dataclass(frozen=True, slots=True)
class TrendChart:
    """One parameter's trend: ``points`` is an SVG polyline in a CHART_WIDTH x CHART_HEIGHT box,
    ``dots`` the (x, y) of each reading; ``latest`` and ``abnormal`` (NEWS2 score > 0) for the label."""

    parameter: str
    title: str
    unit: str
    points: str
    dots: list[tuple[float, float]]
    count: int
    minimum: float
    maximum: float
    latest: float
    latest_at: datetime
    news2: int | None
    abnormal: bool

    @property
    def description(self) -> str:
        """What the chart shows, for screen readers."""
        return (
            f"{self.title}: {self.count} reading(s), from {self.minimum:g} to {self.maximum:g} {self.unit}; "
            f"latest {self.latest:g} {self.unit}" + (" (abnormal)" if self.abnormal else "")
        )


def trend_charts(readings: Sequence[VitalSignRecord], latest: Mapping[str, VitalValue]) -> list[TrendChart]:
    """Charts of ``readings`` (VitalSignRecord rows, oldest first) for each parameter that has values;
    ``latest`` is :func:`covidet.store.review_queries.latest_vitals` of the patient (scored here with
    :func:`covidet.assessment.triage.news2_of_reading`)."""
    charts: list[TrendChart] = []
    for parameter, title, unit in SERIES:
        values = [
            (r.measured_at, float(getattr(r, parameter)))
            for r in readings
            if getattr(r, parameter) is not None and math.isfinite(float(getattr(r, parameter)))
        ]
        if not values:
            continue
        times = [t.timestamp() for t, _ in values]
        numbers = [v for _, v in values]
        t0, t1 = min(times), max(times)
        low, high = min(numbers), max(numbers)
        span_t = (t1 - t0) or 1.0
        span_v = (high - low) or 1.0
        width, height = CHART_WIDTH - 2 * _PAD, CHART_HEIGHT - 2 * _PAD
        dots = [
            (
                round(_PAD + (t - t0) / span_t * width if t1 > t0 else CHART_WIDTH / 2, 1),
                round(_PAD + (1 - (v - low) / span_v) * height if high > low else CHART_HEIGHT / 2, 1),
            )
            for t, v in zip(times, numbers, strict=True)
        ]
        flag = latest.get(parameter)
        score = news2_of_reading(parameter, flag.value) if flag is not None else None
        charts.append(
            TrendChart(
                parameter=parameter,
                title=title,
                unit=unit,
                points=" ".join(f"{x},{y}" for x, y in dots),
                dots=dots,
                count=len(values),
                minimum=low,
                maximum=high,
                latest=numbers[-1],
                latest_at=values[-1][0],
                news2=score,
                abnormal=bool(score),
            )
        )
    return charts
