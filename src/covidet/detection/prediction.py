"""The model's output for one image (:class:`Prediction`) and its JSON record (``covidet predict``).

:class:`~covidet.detection.predictor.Predictor` makes predictions; :meth:`Prediction.to_json` gives the
record that ``covidet predict`` prints, whose shape the ``*JSON`` types below state (a promise to its
readers: keys are never renamed or dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict

from covidet import DISCLAIMER
from covidet.domain import Assessment, Finding, Label

__all__ = ["AssessmentJSON", "FindingJSON", "ImageHeadJSON", "ModelRefJSON", "Prediction", "PredictionJSON"]


class ImageHeadJSON(TypedDict):
    """The image head's own probabilities and the weight the decision rule gave them."""

    probabilities: dict[str, float]
    weight: float


class AssessmentJSON(TypedDict):
    """The image-level assessment: decided label, probabilities per class, the threshold applied, and
    ``image_head`` only for a model with an image head."""

    label: str
    probabilities: dict[str, float]
    threshold: float
    image_head: NotRequired[ImageHeadJSON]


class FindingJSON(TypedDict):
    """One finding: ``box`` ``[x1, y1, x2, y2]`` in original-image pixels (0.1 px), label, score."""

    box: list[float]
    label: str
    score: float


class ModelRefJSON(TypedDict):
    """The model that made the prediction."""

    name: str
    version: str


class PredictionJSON(TypedDict):
    """The record of :meth:`Prediction.to_json`."""

    assessment: AssessmentJSON
    findings: list[FindingJSON]
    model: ModelRefJSON
    disclaimer: str


@dataclass(frozen=True)
class Prediction:
    """The model's output for one image. Boxes are ``[x1, y1, x2, y2]`` in original-image pixels."""

    findings: list[Finding]
    assessment: Assessment
    seconds: float
    #: The image head's own probabilities (covid19 / pneumonia / normal), before they are mixed with the
    #: box evidence; ``None`` for a model without an image head.
    image_head_probabilities: dict[Label, float] | None = None
    #: The weight the decision rule gave them (``decision.image_weight`` in the model card).
    image_weight: float = 0.0

    def to_json(self, *, model_name: str, model_version: str) -> PredictionJSON:
        """The JSON record of ``covidet predict`` (without ``file``). ``assessment.image_head`` is present
        only for a model with an image head: its own probabilities and the weight rule v2 gave them."""
        assessment: AssessmentJSON = {
            "label": self.assessment.label.value,
            "probabilities": {k.value: round(v, 6) for k, v in self.assessment.probabilities.items()},
            "threshold": self.assessment.threshold,
        }
        if self.image_head_probabilities is not None:
            assessment["image_head"] = {
                "probabilities": {k.value: round(v, 6) for k, v in self.image_head_probabilities.items()},
                "weight": self.image_weight,
            }
        return {
            "assessment": assessment,
            "findings": [
                {
                    "box": [round(c, 1) for c in f.box.as_list()],
                    "label": f.label.value,
                    "score": round(f.score, 4),
                }
                for f in self.findings
            ],
            "model": {"name": model_name, "version": model_version},
            "disclaimer": DISCLAIMER,
        }
