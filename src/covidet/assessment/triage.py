"""Triage: image assessment + recent vital signs → priority (urgent | high | routine) with reasons.

Pure Python, no torch and no database: the worker calls :func:`triage` with what it read from the
store. ``docs/triage.md`` holds the same tables as this docstring (a test keeps them identical) plus
the worked examples.

Rule table (rows are tried top to bottom; the first that holds decides, its id is ``TriageResult.rule``):

| rule | condition ("NEWS2" is the partial NEWS2 below) | priority | source |
|---|---|---|---|
| U1 | NEWS2 ≥ 7 (`news2_emergency_min`) | urgent | NEWS2 ≥ 7: emergency response |
| U2 | image positive AND (a single parameter scores 3 OR NEWS2 ≥ 5) | urgent | NEWS2 + lung cause |
| H1 | NEWS2 ≥ 5 (`news2_urgent_min`) OR a single parameter scores 3 | high | NEWS2 urgent response |
| H2 | image positive, disease probability < `strong_threshold` | high | detector |
| H3 | image strongly positive (≥ `strong_threshold`), with or without vitals | high | detector |
| R1 | otherwise | routine | |

Definitions:

* **partial NEWS2**: the sum of the NEWS2 scores of the parameters measured in the look-back window.
  The sensors measure neither consciousness (ACVPU) nor supplemental oxygen (+2), so it is a lower
  bound of the full NEWS2; ``None`` when no parameter was measured.
* **disease probability**: ``P(covid19) + P(pneumonia)`` of the :class:`~covidet.domain.Assessment`,
  i.e. ``1 - P(normal)``: for triage both diseases matter, so their mass is pooled.
* **image positive**: the detector's decision (``Assessment.label``) is covid19 or pneumonia, OR the
  disease probability is ≥ ``positive_threshold``. The OR keeps triage at least as sensitive as the
  model card's own decision rule (its probabilities are not calibrated yet, so the two can disagree).
* **no assessment** (image not analysed yet): the image is not positive; vitals alone decide.
* **no vital signs** in the window: the image alone decides (H2, H3 or R1).

NEWS2 scores (Royal College of Physicians, *National Early Warning Score (NEWS) 2*, 2017, chart 1;
SpO2 on scale 1 — scale 2, for hypercapnic respiratory failure, is not supported):

| parameter | 3 | 2 | 1 | 0 | 1 | 2 | 3 |
|---|---|---|---|---|---|---|---|
| SpO2 scale 1 (%) | ≤ 91 | 92–93 | 94–95 | ≥ 96 | | | |
| respiratory rate (/min) | ≤ 8 | | 9–11 | 12–20 | | 21–24 | ≥ 25 |
| temperature (°C) | ≤ 35.0 | | 35.1–36.0 | 36.1–38.0 | 38.1–39.0 | ≥ 39.1 | |
| heart rate (/min) | ≤ 40 | | 41–50 | 51–90 | 91–110 | 111–130 | ≥ 131 |
| systolic BP (mmHg) | ≤ 90 | 91–100 | 101–110 | 111–219 | | | ≥ 220 |

Choices (why):

* **Latest reading wins.** Per parameter the most recent value in the window is scored, because NEWS2
  scores the patient's current observations; a worse earlier value in the window is reported as an
  extra reason but does not decide (it may have been a transient or a probe artefact, and a patient
  who recovered should not stay urgent). On equal timestamps the worse score wins.
* **Rounding.** Values are rounded half-up to the chart's resolution (integers; 0.1 °C) before scoring,
  as a NEWS2 chart records them, so a value between two bands (SpO2 91.4) lands in exactly one band.
* **Window.** Only readings with ``measured_at`` in ``[now - window_minutes, now + clock_skew_seconds]``
  count; the small tolerance after ``now`` absorbs device clock skew, readings further in the future
  are ignored (and reported). Naive datetimes are taken as UTC.
* **Monotonic.** A worse NEWS2 score of any parameter, a higher disease probability or a disease label
  never lowers the priority (tested).
* **H2 and H3** give the same priority; they are separate rows so the worklist and the audit can tell
  a borderline image from a strongly positive one.

Side naming: AP/PA chest X-rays are displayed in the radiological convention, the patient facing the
viewer, so the patient's RIGHT lung is on the LEFT of the image. A box lies on the patient's right lung
when its centre x is < ``image_width / 2`` and on the left lung otherwise; a box that straddles the
midline with at least a quarter of its width on each side counts as both lungs. Without
``image_width`` no side is named. Lateral views have no side: pass ``image_width=None`` for them.

Research software: **not for clinical use**.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from covidet.assessment.news2 import news2_parameters
from covidet.assessment.result import TriageResult, as_utc, is_alert, priority_changed, priority_rank
from covidet.assessment.thresholds import DEFAULT_THRESHOLDS, TriageThresholds
from covidet.domain import Assessment, Finding, Label, Priority, VitalSign

# The public names of triage (the parts live in news2, thresholds and result; import from here).
__all__ = [
    "DEFAULT_THRESHOLDS",
    "TriageResult",
    "TriageThresholds",
    "is_alert",
    "news2_score",
    "priority_changed",
    "priority_rank",
    "triage",
]


def news2_score(parameter: str, value: float, thresholds: TriageThresholds = DEFAULT_THRESHOLDS) -> int:
    """NEWS2 score (0..3) of one value; ``parameter`` is a :class:`VitalSign` attribute name
    (``spo2_percent``, ``respiratory_rate_per_min``, ``temperature_c``, ``heart_rate_per_min``,
    ``systolic_bp_mmhg``) and ``value`` is in that attribute's unit."""
    for spec in news2_parameters(thresholds):
        if spec.key == parameter:
            return spec.score(value)[0]
    raise ValueError(f"not a NEWS2 parameter: {parameter!r}")


