"""What a model must beat: trivial baselines on the val split, overall, per source and within source.

    python benchmarks/baselines.py --out benchmarks/results/baselines.json

Each baseline is fitted on the **train** split only and scored once on val (never tuned on val):

* ``majority``: always the most frequent train label;
* ``size_rule``: longer side <= 224 px -> normal, else covid19 (the 224-px normals of one source);
* ``geometry_forest``: a random forest on width, height and aspect ratio alone
  (:func:`covidet.detection.shortcuts.geometry_baseline`, the one ``covidet evaluate`` shows);
* ``pixels_32``: a class-balanced logistic regression on the 32x32 down-sampled grey pixels;
* ``within_source_pixels_64``: per source that holds two classes, a class-balanced logistic regression on
  64x64 pixels fitted on that source's train images of those two classes, scored on its val images.

Figures use :func:`covidet.detection.shortcuts.label_summary` (accuracy, macro F1, Covid-19 sensitivity and
specificity), so they read like ``covidet evaluate``'s.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from _report import write_report  # benchmarks/ is on sys.path when a script runs
from covidet.detection.data import ImageRecord, load_records
from covidet.detection.shortcuts import geometry_baseline, label_summary, within_source_metrics
from covidet.domain import Assessment, Label

REPO = Path(__file__).resolve().parents[1]


def _pixels(records: list[ImageRecord], side: int) -> np.ndarray:
    """``[N, side * side]`` grey values in [0, 1] of each image squashed to ``side`` x ``side``."""
    rows = []
    for record in tqdm(records, desc=f"{side}x{side} pixels", leave=False):
        with Image.open(record.path) as image:
            rows.append(np.asarray(image.convert("L").resize((side, side), Image.BILINEAR), np.float32) / 255)
    return np.stack(rows).reshape(len(records), -1)


def _with_per_source(summary: dict[str, Any], records: list[ImageRecord], predicted: list[str]) -> dict:
    summary["per_source"] = {
        source: float(
            np.mean(
                [p == r.label.value for r, p in zip(records, predicted, strict=True) if r.source == source]
            )
        )
        for source in sorted({r.source for r in records})
    }
    return summary


def _logistic() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000))


def run(data: str | None) -> dict[str, Any]:
    train = load_records(data, split="train")
    val = load_records(data, split="val")
    truth = [r.label.value for r in val]
    report: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_train": len(train),
        "n_val": len(val),
    }
    majority = Counter(r.label.value for r in train).most_common(1)[0][0]
    report["majority"] = _with_per_source(
        label_summary(truth, [majority] * len(val)), val, [majority] * len(val)
    )
    sizes = []
    for record in val:
        with Image.open(record.path) as image:
            sizes.append(max(image.size))
    rule = ["normal" if side <= 224 else "covid19" for side in sizes]
    report["size_rule"] = _with_per_source(label_summary(truth, rule), val, rule)
    report["geometry_forest"] = geometry_baseline(train, val)

    model = _logistic().fit(_pixels(train, 32), [r.label.value for r in train])
    predicted = [str(p) for p in model.predict(_pixels(val, 32))]
    report["pixels_32"] = _with_per_source(label_summary(truth, predicted), val, predicted)
    # Within source, the same pairs covidet evaluate reports, scored by the whole-split pixel model...
    probabilities = model.predict_proba(_pixels(val, 32))
    classes = [str(c) for c in model.classes_]
    assessments = [
        Assessment(
            label=Label(p),
            probabilities={Label(c): float(q) for c, q in zip(classes, row, strict=True)},
            threshold=0.5,
        )
        for p, row in zip(predicted, probabilities, strict=True)
    ]
    report["pixels_32"]["within_source"] = within_source_metrics(val, assessments)
    # ... and by a pixel model fitted on that source alone (no source shortcut to learn).
    within: dict[str, Any] = {}
    for source, entry in report["pixels_32"]["within_source"].items():
        a, b = entry["classes"]
        source_train = [r for r in train if r.source == source and r.label.value in (a, b)]
        source_val = [r for r in val if r.source == source and r.label.value in (a, b)]
        if len({r.label for r in source_train}) < 2:
            continue
        fitted = _logistic().fit(_pixels(source_train, 64), [r.label.value == a for r in source_train])
        score = fitted.predict_proba(_pixels(source_val, 64))[:, 1]
        positive = np.array([r.label.value == a for r in source_val])
        within[source] = {
            "classes": [a, b],
            "n_train": len(source_train),
            "n_val": len(source_val),
            "accuracy": float(np.mean((score >= 0.5) == positive)),
            "auc": float(roc_auc_score(positive, score)) if 0 < positive.sum() < len(positive) else None,
            "majority": float(max(positive.mean(), 1 - positive.mean())),
        }
    report["within_source_pixels_64"] = within
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=os.environ.get("COVIDET_DATA", str(REPO.parent / "shared/data/cxr"))
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/baselines.json")
    args = parser.parse_args()
    write_report(run(args.data), args.out)


if __name__ == "__main__":
    main()
