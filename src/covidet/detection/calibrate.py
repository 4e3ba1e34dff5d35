"""Fit the decision rule's operating threshold and temperature on the val split (``covidet calibrate``).

What is fitted (see :mod:`covidet.detection.decision`): the disease-score ``threshold``, the largest at
which the rule's Covid-19 sensitivity on the split reaches ``target_covid_sensitivity``, and the
``temperature`` that makes the class probabilities calibrated (lowest negative log-likelihood). Both go
into the model card's ``decision`` section with what they were fitted on.

Figures on the split the rule was fitted on flatter it. So the card also gets **cross-fitted**
figures: the split's patients are cut into ``folds`` groups; each group is assessed with a threshold
and temperature fitted on the other groups only, and the pooled out-of-fold labels are scored. Those
estimate what the fitting procedure gives on patients it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import numpy as np

from covidet.detection.bundle import CARD_FILE, load_bundle
from covidet.detection.card import DecisionSection
from covidet.detection.data import ImageRecord, load_records
from covidet.detection.decision import (
    choose_threshold,
    combined_evidence,
    decision_weights,
    fit_temperature,
    image_weight_of,
    labels_at,
    rule_name,
    scaled_probabilities,
)
from covidet.detection.engine import evaluate_detections
from covidet.detection.evaluate import infer_records
from covidet.detection.metrics import ImageLevelMetrics, image_level_metrics

__all__ = [
    "CalibratedDecision",
    "CrossFitted",
    "FoldFit",
    "calibrate_bundle",
    "cross_fitted_metrics",
    "patient_folds",
]

logger = logging.getLogger(__name__)


class FoldFit(TypedDict):
    """What one fold of :func:`cross_fitted_metrics` fitted on the other folds."""

    fold: int
    n: int
    threshold: float
    temperature: float


class CrossFitted(TypedDict):
    """:func:`cross_fitted_metrics`: the folds' fits and the out-of-fold image-level figures."""

    folds: list[FoldFit]
    accuracy: float
    macro_f1: float
    covid19_sensitivity: float | None
    covid19_specificity: float | None
    ece: float


class CalibratedDecision(DecisionSection, total=False):
    """What :func:`calibrate_bundle` returns: the new ``decision`` section and the image-level
    metrics at the fitted operating point."""

    metrics: ImageLevelMetrics


def patient_folds(records: Sequence[ImageRecord], folds: int) -> np.ndarray:
    """Fold index per record, ``0..folds-1``, by a hash of the patient id (a patient stays in one fold)."""
    return np.array(
        [int.from_bytes(hashlib.sha256(r.patient_id.encode()).digest()[:8], "big") % folds for r in records]
    )


def cross_fitted_metrics(
    evidence: np.ndarray, y_true: np.ndarray, fold: np.ndarray, *, target_covid_sensitivity: float
) -> CrossFitted:
    """Image-level metrics of out-of-fold decisions (threshold and temperature fitted on the other folds)."""
    predicted = np.zeros(len(y_true), np.int64)
    probabilities = np.zeros((len(y_true), 3), np.float64)
    fitted: list[FoldFit] = []
    for k in np.unique(fold):
        held, rest = fold == k, fold != k
        if not (y_true[rest] == 0).any():
            raise ValueError("a fold leaves no covid19 image to fit on: use fewer folds")
        threshold, _ = choose_threshold(
            evidence[rest], y_true[rest], target_covid_sensitivity=target_covid_sensitivity
        )
        temperature = fit_temperature(evidence[rest], y_true[rest])
        predicted[held] = labels_at(evidence[held], threshold)
        probabilities[held] = scaled_probabilities(decision_weights(evidence[held]), temperature)
        fitted.append(
            {"fold": int(k), "n": int(held.sum()), "threshold": threshold, "temperature": temperature}
        )
    metrics = image_level_metrics(y_true, probabilities, y_pred=predicted)
    per_class = metrics["per_class"]
    return {
        "folds": fitted,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "covid19_sensitivity": per_class["covid19"]["sensitivity"],
        "covid19_specificity": per_class["covid19"]["specificity"],
        "ece": metrics["ece"],
    }


