"""How the box evidence is aggregated per class: the shipped max-score rule against sums over both lungs.

    python benchmarks/decision_rules.py --out benchmarks/results/decision_rules.json

The decision rule (``covidet.detection.decision``) reads, per class, the highest score of a detection of
that class. A Covid-19 image usually has two lungs, each with its own box; this script asks whether
evidence combined over both boxes decides better. Aggregations of the scores ``s`` of one class's
detections on one image:

* ``max``: ``max(s)`` (the shipped rule, ``max-score-v1``);
* ``noisy_or``: ``1 - prod(1 - s)``;
* ``top2_mean``: mean of the two highest (one box counts half);
* ``sum_top2``: sum of the two highest, capped at 1.

Each is scored on the val split with the shipped model at the rule's default threshold 0.5 and
cross-fitted (5 patient folds; threshold for 97.5% Covid-19 sensitivity and temperature fitted on the
other folds), exactly as ``covidet calibrate`` does. It is model selection on val: the figures are
reported for every rule, not just the winner.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import numpy as np

from _report import model_benchmark_args, write_report  # benchmarks/ is on sys.path when a script runs
from covidet.detection.bundle import default_bundle_path, load_bundle
from covidet.detection.calibrate import cross_fitted_metrics, patient_folds
from covidet.detection.data import load_records
from covidet.detection.decision import decision_weights, labels_at, scaled_probabilities
from covidet.detection.evaluate import infer_records
from covidet.detection.metrics import ImageDetections, image_level_metrics
from covidet.domain import CLASS_NAMES, model_id_from_label


def aggregate(detections: ImageDetections, how: str) -> np.ndarray:
    """Evidence ``[3]`` (CLASS_NAMES order) from one image's detections by the aggregation ``how``."""
    assert detections.scores is not None
    evidence = np.zeros(len(CLASS_NAMES))
    for index in range(len(CLASS_NAMES)):
        scores = np.sort(detections.scores[detections.labels == index + 1])[::-1]
        if len(scores) == 0:
            continue
        if how == "max":
            evidence[index] = scores[0]
        elif how == "noisy_or":
            evidence[index] = 1.0 - np.prod(1.0 - scores)
        elif how == "top2_mean":
            evidence[index] = scores[:2].sum() / 2.0
        elif how == "sum_top2":
            evidence[index] = min(1.0, float(scores[:2].sum()))
        else:
            raise ValueError(how)
    return evidence


def rule_figures(evidence: np.ndarray, truth: np.ndarray, folds: np.ndarray) -> dict[str, dict[str, float]]:
    """Image-level figures of the rule on ``evidence [N, 3]``: at threshold 0.5, and cross-fitted over
    ``folds`` for 97.5% Covid-19 sensitivity (as ``covidet calibrate`` fits it)."""
    at_default = image_level_metrics(
        truth, scaled_probabilities(decision_weights(evidence)), y_pred=labels_at(evidence, 0.5)
    )
    crossed = cross_fitted_metrics(evidence, truth, folds, target_covid_sensitivity=0.975)
    return {
        "threshold_0.5": {
            "accuracy": at_default["accuracy"],
            "macro_f1": at_default["macro_f1"],
            "macro_auc": at_default["macro_auc"],
            "covid19_sensitivity": at_default["per_class"]["covid19"]["sensitivity"],
            "covid19_specificity": at_default["per_class"]["covid19"]["specificity"],
            "pneumonia_sensitivity": at_default["per_class"]["pneumonia"]["sensitivity"],
        },
        "cross_fitted_for_0.975": {k: v for k, v in crossed.items() if k != "folds"},
    }


def main() -> None:
    args, data = model_benchmark_args(__doc__, "benchmarks/results/decision_rules.json")
    bundle = args.model or default_bundle_path()
    model, card = load_bundle(bundle)
    records = load_records(data, split="val")
    predictions, *_ = infer_records(model, records, size=int(card["architecture"]["max_size"]))
    truth = np.array([model_id_from_label(r.label) - 1 for r in records])
    folds = patient_folds(records, 5)
    results = {}
    for how in ("max", "noisy_or", "top2_mean", "sum_top2"):
        evidence = np.stack([aggregate(p, how) for p in predictions])
        results[how] = rule_figures(evidence, truth, folds)
        print(how, json.dumps(results[how]), flush=True)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "model": {"name": card.get("name"), "version": card.get("version")},
        "split": "val",
        "images": len(records),
        "results": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
