"""From box detections to one image-level assessment: the documented rule.

Rule ("max-score", version 1; version 2 when the model has an image head):

1. For each class c in (covid19, pneumonia, normal), the box evidence ``b_c`` is the highest score of a
   detection labelled c (0 when there is none). Version 1: ``s_c = b_c``. Version 2 (a model trained with
   an image head, :class:`~covidet.detection.model.ImageHead`, whose card sets ``image_weight`` w > 0):
   ``s_c = (1 - w) * b_c + w * q_c``, where ``q`` is the image head's softmax over the three classes.
2. The disease score is ``d = max(s_covid19, s_pneumonia)``. If ``d < threshold`` the image is
   ``normal``; otherwise it takes the disease class with the higher evidence (covid19 on a tie).
   Lungs with no confident disease box are, by this rule, normal lungs: most normal training images
   carry no boxes, so the detector is trained to stay silent on them.
3. Probabilities: un-normalised weights ``w_covid19 = s_covid19``, ``w_pneumonia = s_pneumonia``,
   ``w_normal = max(s_normal, 1 - d)``, plus a small floor (1e-6) so no class is exactly 0, divided by
   their sum, then **temperature-scaled**: ``p_c = w_c^(1/T) / sum_k w_k^(1/T)`` (a softmax of
   ``log w / T``; ``T = 1`` leaves them as they are). ``T`` changes the probabilities, never the label.

Fitting (``covidet calibrate``, :func:`fit_temperature` and :func:`choose_threshold`, on the val split,
never on training images and never on a test split): ``threshold`` is the largest value at which the
rule's Covid-19 sensitivity on the split reaches a stated target; ``T`` minimises the negative
log-likelihood of the true labels. Both are written into the model card's ``decision`` section, which
the predictor, ``covidet evaluate`` and the worker read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from covidet.detection.card import ModelCard
from covidet.domain import CLASS_NAMES, Assessment

__all__ = [
    "DEFAULT_THRESHOLD",
    "RULE_NAME",
    "RULE_NAME_WITH_IMAGE",
    "assess",
    "choose_threshold",
    "class_evidence",
    "combined_evidence",
    "decision_weights",
    "fit_temperature",
    "image_weight_of",
    "labels_at",
    "rule_name",
    "scaled_probabilities",
]

RULE_NAME = "max-score-v1"
#: Version 2 mixes the image head's probabilities into the evidence (step 1).
RULE_NAME_WITH_IMAGE = "max-score-v2"
DEFAULT_THRESHOLD = 0.5
_FLOOR = 1e-6


def class_evidence(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Highest score per class, float64 ``[3]`` in CLASS_NAMES order; ``labels`` are model ids 1..3."""
    evidence = np.zeros(len(CLASS_NAMES), np.float64)
    for label, score in zip(np.asarray(labels, np.int64), np.asarray(scores, np.float64), strict=True):
        if 1 <= label <= len(CLASS_NAMES):
            evidence[label - 1] = max(evidence[label - 1], float(score))
    return evidence


def combined_evidence(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    image_probs: Sequence[float] | np.ndarray | None = None,
    image_weight: float = 0.0,
) -> np.ndarray:
    """Step 1's evidence ``s [3]``: box evidence, mixed with the image head's probabilities ``[3]`` when
    ``image_weight`` (in ``[0, 1]``) is positive. Without ``image_probs`` (a model without an image head)
    the box evidence alone."""
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    evidence = class_evidence(labels, scores)
    if image_probs is None or image_weight == 0.0:
        return evidence
    image = np.asarray(image_probs, np.float64).reshape(len(CLASS_NAMES))
    return (1.0 - image_weight) * evidence + image_weight * image


def image_weight_of(card: ModelCard) -> float:
    """The model card's ``decision.image_weight`` (0 for bundles without an image head)."""
    return float(card.get("decision", {}).get("image_weight", 0.0))


def rule_name(image_weight: float) -> str:
    """The rule's name as the model card records it."""
    return RULE_NAME_WITH_IMAGE if image_weight > 0 else RULE_NAME