def calibrate_bundle(
    bundle: str | os.PathLike,
    *,
    data: str | os.PathLike | None,
    split: str = "val",
    target_covid_sensitivity: float = 0.975,
    folds: int = 5,
    tier: str | None = None,
    device: str = "cpu",
    show_progress: bool = True,
    write: bool = True,
) -> CalibratedDecision:
    """Fit threshold and temperature on ``split``, write them (and the new figures) into the card.

    Returns the new ``decision`` section. ``split`` must not be a test split: the fit would tune to it.
    The card's ``metrics[split]`` is replaced by the figures at the fitted operating point, marked
    ``decision_fitted_on_this_split``; ``decision.fitted.cross_fitted`` holds the out-of-fold estimate.
    """
    if split == "test":
        raise ValueError("never fit the decision on the test split: use val")
    if not 0 < target_covid_sensitivity <= 1:
        raise ValueError(f"target Covid-19 sensitivity must be in (0, 1], got {target_covid_sensitivity}")
    bundle = Path(bundle)
    model, card = load_bundle(bundle, device=device)
    if card.get("purpose", "assess") != "assess":
        raise ValueError(f"{bundle} is a {card['purpose']} model: only assessment models have a decision")
    records = load_records(data, split=split, tier=tier)
    size = int(card["architecture"]["max_size"])
    predictions, ground_truth, labels, _ = infer_records(
        model, records, size=size, device=device, show_progress=show_progress, desc=f"calibrate on {split}"
    )
    image_weight = image_weight_of(card)
    evidence = np.stack(
        [combined_evidence(p.labels, p.scores, p.image_probs, image_weight) for p in predictions]
    )
    y_true = np.asarray(labels, np.int64)
    threshold, achieved = choose_threshold(
        evidence, y_true, target_covid_sensitivity=target_covid_sensitivity
    )
    if achieved < target_covid_sensitivity:
        logger.warning(
            "no threshold reaches Covid-19 sensitivity %.3f on %s: the highest, %.3f, is at threshold %.4f "
            "(the detector gives some Covid-19 images no Covid-19 box at all)",
            target_covid_sensitivity,
            split,
            achieved,
            threshold,
        )
    temperature = fit_temperature(evidence, y_true)
    before = evaluate_detections(
        predictions,
        ground_truth,
        labels,
        threshold=float(card["decision"]["threshold"]),
        image_weight=image_weight,
    )
    after = evaluate_detections(
        predictions,
        ground_truth,
        labels,
        threshold=threshold,
        temperature=temperature,
        image_weight=image_weight,
    )
    decision: DecisionSection = {
        "rule": rule_name(image_weight),
        "threshold": threshold,
        "temperature": temperature,
        "image_weight": image_weight,
        "description": "see covidet.detection.decision; threshold and temperature by covidet calibrate",
        "fitted": {
            "on_split": split,
            "tier": tier,
            "n_images": len(records),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "target_covid19_sensitivity": target_covid_sensitivity,
            "achieved_covid19_sensitivity": achieved,
            "previous": {
                "threshold": float(card["decision"]["threshold"]),
                "temperature": float(card["decision"].get("temperature", 1.0)),
                "accuracy": before.report["image"]["accuracy"],
                "ece": before.report["image"]["ece"],
            },
            "cross_fitted": cross_fitted_metrics(
                evidence,
                y_true,
                patient_folds(records, folds),
                target_covid_sensitivity=target_covid_sensitivity,
            ),
        },
    }
    if write:
        card["decision"] = decision
        report = {**after.report, "decision_fitted_on_this_split": True}
        card.setdefault("metrics", {})[split] = report
        path = bundle / CARD_FILE
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        temporary.replace(path)
        logger.info(
            "wrote decision threshold %.4f and temperature %.3f into %s", threshold, temperature, path
        )
    return {**decision, "metrics": after.report["image"]}
