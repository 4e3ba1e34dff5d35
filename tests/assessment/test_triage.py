"""Triage: every row of the rule table at its boundaries, the window, the reasons, monotonicity."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

import covidet.assessment.triage as triage_module
from covidet.assessment.triage import (
    DEFAULT_THRESHOLDS,
    TriageResult,
    TriageThresholds,
    is_alert,
    news2_score,
    priority_changed,
    priority_rank,
    triage,
)
from covidet.detection.decision import assess
from covidet.domain import Assessment, Box, Finding, Label, Priority, VitalSign

REPO_ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WIDTH = 1000  # image width in pixels: the midline is x = 500


def vital(minutes_ago: float = 5, **values: float) -> VitalSign:
    return VitalSign("patient-1", NOW - timedelta(minutes=minutes_ago), **values)


def image(disease: float, *, label: Label | None = None, pneumonia: float = 0.0) -> Assessment:
    """An assessment whose disease probability is ``disease + pneumonia``."""
    covid = disease
    if label is None:
        label = Label.COVID19 if covid + pneumonia >= 0.5 else Label.NORMAL
    return Assessment(
        label=label,
        probabilities={
            Label.COVID19: covid,
            Label.PNEUMONIA: pneumonia,
            Label.NORMAL: 1.0 - covid - pneumonia,
        },
        threshold=0.5,
    )


NEGATIVE = image(0.05)
POSITIVE = image(0.6)
STRONG = image(0.95)


# ------------------------------------------------------------------------------------ NEWS2 bands

BANDS = [
    # (parameter, value, NEWS2 score): every edge of RCP NEWS2 2017 chart 1, both sides
    ("spo2_percent", 91, 3),
    ("spo2_percent", 92, 2),
    ("spo2_percent", 93, 2),
    ("spo2_percent", 94, 1),
    ("spo2_percent", 95, 1),
    ("spo2_percent", 96, 0),
    ("spo2_percent", 100, 0),
    ("respiratory_rate_per_min", 8, 3),
    ("respiratory_rate_per_min", 9, 1),
    ("respiratory_rate_per_min", 11, 1),
    ("respiratory_rate_per_min", 12, 0),
    ("respiratory_rate_per_min", 20, 0),
    ("respiratory_rate_per_min", 21, 2),
    ("respiratory_rate_per_min", 24, 2),
    ("respiratory_rate_per_min", 25, 3),
    ("temperature_c", 35.0, 3),
    ("temperature_c", 35.1, 1),
    ("temperature_c", 36.0, 1),
    ("temperature_c", 36.1, 0),
    ("temperature_c", 38.0, 0),
    ("temperature_c", 38.1, 1),
    ("temperature_c", 39.0, 1),
    ("temperature_c", 39.1, 2),
    ("heart_rate_per_min", 40, 3),
    ("heart_rate_per_min", 41, 1),
    ("heart_rate_per_min", 50, 1),
    ("heart_rate_per_min", 51, 0),
    ("heart_rate_per_min", 90, 0),
    ("heart_rate_per_min", 91, 1),
    ("heart_rate_per_min", 110, 1),
    ("heart_rate_per_min", 111, 2),
    ("heart_rate_per_min", 130, 2),
    ("heart_rate_per_min", 131, 3),
    ("systolic_bp_mmhg", 90, 3),
    ("systolic_bp_mmhg", 91, 2),
    ("systolic_bp_mmhg", 100, 2),
    ("systolic_bp_mmhg", 101, 1),
    ("systolic_bp_mmhg", 110, 1),
    ("systolic_bp_mmhg", 111, 0),
    ("systolic_bp_mmhg", 219, 0),
    ("systolic_bp_mmhg", 220, 3),
]


@pytest.mark.parametrize(("parameter", "value", "score"), BANDS)
def test_news2_bands(parameter: str, value: float, score: int) -> None:
    assert news2_score(parameter, value) == score
    result = triage(None, [], [vital(**{parameter: value})], now=NOW)
    assert result.news2_scores == {parameter: score}
    assert result.news2_partial == score


@pytest.mark.parametrize(
    ("parameter", "value", "score"),
    [
        ("spo2_percent", 91.4, 3),  # charted as 91
        ("spo2_percent", 91.5, 2),  # charted as 92 (half up)
        ("temperature_c", 38.04, 0),
        ("temperature_c", 38.05, 1),
        ("respiratory_rate_per_min", 24.5, 3),
    ],
)
def test_values_are_rounded_half_up_to_the_chart_resolution(parameter: str, value: float, score: int) -> None:
    assert news2_score(parameter, value) == score


def test_unknown_parameter_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a NEWS2 parameter"):
        news2_score("glucose", 5.0)


# ------------------------------------------------------------------------------------ the table


def test_u1_aggregate_7_is_urgent_6_is_high() -> None:
    # 2 + 2 + 2 + 1 = 7 with no single 3 and no image: only the aggregate decides
    seven = vital(spo2_percent=92, respiratory_rate_per_min=21, temperature_c=39.1, heart_rate_per_min=91)
    six = vital(spo2_percent=92, respiratory_rate_per_min=21, temperature_c=39.1, heart_rate_per_min=90)
    r7 = triage(None, [], [seven], now=NOW)
    assert (r7.rule, r7.priority, r7.news2_partial) == ("U1", Priority.URGENT, 7)
    assert r7.reasons[0].startswith("partial NEWS2 7 (≥ 7: emergency response) over 4 of 5 parameters")
    r6 = triage(None, [], [six], now=NOW)
    assert (r6.rule, r6.priority, r6.news2_partial) == ("H1", Priority.HIGH, 6)
    assert r6.reasons[0].startswith("partial NEWS2 6 (5–6: urgent response)")


def test_u1_wins_over_a_negative_image() -> None:
    seven = vital(spo2_percent=91, respiratory_rate_per_min=25, heart_rate_per_min=91)
    result = triage(NEGATIVE, [], [seven], now=NOW)
    assert (result.rule, result.priority) == ("U1", Priority.URGENT)


def test_u2_positive_image_and_a_single_3() -> None:
    r91 = triage(POSITIVE, [], [vital(spo2_percent=91)], now=NOW)
    assert (r91.rule, r91.priority) == ("U2", Priority.URGENT)
    r92 = triage(POSITIVE, [], [vital(spo2_percent=92)], now=NOW)
    assert (r92.rule, r92.priority) == ("H2", Priority.HIGH)


def test_u2_positive_image_and_aggregate_5() -> None:
    five = vital(spo2_percent=92, respiratory_rate_per_min=21, heart_rate_per_min=91)  # 2 + 2 + 1
    four = vital(spo2_percent=92, respiratory_rate_per_min=21, heart_rate_per_min=90)  # 2 + 2 + 0
    assert triage(POSITIVE, [], [five], now=NOW).rule == "U2"
    assert triage(POSITIVE, [], [four], now=NOW).rule == "H2"


def test_h1_single_3_or_aggregate_5_without_positive_image() -> None:
    rr25 = triage(NEGATIVE, [], [vital(respiratory_rate_per_min=25)], now=NOW)
    assert (rr25.rule, rr25.priority) == ("H1", Priority.HIGH)
    rr24 = triage(NEGATIVE, [], [vital(respiratory_rate_per_min=24)], now=NOW)
    assert (rr24.rule, rr24.priority) == ("R1", Priority.ROUTINE)
    five = vital(spo2_percent=92, respiratory_rate_per_min=21, heart_rate_per_min=91)
    assert triage(NEGATIVE, [], [five], now=NOW).rule == "H1"
    four = vital(spo2_percent=92, respiratory_rate_per_min=21, heart_rate_per_min=90)
    assert triage(NEGATIVE, [], [four], now=NOW).rule == "R1"


def test_h2_positive_threshold_boundary() -> None:
    at = triage(image(0.5, label=Label.NORMAL), [], [], now=NOW)
    assert (at.rule, at.priority) == ("H2", Priority.HIGH)
    below = triage(image(0.49, label=Label.NORMAL), [], [], now=NOW)
    assert (below.rule, below.priority) == ("R1", Priority.ROUTINE)


def test_h2_detector_decision_alone_makes_the_image_positive() -> None:
    # a strong normal box can pull P(disease) under 0.5 while the decision rule says covid19
    result = triage(image(0.4, label=Label.COVID19), [], [], now=NOW)
    assert result.rule == "H2"
    assert "positive by the detector's decision" in result.reasons[0]


def test_h3_strong_threshold_boundary_even_with_no_vitals() -> None:
    strong = triage(image(0.9), [], [], now=NOW)
    assert (strong.rule, strong.priority) == ("H3", Priority.HIGH)
    assert strong.reasons == [
        "covid19 0.90 (strongly positive: ≥ 0.90)",
        "no vital signs in the last 30 min",
    ]
    assert triage(image(0.89), [], [], now=NOW).rule == "H2"


def test_h3_with_normal_vitals_and_u2_with_strong_image() -> None:
    normal = vital(spo2_percent=98, respiratory_rate_per_min=16)
    assert triage(STRONG, [], [normal], now=NOW).rule == "H3"
    assert triage(STRONG, [], [vital(spo2_percent=90)], now=NOW).rule == "U2"


def test_pooled_disease_probability_names_both_classes() -> None:
    result = triage(assess([1, 2], [0.8, 0.6]), [], [], now=NOW)
    assert result.disease_probability == pytest.approx(1.4 / 1.6, abs=1e-5)
    assert result.reasons[0] == "covid19 0.50, pneumonia 0.37 (disease score 0.87; positive: ≥ 0.50)"


def test_r1_normal_vitals_and_negative_image() -> None:
    result = triage(
        NEGATIVE,
        [],
        [vital(spo2_percent=97, respiratory_rate_per_min=16, temperature_c=37.0, heart_rate_per_min=70)],
        now=NOW,
    )
    assert (result.rule, result.priority, result.news2_partial) == ("R1", Priority.ROUTINE, 0)
    assert result.reasons == [
        "partial NEWS2 0 over 4 of 5 parameters (SpO2, respiratory rate, temperature, heart rate) "
        "in the last 30 min",
        "image negative: AI disease score 0.05 (< 0.50)",
        "not measured in the last 30 min: systolic BP",
    ]


# ------------------------------------------------------------------------------ missing inputs


def test_no_vitals_the_image_decides() -> None:
    result = triage(POSITIVE, [], [], now=NOW)
    assert (result.rule, result.news2_partial, result.vitals_used) == ("H2", None, [])
    assert result.news2_scores == {}
    assert "no vital signs in the last 30 min" in result.reasons
    assert triage(NEGATIVE, [], [], now=NOW).priority is Priority.ROUTINE


def test_a_reading_without_values_is_no_vitals() -> None:
    result = triage(NEGATIVE, [], [vital(), vital(spo2_percent=float("nan"))], now=NOW)
    assert result.news2_partial is None
    assert "no vital signs in the last 30 min" in result.reasons


def test_no_assessment_vitals_alone_decide() -> None:
    boxes = [Finding(Box(100, 100, 400, 600), Label.COVID19, 0.99)]  # ignored without an assessment
    result = triage(None, boxes, [vital(spo2_percent=91)], now=NOW, image_width=WIDTH)
    assert (result.rule, result.priority) == ("H1", Priority.HIGH)
    assert result.disease_probability is None
    assert result.reasons == [
        "SpO2 91% (≤ 91%, NEWS2 3) in the last 30 min",
        "partial NEWS2 3 over 1 of 5 parameters (SpO2) in the last 30 min",
        "image not analysed yet",
        "not measured in the last 30 min: respiratory rate, temperature, heart rate, systolic BP",
    ]
    nothing = triage(None, [], [], now=NOW)
    assert (nothing.rule, nothing.reasons) == (
        "R1",
        ["image not analysed yet", "no vital signs in the last 30 min"],
    )


# ------------------------------------------------------------------------------------ the window


def test_window_edges() -> None:
    old = triage(NEGATIVE, [], [vital(31, spo2_percent=85)], now=NOW)
    assert old.priority is Priority.ROUTINE and old.news2_partial is None
    edge = triage(NEGATIVE, [], [vital(30, spo2_percent=85)], now=NOW)
    assert edge.priority is Priority.HIGH and edge.news2_partial == 3


def test_future_readings_beyond_the_clock_skew_are_ignored() -> None:
    skewed = triage(NEGATIVE, [], [vital(-0.5, spo2_percent=85)], now=NOW)  # 30 s ahead: counts
    assert skewed.news2_partial == 3
    future = triage(NEGATIVE, [], [vital(-5, spo2_percent=85)], now=NOW)
    assert future.news2_partial is None
    assert "ignored 1 vital-sign reading(s) dated more than 60 s in the future" in future.reasons


def test_a_longer_window_is_configurable_and_named_in_the_reasons() -> None:
    hour = TriageThresholds(window_minutes=60)
    result = triage(NEGATIVE, [], [vital(45, spo2_percent=85)], now=NOW, thresholds=hour)
    assert result.reasons[0] == "SpO2 85% (≤ 91%, NEWS2 3) in the last 60 min"


def test_naive_datetimes_are_utc() -> None:
    naive = VitalSign("patient-1", (NOW - timedelta(minutes=5)).replace(tzinfo=None), spo2_percent=85)
    result = triage(NEGATIVE, [], [naive], now=NOW.replace(tzinfo=None))
    assert result.news2_partial == 3
    assert triage(NEGATIVE, [], [naive], now=NOW).news2_partial == 3


def test_latest_reading_wins_and_the_worse_earlier_one_is_reported() -> None:
    earlier_bad = [vital(20, spo2_percent=85), vital(2, spo2_percent=97)]
    recovered = triage(NEGATIVE, [], earlier_bad, now=NOW)
    assert (recovered.priority, recovered.news2_scores) == (Priority.ROUTINE, {"spo2_percent": 0})
    assert recovered.vitals_used == [earlier_bad[1]]
    assert recovered.reasons[-1] == (
        "SpO2 85% at 11:40 UTC (NEWS2 3) in the last 30 min; latest 97% (NEWS2 0) decides"
    )
    worsened = triage(NEGATIVE, [], [vital(20, spo2_percent=97), vital(2, spo2_percent=85)], now=NOW)
    assert worsened.priority is Priority.HIGH


def test_latest_per_parameter_across_records_and_ties_take_the_worse() -> None:
    a = vital(10, spo2_percent=97, respiratory_rate_per_min=26)
    b = vital(3, spo2_percent=96)
    result = triage(NEGATIVE, [], [b, a], now=NOW)  # input order does not matter
    assert result.news2_scores == {"spo2_percent": 0, "respiratory_rate_per_min": 3}
    assert result.vitals_used == [a, b]  # in time order
    tie = triage(NEGATIVE, [], [vital(2, spo2_percent=97), vital(2, spo2_percent=90)], now=NOW)
    assert tie.news2_scores == {"spo2_percent": 3}


def test_vitals_of_two_patients_are_refused() -> None:
    other = VitalSign("patient-2", NOW, spo2_percent=97)
    with pytest.raises(ValueError, match="more than one patient"):
        triage(None, [], [vital(spo2_percent=97), other], now=NOW)


# ------------------------------------------------------------------------------------ side naming


def covid_box(x1: float, x2: float, score: float = 0.93) -> Finding:
    return Finding(Box(x1, 200, x2, 700), Label.COVID19, score)


@pytest.mark.parametrize(
    ("boxes", "width", "side"),
    [
        ([covid_box(100, 400)], WIDTH, " on the right lung"),  # image's left half = patient's right
        ([covid_box(600, 900)], WIDTH, " on the left lung"),
        ([covid_box(100, 400), covid_box(600, 900)], WIDTH, " in both lungs"),
        ([covid_box(200, 800)], WIDTH, " in both lungs"),  # straddles the midline
        ([covid_box(300, 560)], WIDTH, " on the right lung"),  # only 60 of 260 px across: by centre
        ([covid_box(100, 400)], None, ""),  # no width: no side
        ([covid_box(600, 900, score=0.3)], WIDTH, ""),  # under the detector's threshold
        ([], WIDTH, ""),
    ],
)
def test_side_naming(boxes: list[Finding], width: int | None, side: str) -> None:
    result = triage(image(0.93), boxes, [], now=NOW, image_width=width)
    assert result.reasons[0] == f"covid19 0.93{side} (strongly positive: ≥ 0.90)"


def test_side_prefers_boxes_of_the_named_class() -> None:
    boxes = [covid_box(100, 400), Finding(Box(600, 200, 900, 700), Label.PNEUMONIA, 0.7)]
    result = triage(image(0.93), boxes, [], now=NOW, image_width=WIDTH)
    assert "covid19 0.93 on the right lung" in result.reasons[0]
    pneumonia_only = [Finding(Box(600, 200, 900, 700), Label.PNEUMONIA, 0.7)]
    result = triage(image(0.93), pneumonia_only, [], now=NOW, image_width=WIDTH)
    assert "covid19 0.93 on the left lung" in result.reasons[0]


def test_invalid_image_width() -> None:
    with pytest.raises(ValueError, match="image_width"):
        triage(POSITIVE, [], [], now=NOW, image_width=0)


# ------------------------------------------------------------------------------------ reasons


def test_reasons_are_concrete_and_most_important_first() -> None:
    boxes = [covid_box(100, 400)]
    vitals = [vital(spo2_percent=91, respiratory_rate_per_min=26, temperature_c=37.0)]
    result = triage(image(0.93), boxes, vitals, now=NOW, image_width=WIDTH)
    assert result.rule == "U2"
    assert result.reasons == [
        "covid19 0.93 on the right lung (strongly positive: ≥ 0.90)",
        "partial NEWS2 6 (5–6: urgent response) over 3 of 5 parameters (SpO2, respiratory rate, "
        "temperature) in the last 30 min",
        "SpO2 91% (≤ 91%, NEWS2 3) in the last 30 min",
        "respiratory rate 26/min (≥ 25, NEWS2 3) in the last 30 min",
        "not measured in the last 30 min: heart rate, systolic BP",
    ]


def test_band_texts() -> None:
    vitals = [vital(temperature_c=38.6, heart_rate_per_min=115, systolic_bp_mmhg=95, spo2_percent=93)]
    reasons = triage(None, [], vitals, now=NOW).reasons
    assert "SpO2 93% (92–93%, NEWS2 2) in the last 30 min" in reasons
    assert "heart rate 115/min (111–130, NEWS2 2) in the last 30 min" in reasons
    assert "systolic BP 95 mmHg (91–100 mmHg, NEWS2 2) in the last 30 min" in reasons
    assert "temperature 38.6 °C (38.1–39.0 °C, NEWS2 1) in the last 30 min" in reasons


def test_same_inputs_later_give_the_same_reasons() -> None:
    # the worker stores a new record only when priority or reasons change
    vitals = [vital(10, spo2_percent=85), vital(5, spo2_percent=97), vital(-5, heart_rate_per_min=80)]
    a = triage(POSITIVE, [], vitals, now=NOW)
    b = triage(POSITIVE, [], vitals, now=NOW + timedelta(minutes=1))
    assert a.reasons == b.reasons


# ------------------------------------------------------------------------------------ monotonicity

#: A value inside the NEWS2 0 band of each parameter; moving away from it never lowers the score.
CENTRES = {
    "spo2_percent": 100.0,
    "respiratory_rate_per_min": 16.0,
    "temperature_c": 37.0,
    "heart_rate_per_min": 70.0,
    "systolic_bp_mmhg": 160.0,
}
SPANS = {
    "spo2_percent": 20.0,
    "respiratory_rate_per_min": 14.0,
    "temperature_c": 3.0,
    "heart_rate_per_min": 80.0,
    "systolic_bp_mmhg": 100.0,
}


def test_worse_vitals_or_higher_disease_probability_never_lower_the_priority() -> None:
    rng = random.Random(20260301)
    for _ in range(3000):
        offsets = {k: rng.uniform(-1, 1) * SPANS[k] for k in CENTRES if rng.random() < 0.7}
        offsets["spo2_percent"] = -abs(offsets.get("spo2_percent", 0.0))  # SpO2 is only bad when low
        worse = {k: o * rng.uniform(1, 1.6) for k, o in offsets.items()}
        p = rng.choice([None, rng.random(), rng.choice([0.49, 0.5, 0.89, 0.9])])
        p_worse = None if p is None else min(1.0, p + rng.choice([0.0, rng.uniform(0, 0.5)]))
        before = triage(
            None if p is None else image(p),
            [],
            [vital(**{k: CENTRES[k] + o for k, o in offsets.items()})],
            now=NOW,
        )
        after = triage(
            None if p_worse is None else image(p_worse),
            [],
            [vital(**{k: CENTRES[k] + o for k, o in worse.items()})],
            now=NOW,
        )
        for k, score in before.news2_scores.items():  # the generator really made things worse
            assert after.news2_scores[k] >= score
        assert priority_rank(after.priority) >= priority_rank(before.priority), (before, after)


def test_priority_never_falls_on_the_grid_of_scores_and_probabilities() -> None:
    # each parameter's value for NEWS2 score 0..3 (SpO2 has no 3 on the high side: low values)
    levels = {
        "spo2_percent": [97, 95, 93, 91],
        "respiratory_rate_per_min": [16, 10, 22, 26],
        "heart_rate_per_min": [70, 95, 120, 140],
    }
    probabilities = [None, 0.1, 0.5, 0.9]
    ranks: dict[tuple[int, int, int, int], int] = {}
    for i in range(4):
        for j in range(4):
            for k in range(4):
                for m, p in enumerate(probabilities):
                    v = vital(
                        spo2_percent=levels["spo2_percent"][i],
                        respiratory_rate_per_min=levels["respiratory_rate_per_min"][j],
                        heart_rate_per_min=levels["heart_rate_per_min"][k],
                    )
                    result = triage(None if p is None else image(p), [], [v], now=NOW)
                    ranks[i, j, k, m] = priority_rank(result.priority)
    for key, rank in ranks.items():
        for axis in range(4):
            up = list(key)
            up[axis] += 1
            if up[axis] < 4:
                assert ranks[tuple(up)] >= rank, (key, up)


# ------------------------------------------------------------------------------ result, helpers


def test_to_json_has_the_field_names() -> None:
    result = triage(POSITIVE, [], [vital(spo2_percent=91)], now=NOW)
    data = json.loads(result.to_json())
    assert list(data) == [f.name for f in dataclasses.fields(TriageResult)]
    assert data["priority"] == "urgent" and data["rule"] == "U2" and data["news2_partial"] == 3
    assert data["vitals_used"][0]["measured_at"] == "2026-03-01T11:55:00+00:00"
    assert data["vitals_used"][0]["spo2_percent"] == 91
    assert data["reasons"] == result.reasons
    assert data["news2_scores"] == {"spo2_percent": 3}


def test_alert_and_priority_change() -> None:
    urgent = triage(POSITIVE, [], [vital(spo2_percent=91)], now=NOW)
    high = triage(POSITIVE, [], [], now=NOW)
    assert is_alert(urgent) and not is_alert(high)
    assert priority_changed(None, high)
    assert priority_changed(high, urgent)
    assert not priority_changed(urgent, dataclasses.replace(urgent, reasons=["other"]))
    assert [priority_rank(p) for p in ("routine", "high", "urgent")] == [0, 1, 2]


def test_thresholds_are_validated_and_documented() -> None:
    with pytest.raises(ValidationError, match="strong_threshold"):
        TriageThresholds(positive_threshold=0.8, strong_threshold=0.7)
    with pytest.raises(ValidationError, match="respiratory rate"):
        TriageThresholds(resp_rate_score2_min=10)
    with pytest.raises(ValidationError):
        TriageThresholds(window_minutes=0)
    with pytest.raises(ValidationError):
        TriageThresholds(unknown_field=1)
    for name, info in TriageThresholds.model_fields.items():
        assert info.description, f"{name} has no description"
    assert DEFAULT_THRESHOLDS.window_minutes == 30 and DEFAULT_THRESHOLDS.positive_threshold == 0.5


def test_docs_hold_the_same_tables_as_the_module() -> None:
    def table_lines(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip().startswith("|")]

    docs = (REPO_ROOT / "docs" / "triage.md").read_text(encoding="utf-8")
    module_tables = table_lines(triage_module.__doc__ or "")
    assert len(module_tables) > 10
    assert table_lines(docs) == module_tables


def test_triage_imports_neither_torch_nor_numpy() -> None:
    code = (
        "import sys, covidet.assessment.triage; assert not {'torch', 'numpy'} & set(sys.modules), sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
