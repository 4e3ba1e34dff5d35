"""Evaluate a model bundle on a dataset split: JSON report and PNG plots."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader

from covidet import DISCLAIMER
from covidet.detection.bundle import load_bundle
from covidet.detection.data import DetectionDataset, ImageRecord, collate_detection, load_records
from covidet.detection.decision import DEFAULT_THRESHOLD, assess, image_weight_of
from covidet.detection.engine import EvaluationReport, evaluate_detections, run_inference
from covidet.detection.metrics import (
    ImageDetections,
    LungOverlap,
    disease_boxes_on_lungs,
    save_metric_plots,
)
from covidet.detection.predictor import DEFAULT_MIN_SCORE
from covidet.detection.shortcuts import (
    GeometryBaseline,
    LabelSummary,
    WithinSource,
    geometry_baseline,
    v1_rows_metrics,
    within_source_metrics,
)
from covidet.detection.transforms import (
    Compose,
    CropBorder,
    DownsampleRoundTrip,
    PadToSquare,
    ResizeLongerSide,
)
from covidet.domain import CLASS_NAMES

__all__ = [
    "BundleEvaluation",
    "SaliencySummary",
    "evaluate_bundle",
    "infer_records",
    "saliency_on_lungs",
]

logger = logging.getLogger(__name__)

#: A deterministic ``(image, target) -> (image, target)`` transform (:mod:`covidet.detection.transforms`).
Transform = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class SaliencyClass(TypedDict):
    """Grad-CAM mass on the lungs for one disease class (``None`` without findings)."""

    findings: int
    mass_in_lungs_median: float | None
    mass_in_lungs_mean: float | None
    lung_area_share_median: float | None
    lung_area_share_mean: float | None


class SaliencySummary(TypedDict):
    """The report of :func:`saliency_on_lungs`."""

    method: str
    min_score: float
    per_image: int
    covid19: SaliencyClass
    pneumonia: SaliencyClass
    not_reproduced: int


class ModelRef(TypedDict):
    """The evaluated model: its card's name and version, and the bundle folder."""

    name: str | None
    version: str | None
    bundle: str


class BundleEvaluation(EvaluationReport):
    """``report.json`` of :func:`evaluate_bundle`: the split's :class:`EvaluationReport` and the figures
    the docstring of :func:`evaluate_bundle` lists."""

    model: ModelRef
    split: str
    tier: str | None
    created: str
    per_source: dict[str, dict[str, int | float]]
    v1_rows: LabelSummary | None
    within_source: dict[str, WithinSource]
    geometry_baseline: GeometryBaseline | None
    stability_probes: dict[str, dict[str, float]]
    disease_boxes_on_lungs: LungOverlap
    stability: dict[str, float] | None
    saliency_on_lungs: SaliencySummary | None
    seconds_per_image: float
    disclaimer: str


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