def news2_of_reading(parameter: str, value: float) -> int | None:
    """NEWS2 score (0..3) of one stored reading as the worklist and the viewer show it; ``None`` for
    a value that is not a finite number (nothing to score)."""
    return news2_score(parameter, value) if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------ triage

_DISEASES = (Label.COVID19, Label.PNEUMONIA)
#: A box straddling the midline with at least this fraction of its width on each side is in both lungs.
_STRADDLE_FRACTION = 0.25
#: Below this, the second disease's probability is the decision rule's floor, not evidence: not printed.
_MENTION_MIN = 0.01


def _minutes(window: float) -> str:
    return f"{window:g} min"


@dataclass(frozen=True, slots=True)
class _Reading:
    vital: VitalSign
    at: datetime
    value: float
    score: int
    band: str


def triage(
    assessment: Assessment | None,
    findings: Sequence[Finding],
    vitals: Sequence[VitalSign],
    *,
    now: datetime,
    image_width: int | None = None,
    thresholds: TriageThresholds = DEFAULT_THRESHOLDS,
) -> TriageResult:
    """Priority of one image of one patient, by the rule table of this module.

    Args:
        assessment: the image-level assessment; ``None`` while the image is not analysed (vitals decide).
        findings: the detector's boxes in original-image pixels; only used to name the lung side.
        vitals: the patient's readings (any order, any age: the window is applied here). All must have
            the same ``patient_id``.
        now: the time of triage (UTC; naive is taken as UTC).
        image_width: width of the original image in pixels, to name the side; ``None``: no side.
        thresholds: the numbers of the tables.

    Raises:
        ValueError: vitals of more than one patient, or ``image_width`` ≤ 0.
    """
    if len({v.patient_id for v in vitals}) > 1:
        raise ValueError("vitals of more than one patient: triage is per patient")
    if image_width is not None and image_width <= 0:
        raise ValueError(f"image_width must be positive, got {image_width}")
    t = thresholds
    now = as_utc(now)
    window_text = f"in the last {_minutes(t.window_minutes)}"

    # --- vitals: window, latest per parameter ---------------------------------------------------------
    start = now - timedelta(minutes=t.window_minutes)
    end = now + timedelta(seconds=t.clock_skew_seconds)
    in_window: list[tuple[datetime, VitalSign]] = []
    future = 0
    for v in vitals:
        at = as_utc(v.measured_at)
        if at > end:
            future += 1
        elif at >= start:
            in_window.append((at, v))

    specs = news2_parameters(t)
    latest: dict[str, _Reading] = {}
    worst: dict[str, _Reading] = {}
    for at, v in in_window:
        for spec in specs:
            raw = getattr(v, spec.key)
            if raw is None or not math.isfinite(raw):  # a sensor glitch is not a measurement
                continue
            score, band = spec.score(float(raw))
            reading = _Reading(v, at, float(raw), score, band)
            old = latest.get(spec.key)
            # latest wins; on equal timestamps the worse score (safety, and keeps triage monotonic)
            if old is None or (at, score) > (old.at, old.score):
                latest[spec.key] = reading
            old = worst.get(spec.key)
            if old is None or (score, at) > (old.score, old.at):
                worst[spec.key] = reading

    scores = {key: r.score for key, r in latest.items()}
    news2 = sum(scores.values()) if scores else None
    single3 = any(s == 3 for s in scores.values())
    vitals_alarm = single3 or (news2 is not None and news2 >= t.news2_urgent_min)

    # --- image ----------------------------------------------------------------------------------------
    disease_p: float | None = None
    positive = strong = False
    if assessment is not None:
        probs = {d: float(assessment.probabilities.get(d, 0.0)) for d in _DISEASES}
        disease_p = probs[Label.COVID19] + probs[Label.PNEUMONIA]
        positive = assessment.label in _DISEASES or disease_p >= t.positive_threshold
        strong = disease_p >= t.strong_threshold

    # --- the table ------------------------------------------------------------------------------------
    if news2 is not None and news2 >= t.news2_emergency_min:
        rule, priority = "U1", Priority.URGENT
    elif positive and vitals_alarm:
        rule, priority = "U2", Priority.URGENT
    elif vitals_alarm:
        rule, priority = "H1", Priority.HIGH
    elif positive and not strong:
        rule, priority = "H2", Priority.HIGH
    elif strong:
        rule, priority = "H3", Priority.HIGH
    else:
        rule, priority = "R1", Priority.ROUTINE

    # --- reasons, most important first ----------------------------------------------------------------
    vital_reasons: list[str] = []
    # stable sort: equal scores keep the parameter order of the table
    ordered = sorted(((s, latest[s.key]) for s in specs if s.key in latest), key=lambda sr: -sr[1].score)
    aggregate = None
    if news2 is not None:
        measured = [spec.name for spec in specs if spec.key in latest]
        response = ""
        if news2 >= t.news2_emergency_min:
            response = f" (≥ {t.news2_emergency_min}: emergency response)"
        elif news2 >= t.news2_urgent_min:
            response = f" ({t.news2_urgent_min}–{t.news2_emergency_min - 1}: urgent response)"
        aggregate = (
            f"partial NEWS2 {news2}{response} over {len(measured)} of {len(specs)} parameters "
            f"({', '.join(measured)}) {window_text}"
        )
    if aggregate and news2 is not None and news2 >= t.news2_urgent_min:
        vital_reasons.append(aggregate)
    for spec, r in ordered:
        if r.score > 0:
            vital_reasons.append(f"{spec.value_text(r.value)} ({r.band}, NEWS2 {r.score}) {window_text}")
    if aggregate and news2 is not None and news2 < t.news2_urgent_min:
        vital_reasons.append(aggregate)

    image_reasons = [_image_reason(assessment, findings, image_width, disease_p, positive, strong, t)]

    info: list[str] = []
    if not latest:
        info.append(f"no vital signs {window_text}")
    else:
        missing = [spec.name for spec in specs if spec.key not in latest]
        if missing:
            info.append(f"not measured {window_text}: {', '.join(missing)}")
        for spec in specs:
            w, last = worst.get(spec.key), latest.get(spec.key)
            if w is not None and last is not None and w.score > last.score:
                info.append(
                    f"{spec.value_text(w.value)} at {w.at:%H:%M} UTC (NEWS2 {w.score}) {window_text}; "
                    f"latest {spec.fmt(spec.round(last.value))}{spec.unit} (NEWS2 {last.score}) decides"
                )
    if future:
        # no clock time in the text: reasons must not change when only `now` does (the worker stores a
        # new triage record whenever the reasons change)
        info.append(
            f"ignored {future} vital-sign reading(s) dated more than {t.clock_skew_seconds:g} s in the future"
        )

    image_first = rule in ("U2", "H2", "H3")
    reasons = (image_reasons + vital_reasons if image_first else vital_reasons + image_reasons) + info

    used: dict[int, VitalSign] = {}
    for r in sorted(latest.values(), key=lambda r: r.at):
        used.setdefault(id(r.vital), r.vital)  # VitalSign holds a dict: not hashable, dedupe by identity

    return TriageResult(
        priority=priority,
        reasons=reasons,
        news2_partial=news2,
        vitals_used=list(used.values()),
        rule=rule,
        news2_scores={spec.key: scores[spec.key] for spec in specs if spec.key in scores},
        disease_probability=disease_p,
    )


