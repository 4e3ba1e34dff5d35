"""What the analysis job works with, without torch: the :class:`Detector` port (what the worker asks of
:class:`covidet.detection.predictor.Predictor`), its :class:`DetectorResult`, and :class:`AnalysisError`.

Contract: a detector has a ``name`` and ``version`` (the inference's identity with the image), a model
``card`` (whose ``decision.rule`` names the image-level rule) and ``predict``, which returns one result
per image, in order, with findings in original-image pixels. Protocols, so that tests and benchmarks can
wrap the real predictor and the API process never imports torch through these types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from covidet.domain import Assessment, Finding
from covidet.imaging import XRayImage

__all__ = ["DEFAULT_DECISION_RULE", "AnalysisError", "Detector", "DetectorResult", "Sleep", "decision_rule"]

#: The rule recorded when a model card names none (the rule of the first bundles).
DEFAULT_DECISION_RULE = "max-score-v1"

#: How the retry loop waits (``time.sleep``, or a recorder in tests).
Sleep = Callable[[float], None]


class AnalysisError(Exception):
    """An analysis attempt failed. ``retryable`` is false when trying again cannot help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class DetectorResult(Protocol):
    """The detector's output for one image (:class:`covidet.detection.predictor.Prediction`)."""

    @property
    def findings(self) -> Sequence[Finding]: ...

    @property
    def assessment(self) -> Assessment: ...

    @property
    def seconds(self) -> float: ...


class Detector(Protocol):
    """What the analysis job needs of a detector (:class:`covidet.detection.predictor.Predictor`)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def card(self) -> Mapping[str, object]: ...

    def predict(self, images: Sequence[XRayImage], *, batch_size: int = ...) -> Sequence[DetectorResult]: ...


def decision_rule(card: Mapping[str, object]) -> str:
    """The image-level decision rule a model card names (``decision.rule``), else
    :data:`DEFAULT_DECISION_RULE`."""
    decision = card.get("decision")
    rule = (
        decision.get("rule", DEFAULT_DECISION_RULE)
        if isinstance(decision, Mapping)
        else DEFAULT_DECISION_RULE
    )
    return str(rule)