def saliency_on_lungs(
    model: torch.nn.Module,
    records: list[ImageRecord],
    predictions: list[ImageDetections],
    ground_truth: list[ImageDetections],
    *,
    size: int,
    min_score: float = DEFAULT_MIN_SCORE,
    per_image: int = 2,
    show_progress: bool = True,
) -> SaliencySummary:
    """Where the evidence for disease findings lies: Grad-CAM mass inside the annotated lung boxes.

    For each image with lung boxes, its ``per_image`` highest-scoring covid19/pneumonia detections
    scoring at least ``min_score`` are explained (:func:`covidet.detection.saliency.finding_grad_cam`);
    ``mass_in_lungs`` is the share of each map inside the union of the image's lung boxes. The chance
    level is ``lung_area_share``, the share of the image those boxes cover: a map spread evenly would
    score that. Returns per class (``covid19``, ``pneumonia``) ``findings``, the median and mean of both,
    and ``not_reproduced`` (detections that did not come back with gradients on). Boxes and maps are in
    the model input's pixels (``predictions``/``ground_truth`` from :func:`infer_records`).
    """
    from tqdm import tqdm

    from covidet.detection.saliency import finding_grad_cam, mass_inside

    dataset = DetectionDataset(records, Compose([ResizeLongerSide(size)]))
    shares: dict[str, list[tuple[float, float]]] = {"covid19": [], "pneumonia": []}
    not_reproduced = 0
    boxed = [i for i, truth in enumerate(ground_truth) if len(truth.boxes)]
    for index in tqdm(boxed, desc="saliency", unit="image", disable=not show_progress):
        prediction, truth = predictions[index], ground_truth[index]
        assert prediction.scores is not None
        disease = [
            j
            for j in np.argsort(-prediction.scores)
            if prediction.scores[j] >= min_score and CLASS_NAMES[prediction.labels[j] - 1] in shares
        ][:per_image]
        if not disease:
            continue
        image, _ = dataset[index]
        lungs = torch.as_tensor(truth.boxes, dtype=torch.float32)
        area = float(mass_inside(torch.ones(image.shape[-2:]), lungs))
        for j in disease:
            box = torch.as_tensor(prediction.boxes[j], dtype=torch.float32)
            heat = finding_grad_cam(model, image, box, int(prediction.labels[j]))
            if heat is None:
                not_reproduced += 1
                continue
            shares[CLASS_NAMES[prediction.labels[j] - 1]].append((mass_inside(heat, lungs), area))
    per_class: dict[str, SaliencyClass] = {}
    for name, values in shares.items():
        inside = np.array([v[0] for v in values])
        area = np.array([v[1] for v in values])
        per_class[name] = {
            "findings": len(values),
            "mass_in_lungs_median": float(np.median(inside)) if len(values) else None,
            "mass_in_lungs_mean": float(inside.mean()) if len(values) else None,
            "lung_area_share_median": float(np.median(area)) if len(values) else None,
            "lung_area_share_mean": float(area.mean()) if len(values) else None,
        }
    return {
        "method": "grad-cam",
        "min_score": min_score,
        "per_image": per_image,
        "covid19": per_class["covid19"],
        "pneumonia": per_class["pneumonia"],
        "not_reproduced": not_reproduced,
    }


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
    shape_probes: bool = True,
    baseline_split: str | None = "train",
    saliency: bool = False,
) -> BundleEvaluation:
    """Run ``bundle`` on every image of ``split`` and compute box and image-level metrics.

    Also reports accuracy per data source (``per_source``: a model that reads the source instead of the
    lungs shows it here) and, unless ``stability_side`` is ``None``, ``stability``: the share of images
    whose label is unchanged when the image is down-sampled to ``stability_side`` px and back up, and
    ``stability_probes`` holds that figure and, with ``shape_probes``, the same under padding to a square
    and under cropping 8 % of each edge. The shortcut guards of :mod:`covidet.detection.shortcuts` come
    too: ``v1_rows``, ``within_source`` and, unless ``baseline_split`` is ``None``, ``geometry_baseline``
    (a width/height/aspect forest fitted on ``baseline_split``, scored here). Also
    ``disease_boxes_on_lungs``: the IoU of covid19/pneumonia boxes with the annotated lung boxes. With
    ``saliency``, ``saliency_on_lungs`` (:func:`saliency_on_lungs`): how much of each disease finding's
    Grad-CAM lies on the annotated lungs (slow: a few seconds per finding).

    Writes ``report.json`` and ``confusion_matrix.png``, ``roc.png``, ``reliability.png`` into
    ``out_dir`` when given. The threshold defaults to the model card's.
    """
    model, card = load_bundle(bundle, device=device)
    threshold = float(
        threshold if threshold is not None else card.get("decision", {}).get("threshold", DEFAULT_THRESHOLD)
    )
    temperature = float(card.get("decision", {}).get("temperature", 1.0))
    image_weight = image_weight_of(card)
    records = load_records(data, split=split, tier=tier)
    size = int(card["architecture"]["max_size"])
    predictions, ground_truth, labels, seconds = infer_records(
        model, records, size=size, device=device, show_progress=show_progress, desc=f"evaluate {split}"
    )
    result = evaluate_detections(
        predictions,
        ground_truth,
        labels,
        threshold=threshold,
        temperature=temperature,
        image_weight=image_weight,
    )
    decided = [a.label for a in result.assessments]
    per_source: dict[str, dict[str, int | float]] = {}
    for record, label in zip(records, decided, strict=True):
        entry = per_source.setdefault(record.source or "unknown", {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(label == record.label)
    for entry in per_source.values():
        entry["accuracy"] = entry["correct"] / entry["n"]

    def labels_under(probe: Transform, desc: str) -> list[str]:
        """The decided labels when every image first goes through ``probe`` (then the common scale)."""
        dataset = DetectionDataset(records, Compose([probe, ResizeLongerSide(size)]))
        loader = DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate_detection, num_workers=1)
        probed, *_ = run_inference(
            model, loader, device=torch.device(device), show_progress=show_progress, desc=desc
        )
        return [
            assess(
                p.labels, p.scores, threshold=threshold, image_probs=p.image_probs, image_weight=image_weight
            ).label
            for p in probed
        ]

    def probe_summary(low: list[str]) -> dict[str, float]:
        return {
            "unchanged": sum(a == b for a, b in zip(decided, low, strict=True)) / len(low),
            "accuracy_degraded": sum(lab == r.label for lab, r in zip(low, records, strict=True)) / len(low),
        }

    probes: dict[str, Transform] = {}
    if stability_side is not None:
        probes[f"downsample_{stability_side}"] = DownsampleRoundTrip(stability_side)
    if shape_probes:
        probes["pad_to_square"] = PadToSquare()
        probes["crop_border_8pct"] = CropBorder(0.08)
    stability_probes = {name: probe_summary(labels_under(probe, name)) for name, probe in probes.items()}
    stability = (
        {"side": stability_side, **stability_probes[f"downsample_{stability_side}"]}
        if stability_side is not None
        else None
    )
    baseline = None
    if baseline_split:
        baseline = geometry_baseline(load_records(data, split=baseline_split, tier=tier), records)
        baseline["fitted_on"] = baseline_split
    report: BundleEvaluation = {
        "model": {"name": card.get("name"), "version": card.get("version"), "bundle": str(bundle)},
        "split": split,
        "tier": tier,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **result.report,
        "per_source": per_source,
        "v1_rows": v1_rows_metrics(records, decided),
        "within_source": within_source_metrics(records, result.assessments),
        "geometry_baseline": baseline,
        "stability_probes": stability_probes,
        "disease_boxes_on_lungs": disease_boxes_on_lungs(predictions, ground_truth),
        "stability": stability,
        "saliency_on_lungs": (
            saliency_on_lungs(
                model, records, predictions, ground_truth, size=size, show_progress=show_progress
            )
            if saliency
            else None
        ),
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
