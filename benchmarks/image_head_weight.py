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
from covidet.domain import model_id_from_label
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
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "model": {"name": card.get("name"), "version": card.get("version"), "bundle": str(bundle)},
        "image_weight_in_card": image_weight_of(card),
        "split": "val",
        "images": len(records),
        "note": "an ablation on val: every weight is reported; none is selected from these figures",
        "results": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
