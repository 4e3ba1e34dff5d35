"""Framework-free domain types shared by every layer of covidet.

Conventions (see ``docs/architecture.md``):

* Boxes are ``[x1, y1, x2, y2]`` floats in pixels of the *original* image, top-left origin.
* In the model, labels are integers ``background=0, covid19=1, pneumonia=2, normal=3``;
  everywhere else they are the strings of :class:`Label`.
* Every AI output carries the model name, version and :data:`covidet.DISCLAIMER`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

__all__ = [
    "CLASS_NAMES",
    "AnalysisQueue",
    "Assessment",
    "Box",
    "Finding",
    "Label",
    "Priority",
    "VitalSign",
    "label_from_model_id",
    "model_id_from_label",
]


class Label(StrEnum):
    """Image- or region-level finding class."""

    COVID19 = "covid19"
    PNEUMONIA = "pneumonia"
    NORMAL = "normal"


#: Class names in model order: model label id ``i + 1`` is ``CLASS_NAMES[i]`` (0 is background).
CLASS_NAMES: tuple[Label, ...] = (Label.COVID19, Label.PNEUMONIA, Label.NORMAL)


def model_id_from_label(label: Label | str) -> int:
    """Model label id (1..3) of a class; 0 is reserved for background."""
    return CLASS_NAMES.index(Label(label)) + 1


def label_from_model_id(model_id: int) -> Label:
    """Class of a model label id (1..3). Raises ``ValueError`` for background or unknown ids."""
    if not 1 <= model_id <= len(CLASS_NAMES):
        raise ValueError(f"model label id {model_id} is not a class (1..{len(CLASS_NAMES)})")
    return CLASS_NAMES[model_id - 1]


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box ``[x1, y1, x2, y2]`` in original-image pixels (x1 <= x2, y1 <= y2)."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"box corners out of order: {self.as_list()}")

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected region: a box, its class and the detector's score in [0, 1]."""

    box: Box
    label: Label
    score: float


@dataclass(frozen=True, slots=True)
class Assessment:
    """Image-level assessment derived from findings by the rule in :mod:`covidet.detection.decision`.

    ``probabilities`` sum to 1 over :data:`CLASS_NAMES`; ``threshold`` is the disease-score threshold
    under which the image is called normal.
    """

    label: Label
    probabilities: dict[Label, float]
    threshold: float


class Priority(StrEnum):
    """Triage priority of a study (the assessment issue fills it in)."""

    URGENT = "urgent"
    HIGH = "high"
    ROUTINE = "routine"


@dataclass(frozen=True, slots=True)
class VitalSign:
    """One set of bedside measurements of a patient at a time (UTC). Absent values are ``None``."""

    patient_id: str
    measured_at: datetime
    spo2_percent: float | None = None
    temperature_c: float | None = None
    heart_rate_per_min: float | None = None
    respiratory_rate_per_min: float | None = None
    systolic_bp_mmhg: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ ports


class AnalysisQueue(Protocol):
    """Where ingest hands an accepted image over. ``enqueue`` must return quickly (no analysis).

    A port: ``covidet.ingest`` depends on it, the worker's queues (in-process, Celery) implement it,
    so ingest never imports the worker.
    """

    def enqueue(self, image_id: int) -> None: ...
