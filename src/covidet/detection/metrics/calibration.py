"""Top-label expected calibration error (ECE) and its reliability table.

:func:`expected_calibration_error` bins the confidence of each predicted class into equal-width,
right-closed bins and compares it with the accuracy in each bin; it returns plain Python values.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

__all__ = ["Reliability", "expected_calibration_error"]


class Reliability(TypedDict):
    """The reliability table of :func:`expected_calibration_error`: ``n_bins + 1`` edges, and per bin
    the mean confidence and accuracy (``None`` for an empty bin) and the count."""

    bin_edges: list[float]
    bin_confidence: list[float | None]
    bin_accuracy: list[float | None]
    bin_count: list[int]


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, *, n_bins: int = 10
) -> tuple[float, Reliability]:
    """Top-label expected calibration error and its reliability table.

    ``ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width bins closed on the
    right: ``[0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]`` (a confidence of exactly 0 falls into the first).
    ``confidences`` are the probabilities of the predicted class, ``correct`` whether that prediction was
    right.

    Returns ``(ece, {"bin_edges": [n_bins + 1 floats], "bin_confidence": [...], "bin_accuracy": [...],
    "bin_count": [...]})``; an empty bin has confidence and accuracy ``None`` and count 0.
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct, dtype=bool).reshape(-1)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if conf.shape != hit.shape:
        raise ValueError(f"{conf.size} confidences for {hit.size} correctness flags")
    if conf.size == 0:
        raise ValueError("no predictions to calibrate")
    if np.any(~np.isfinite(conf)) or np.any(conf < 0) or np.any(conf > 1):
        raise ValueError("confidences must lie in [0, 1]")

    # Inner edges i/n computed as a correctly rounded division, so that e.g. a confidence of 0.3 equals
    # the edge 3/10 and lands in (0.2, 0.3] as the right-closed convention says.
    inner_edges = np.arange(1, n_bins, dtype=np.float64) / n_bins
    bins = np.searchsorted(inner_edges, conf, side="left")
    n = conf.size
    ece = 0.0
    bin_confidence: list[float | None] = []
    bin_accuracy: list[float | None] = []
    bin_count: list[int] = []
    for b in range(n_bins):
        members = bins == b
        count = int(members.sum())
        bin_count.append(count)
        if count == 0:
            bin_confidence.append(None)
            bin_accuracy.append(None)
            continue
        mean_conf = float(conf[members].mean())
        accuracy = float(hit[members].mean())
        bin_confidence.append(mean_conf)
        bin_accuracy.append(accuracy)
        ece += count / n * abs(accuracy - mean_conf)
    reliability: Reliability = {
        "bin_edges": [0.0, *(float(e) for e in inner_edges), 1.0],
        "bin_confidence": bin_confidence,
        "bin_accuracy": bin_accuracy,
        "bin_count": bin_count,
    }
    return float(ece), reliability
