"""From box detections to one image-level assessment: the documented rule.

Rule ("max-score", version 1):

1. For each class c in (covid19, pneumonia, normal), the evidence ``s_c`` is the highest score of a
   detection labelled c (0 when there is none).
2. The disease score is ``d = max(s_covid19, s_pneumonia)``. If ``d < threshold`` the image is
   ``normal``; otherwise it takes the disease class with the higher evidence (covid19 on a tie).
   Lungs with no confident disease box are, by this rule, normal lungs: most normal training images
   carry no boxes, so the detector is trained to stay silent on them.
3. Probabilities: un-normalised weights ``w_covid19 = s_covid19``, ``w_pneumonia = s_pneumonia``,
   ``w_normal = max(s_normal, 1 - d)``, plus a small floor (1e-6) so no class is exactly 0, divided by
   their sum. They order the classes like the decision at ``threshold = 0.5`` but are not calibrated
   probabilities; the model-quality issue fits a calibration on the validation split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from covidet.domain import CLASS_NAMES, Assessment, Label

__all__ = ["DEFAULT_THRESHOLD", "RULE_NAME", "assess", "class_evidence"]

RULE_NAME = "max-score-v1"
DEFAULT_THRESHOLD = 0.5
_FLOOR = 1e-6


def class_evidence(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Highest score per class, float64 ``[3]`` in CLASS_NAMES order; ``labels`` are model ids 1..3."""
    evidence = np.zeros(len(CLASS_NAMES), np.float64)
    for label, score in zip(np.asarray(labels, np.int64), np.asarray(scores, np.float64), strict=True):
        if 1 <= label <= len(CLASS_NAMES):
            evidence[label - 1] = max(evidence[label - 1], float(score))
    return evidence


def assess(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> Assessment:
    """Apply the rule above to one image's detections (model label ids and scores)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    covid, pneumonia, normal = class_evidence(labels, scores)
    disease = max(covid, pneumonia)
    if disease < threshold:
        label = Label.NORMAL
    else:
        label = Label.COVID19 if covid >= pneumonia else Label.PNEUMONIA
    weights = np.array([covid, pneumonia, max(normal, 1.0 - disease)]) + _FLOOR
    probabilities = weights / weights.sum()
    return Assessment(
        label=label,
        probabilities={name: float(p) for name, p in zip(CLASS_NAMES, probabilities, strict=True)},
        threshold=threshold,
    )
