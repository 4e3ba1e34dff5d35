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
from covidet.detection.data import DetectionDataset, ImageRecord, collate_detection, load_records
from covidet.detection.decision import DEFAULT_THRESHOLD, assess
from covidet.detection.engine import evaluate_detections, run_inference
from covidet.detection.metrics import ImageDetections, disease_boxes_on_lungs, save_metric_plots
from covidet.detection.transforms import Compose, DownsampleRoundTrip, ResizeLongerSide

__all__ = ["evaluate_bundle", "infer_records"]

logger = logging.getLogger(__name__)


def infer_records(
    model: torch.nn.Module,
    records: list[ImageRecord],
    *,
    size: int,
    device: str = "cpu",
    show_progress: bool = True,
    desc: str = "inference",
) -> tuple[list[ImageDetections], list[ImageDetections], list[int], float]:
    """:func:`run_inference` over ``records`` at the common scale ``size``, one image per pass.

    Returns ``(predictions, ground_truth, image_labels, seconds_per_image)``, boxes in resized pixels.
    """
    dataset = DetectionDataset(records, Compose([ResizeLongerSide(size)]))
    loader = DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate_detection, num_workers=1)
    return run_inference(model, loader, device=torch.device(device), show_progress=show_progress, desc=desc)


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
    stability_side: int | None = 224,
) -> dict[str, Any]:
    """Run ``bundle`` on every image of ``split`` and compute box and image-level metrics.

    Also reports accuracy per data source (``per_source``: a model that reads the source instead of the
    lungs shows it here) and, unless ``stability_side`` is ``None``, ``stability``: the share of images
    whose label is unchanged when the image is down-sampled to ``stability_side`` px and back up, and
    ``disease_boxes_on_lungs``: the IoU of covid19/pneumonia boxes with the annotated lung boxes.

    Writes ``report.json`` and ``confusion_matrix.png``, ``roc.png``, ``reliability.png`` into
    ``out_dir`` when given. The threshold defaults to the model card's.
    """
    model, card = load_bundle(bundle, device=device)
    threshold = float(
        threshold if threshold is not None else card.get("decision", {}).get("threshold", DEFAULT_THRESHOLD)
    )
    temperature = float(card.get("decision", {}).get("temperature", 1.0))
    records = load_records(data, split=split, tier=tier)
    size = int(card["architecture"]["max_size"])
    predictions, ground_truth, labels, seconds = infer_records(
        model, records, size=size, device=device, show_progress=show_progress, desc=f"evaluate {split}"
    )
    result = evaluate_detections(
        predictions, ground_truth, labels, threshold=threshold, temperature=temperature
    )
    decided = [a.label for a in result.assessments]
    per_source: dict[str, dict[str, int | float]] = {}
    for record, label in zip(records, decided, strict=True):
        entry = per_source.setdefault(record.source or "unknown", {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(label == record.label)
    for entry in per_source.values():
        entry["accuracy"] = entry["correct"] / entry["n"]
    stability = None
    if stability_side is not None:
        degraded = DetectionDataset(
            records, Compose([DownsampleRoundTrip(stability_side), ResizeLongerSide(size)])
        )
        degraded_loader = DataLoader(
            degraded, batch_size=1, shuffle=False, collate_fn=collate_detection, num_workers=1
        )
        low_predictions, *_ = run_inference(
            model,
            degraded_loader,
            device=torch.device(device),
            show_progress=show_progress,
            desc=f"stability at {stability_side}px",
        )
        low = [assess(p.labels, p.scores, threshold=threshold).label for p in low_predictions]
        stability = {
            "side": stability_side,
            "unchanged": sum(a == b for a, b in zip(decided, low, strict=True)) / len(low),
            "accuracy_degraded": sum(lab == r.label for lab, r in zip(low, records, strict=True)) / len(low),
        }
    report = {
        "model": {"name": card.get("name"), "version": card.get("version"), "bundle": str(bundle)},
        "split": split,
        "tier": tier,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **result.report,
        "per_source": per_source,
        "disease_boxes_on_lungs": disease_boxes_on_lungs(predictions, ground_truth),
        "stability": stability,
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
