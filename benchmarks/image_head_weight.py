"""How much the image head should count in the decision: box evidence, image head, and mixes of both.

    python benchmarks/image_head_weight.py --model runs/ih-mnv3-384/bundle \
        --out benchmarks/results/image_head_weight.json

For a bundle trained with ``--image-head``, the decision rule (version 2, ``covidet.detection.decision``)
reads the evidence ``s = (1 - w) * box evidence + w * image-head probabilities``. Training fixes ``w``
beforehand (``--image-weight``, default 0.5) and selects the checkpoint with it. This script scores the
same val-split predictions at ``w`` = 0 (boxes only: what the detector part alone decides), 0.25, 0.5,
0.75 and 1 (image head only), at threshold 0.5 and cross-fitted (5 patient folds; threshold for 97.5%
Covid-19 sensitivity and temperature fitted on the other folds). It is an ablation, reported for every
``w``: picking the best ``w`` off these figures would be tuning on val, so the shipped ``w`` stays the one
fixed before training unless a train-split measurement says otherwise.

``head_label_by_detection`` counts, per true label, the image head's own label on images where the
detector found a box scoring >= ``AssessmentRCNN.POOL_MIN_SCORE`` and on images where it found none. For
a head pooled inside the boxes (``--image-head-pool boxes``) the second group is pooled over the whole
image instead: a head whose label follows the group rather than the image reads where it pooled.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import numpy as np

from _report import model_benchmark_args, write_report  # benchmarks/ is on sys.path when a script runs
from covidet.detection.bundle import default_bundle_path, load_bundle
from covidet.detection.calibrate import patient_folds
from covidet.detection.data import load_records
from covidet.detection.decision import combined_evidence, image_weight_of
from covidet.detection.evaluate import infer_records
from covidet.detection.model import AssessmentRCNN
from covidet.domain import CLASS_NAMES, model_id_from_label
from decision_rules import rule_figures

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main() -> None:
    args, data = model_benchmark_args(__doc__, "benchmarks/results/image_head_weight.json")
    bundle = args.model or default_bundle_path()
    model, card = load_bundle(bundle)
    if not card["architecture"].get("image_head"):
        raise SystemExit(f"{bundle} has no image head (train one with `covidet train --image-head`)")
    records = load_records(data, split="val")
    predictions, *_ = infer_records(model, records, size=int(card["architecture"]["max_size"]))
    truth = np.array([model_id_from_label(r.label) - 1 for r in records])
    folds = patient_folds(records, 5)
    results = {}
    for weight in WEIGHTS:
        evidence = np.stack(
            [combined_evidence(p.labels, p.scores, p.image_probs, weight) for p in predictions]
        )
        results[str(weight)] = rule_figures(evidence, truth, folds)
        print(weight, json.dumps(results[str(weight)]), flush=True)
    by_detection: dict[str, dict[str, dict[str, int]]] = {}
    for prediction, record in zip(predictions, records, strict=True):
        found = bool(np.any(np.asarray(prediction.scores) >= AssessmentRCNN.POOL_MIN_SCORE))
        group = "detections" if found else "no_detections"
        head_label = CLASS_NAMES[int(np.argmax(prediction.image_probs))].value
        counts = by_detection.setdefault(record.label.value, {}).setdefault(group, {})
        counts[head_label] = counts.get(head_label, 0) + 1
    print("head label by detection:", json.dumps(by_detection), flush=True)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "model": {"name": card.get("name"), "version": card.get("version"), "bundle": str(bundle)},
        "image_weight_in_card": image_weight_of(card),
        "split": "val",
        "images": len(records),
        "note": "an ablation on val: every weight is reported; none is selected from these figures",
        "results": results,
        "image_head_pool": card["architecture"].get("image_head_pool", "image"),
        "head_label_by_detection": by_detection,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
