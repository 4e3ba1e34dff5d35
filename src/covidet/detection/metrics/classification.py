"""Image-level classification metrics of the assessment derived from the detector.

:func:`image_level_metrics`: accuracy, per-class sensitivity/specificity/precision/F1/ROC-AUC, macro
F1/AUC, the confusion matrix and the top-label calibration error with its reliability table, computed
with scikit-learn and returned as plain Python values (JSON-ready; undefined ratios are ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from covidet.detection.metrics.calibration import Reliability, expected_calibration_error
from covidet.detection.metrics.detections import DEFAULT_CLASS_NAMES

__all__ = ["ClassMetrics", "ImageLevelMetrics", "image_level_metrics"]


class ClassMetrics(TypedDict):
    """One class of :func:`image_level_metrics`, one-vs-rest; an undefined ratio is ``None``."""

    sensitivity: float | None
    specificity: float | None
    precision: float | None
    f1: float
    auc: float | None
    support: int


class ImageLevelMetrics(TypedDict):
    """The report of :func:`image_level_metrics` (JSON-ready)."""

    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    macro_auc: float | None
    confusion_matrix: list[list[int]]
    ece: float
    reliability: Reliability


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` as a float, or ``None`` when the denominator is 0 (undefined)."""
    return float(numerator) / float(denominator) if denominator else None


def image_level_metrics(
    y_true: Sequence[int],
    probabilities: np.ndarray,
    *,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    n_bins: int = 10,
    y_pred: Sequence[int] | None = None,
) -> ImageLevelMetrics:
    """Image-level classification metrics of ``K``-class probabilities against true classes.

    ``y_true`` holds class indices ``0..K-1`` (index into ``class_names``, i.e. model id - 1);
    ``probabilities`` is ``(N, K)`` with rows summing to 1; ``y_pred`` defaults to the row-wise argmax
    (callers with a threshold rule pass their own decisions).

    Returns ``{"n", "accuracy", "macro_f1", "per_class": {name: {"sensitivity", "specificity",
    "precision", "f1", "auc", "support"}}, "macro_auc", "confusion_matrix" (rows true, columns predicted),
    "ece", "reliability"}``. Confusion matrix, F1 (``zero_division=0``) and one-vs-rest ROC-AUC come from
    scikit-learn. Ratios that are undefined (0/0) are ``None``: sensitivity without positives,
    specificity without negatives, precision without predictions of the class, and AUC when only one of
    positive/negative is present. ``macro_auc`` averages the defined AUCs (``None`` if there is none).
    ECE is top-label: the confidence is the probability of the *predicted* class, see
    :func:`expected_calibration_error`.
    """
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    n_classes = len(class_names)
    truth = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (truth.size, n_classes):
        raise ValueError(f"probabilities must have shape ({truth.size}, {n_classes}), got {probs.shape}")
    if truth.size == 0:
        raise ValueError("no images to evaluate")
    if np.any(truth < 0) or np.any(truth >= n_classes) or np.any(truth != np.round(truth)):
        raise ValueError(f"y_true must hold class indices 0..{n_classes - 1}")
    truth = truth.astype(np.int64)
    if y_pred is None:
        pred = probs.argmax(axis=1)
    else:
        pred = np.asarray(y_pred).reshape(-1)
        if pred.shape != truth.shape:
            raise ValueError(f"{pred.size} predictions for {truth.size} images")
        if np.any(pred < 0) or np.any(pred >= n_classes) or np.any(pred != np.round(pred)):
            raise ValueError(f"y_pred must hold class indices 0..{n_classes - 1}")
        pred = pred.astype(np.int64)

    labels = list(range(n_classes))
    cm = confusion_matrix(truth, pred, labels=labels)
    f1_per_class = f1_score(truth, pred, labels=labels, average=None, zero_division=0)
    macro_f1 = f1_score(truth, pred, labels=labels, average="macro", zero_division=0)
    n = int(truth.size)

    per_class: dict[str, ClassMetrics] = {}
    aucs: list[float] = []
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        fn = int(cm[k, :].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = n - tp - fn - fp
        positives = truth == k
        auc: float | None = None
        if 0 < int(positives.sum()) < n:
            auc = float(roc_auc_score(positives.astype(int), probs[:, k]))
            aucs.append(auc)
        per_class[str(name)] = {
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp),
            "f1": float(f1_per_class[k]),
            "auc": auc,
            "support": int(positives.sum()),
        }

    confidences = probs[np.arange(n), pred]
    ece, reliability = expected_calibration_error(confidences, pred == truth, n_bins=n_bins)
    return {
        "n": n,
        "accuracy": float(np.trace(cm)) / n,
        "macro_f1": float(macro_f1),
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "confusion_matrix": [[int(v) for v in row] for row in cm],
        "ece": ece,
        "reliability": reliability,
    }
