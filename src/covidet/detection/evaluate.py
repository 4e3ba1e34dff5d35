"""Evaluate a model bundle on a dataset split: JSON report and PNG plots."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from covidet import DISCLAIMER
from covidet.detection.bundle import load_bundle
from covidet.detection.data import DetectionDataset, collate_detection, load_records
from covidet.detection.decision import DEFAULT_THRESHOLD
from covidet.detection.engine import evaluate_detections, run_inference
from covidet.detection.metrics import save_metric_plots
from covidet.detection.transforms import Compose, ResizeLongerSide

__all__ = ["evaluate_bundle"]

logger = logging.getLogger(__name__)


def evaluate_bundle(
    bundle: str | os.PathLike,
    *,
    data: str | os.PathLike | None,
    split: str = "val",
    tier: str | None = None,
    out_dir: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str = "cpu",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run ``bundle`` on every image of ``split`` and compute box and image-level metrics.

    Writes ``report.json`` and ``confusion_matrix.png``, ``roc.png``, ``reliability.png`` into
    ``out_dir`` when given. The threshold defaults to the model card's.
    """
    model, card = load_bundle(bundle, device=device)
    threshold = float(
        threshold if threshold is not None else card.get("decision", {}).get("threshold", DEFAULT_THRESHOLD)
    )
    records = load_records(data, split=split, tier=tier)
    size = int(card["architecture"]["max_size"])
    dataset = DetectionDataset(records, Compose([ResizeLongerSide(size)]))
    loader = DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate_detection, num_workers=1)
    predictions, ground_truth, labels, seconds = run_inference(
        model, loader, device=torch.device(device), show_progress=show_progress, desc=f"evaluate {split}"
    )
    result = evaluate_detections(predictions, ground_truth, labels, threshold=threshold)
    report = {
        "model": {"name": card.get("name"), "version": card.get("version"), "bundle": str(bundle)},
        "split": split,
        "tier": tier,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **result.report,
        "seconds_per_image": round(seconds, 4),
        "disclaimer": DISCLAIMER,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        save_metric_plots(
            result.report["image"], out, y_true=result.y_true, probabilities=result.probabilities
        )
        logger.info("wrote evaluation report and plots to %s", out)
    return report