def decision_weights(evidence: np.ndarray) -> np.ndarray:
    """Un-normalised class weights of step 3 from evidence ``[..., 3]`` (covid19, pneumonia, normal)."""
    evidence = np.asarray(evidence, np.float64)
    disease = np.maximum(evidence[..., 0], evidence[..., 1])
    normal = np.maximum(evidence[..., 2], 1.0 - disease)
    return np.stack([evidence[..., 0], evidence[..., 1], normal], axis=-1) + _FLOOR


def scaled_probabilities(weights: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(log(weights) / temperature)`` along the last axis."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = np.log(np.asarray(weights, np.float64)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def labels_at(evidence: np.ndarray, threshold: float) -> np.ndarray:
    """Class index (CLASS_NAMES order) the rule gives each row of ``evidence [N, 3]`` at ``threshold``."""
    covid, pneumonia = evidence[:, 0], evidence[:, 1]
    disease = np.maximum(covid, pneumonia)
    return np.where(disease < threshold, 2, np.where(covid >= pneumonia, 0, 1))


def fit_temperature(evidence: np.ndarray, y_true: Sequence[int] | np.ndarray) -> float:
    """The temperature that minimises the mean negative log-likelihood of ``y_true``.

    ``evidence`` is ``[N, 3]`` (:func:`class_evidence` per image), ``y_true`` class indices in
    CLASS_NAMES order. A deterministic search over 601 values from 0.05 to 20 (log-spaced): one
    parameter, so a grid is exact enough and needs no optimiser.
    """
    weights = decision_weights(np.asarray(evidence, np.float64))
    truth = np.asarray(y_true, np.int64)
    if len(truth) == 0:
        raise ValueError("no images to fit the temperature on")
    candidates = np.logspace(np.log10(0.05), np.log10(20.0), 601)
    nll = [-np.log(scaled_probabilities(weights, t)[np.arange(len(truth)), truth]).mean() for t in candidates]
    return float(candidates[int(np.argmin(nll))])


def choose_threshold(
    evidence: np.ndarray, y_true: Sequence[int] | np.ndarray, *, target_covid_sensitivity: float
) -> tuple[float, float]:
    """``(threshold, achieved Covid-19 sensitivity)``: the largest threshold that reaches the target.

    Candidates are the images' positive disease scores (where the rule's output changes) and 1.0. When no
    threshold reaches the target (a Covid image without any Covid evidence is never called Covid), the
    one with the highest sensitivity is returned, the largest among ties.
    """
    evidence = np.asarray(evidence, np.float64)
    truth = np.asarray(y_true, np.int64)
    covid = truth == 0
    if not covid.any():
        raise ValueError("no covid19 images to set the threshold on")
    disease = np.maximum(evidence[:, 0], evidence[:, 1])
    # Only scores > 0: at threshold 0 an image without any disease box would be called diseased.
    candidates = np.unique(np.clip(np.concatenate([disease[disease > 0], [1.0]]), 0.0, 1.0))[::-1]
    best: tuple[float, float] | None = None
    for threshold in candidates:
        sensitivity = float((labels_at(evidence, threshold)[covid] == 0).mean())
        if sensitivity >= target_covid_sensitivity:
            return float(threshold), sensitivity
        if best is None or sensitivity > best[1]:
            best = (float(threshold), sensitivity)
    assert best is not None
    return best


def assess(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    temperature: float = 1.0,
    image_probs: Sequence[float] | np.ndarray | None = None,
    image_weight: float = 0.0,
) -> Assessment:
    """Apply the rule above to one image's detections (model label ids and scores) and, for version 2,
    the image head's probabilities ``image_probs [3]`` with weight ``image_weight``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    evidence = combined_evidence(labels, scores, image_probs, image_weight)
    label = CLASS_NAMES[int(labels_at(evidence[None], threshold)[0])]
    probabilities = scaled_probabilities(decision_weights(evidence), temperature)
    return Assessment(
        label=label,
        probabilities={name: float(p) for name, p in zip(CLASS_NAMES, probabilities, strict=True)},
        threshold=threshold,
    )