def _image_reason(
    assessment: Assessment | None,
    findings: Sequence[Finding],
    image_width: int | None,
    disease_p: float | None,
    positive: bool,
    strong: bool,
    t: TriageThresholds,
) -> str:
    if assessment is None or disease_p is None:
        return "image not analysed yet"
    probs = {d: float(assessment.probabilities.get(d, 0.0)) for d in _DISEASES}
    if not positive:
        return f"image negative: AI disease score {disease_p:.2f} (< {t.positive_threshold:.2f})"
    if assessment.label in _DISEASES:
        named = Label(assessment.label)
    else:
        named = Label.COVID19 if probs[Label.COVID19] >= probs[Label.PNEUMONIA] else Label.PNEUMONIA
    other = Label.PNEUMONIA if named is Label.COVID19 else Label.COVID19
    text = f"{named} {probs[named]:.2f}"
    pooled = probs[other] >= _MENTION_MIN
    if pooled:
        text += f", {other} {probs[other]:.2f}"
    text += _side_text(findings, named, assessment.threshold, image_width)
    qualifier = []
    if pooled:
        qualifier.append(f"disease score {disease_p:.2f}")
    if strong:
        qualifier.append(f"strongly positive: ≥ {t.strong_threshold:.2f}")
    elif disease_p >= t.positive_threshold:
        qualifier.append(f"positive: ≥ {t.positive_threshold:.2f}")
    else:
        qualifier.append(f"positive by the detector's decision; disease score {disease_p:.2f}")
    return f"{text} ({'; '.join(dict.fromkeys(qualifier))})"


def _side_text(findings: Sequence[Finding], named: Label, cut: float, image_width: int | None) -> str:
    """ " on the right lung" / " on the left lung" / " in both lungs" / "" (patient's side, see module doc).

    The boxes are those of the named class with a score ≥ the detector's decision threshold ``cut``,
    else those of either disease; without any, or without ``image_width``, no side is named.
    """
    if image_width is None:
        return ""
    boxes = [f.box for f in findings if f.label == named and f.score >= cut]
    if not boxes:
        boxes = [f.box for f in findings if f.label in _DISEASES and f.score >= cut]
    if not boxes:
        return ""
    mid = image_width / 2.0
    sides: set[str] = set()
    for box in boxes:
        width = box.x2 - box.x1
        on_image_left, on_image_right = mid - box.x1, box.x2 - mid
        if width > 0 and min(on_image_left, on_image_right) >= _STRADDLE_FRACTION * width:
            sides |= {"right", "left"}
        # radiological convention: the image's left half is the patient's right lung
        elif (box.x1 + box.x2) / 2.0 < mid:
            sides.add("right")
        else:
            sides.add("left")
    if sides == {"right"}:
        return " on the right lung"
    if sides == {"left"}:
        return " on the left lung"
    return " in both lungs"
