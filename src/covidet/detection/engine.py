"""Training and evaluation engine in the style of torchvision's ``references/detection``:
plain functions (:func:`train_one_epoch`, :func:`run_inference`, :func:`evaluate_detections`)
that a short driver (:mod:`covidet.detection.train`) calls.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from covidet.detection.card import DecisionSection
from covidet.detection.decision import DEFAULT_THRESHOLD, assess, rule_name
from covidet.detection.metrics import (
    CocoMetrics,
    ImageDetections,
    ImageLevelMetrics,
    coco_detection_metrics,
    image_level_metrics,
)
from covidet.domain import CLASS_NAMES, Assessment, model_id_from_label

__all__ = [
    "EvaluationReport",
    "EvaluationResult",
    "NonFiniteLossError",
    "detections_from_output",
    "evaluate_detections",
    "run_inference",
    "summary_metrics",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; training stops rather than corrupt the weights."""


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    *,
    epoch: int,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_iterations: int | None = None,
    grad_clip: float | None = 10.0,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    on_iteration: Callable[[int, dict[str, float]], None] | None = None,
    deadline: float | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader`` (batches of ``(images, targets)``); returns the mean of each loss.

    ``scheduler`` steps once per iteration. With ``scaler`` the forward pass runs under CUDA autocast
    (mixed precision); with ``amp_dtype`` (e.g. ``torch.bfloat16`` on CPU) under autocast to that type,
    without loss scaling (bf16 has fp32's exponent range). The epoch ends early once
    ``time.monotonic()`` passes ``deadline``.
    Raises :class:`NonFiniteLossError` on a NaN/inf loss.
    """
    model.train()
    totals: dict[str, float] = {}
    count = 0
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_iterations is not None and total is not None:
        total = min(total, max_iterations)
    progress = tqdm(
        loader, total=total, desc=f"epoch {epoch}", leave=False, disable=not show_progress, dynamic_ncols=True
    )
    for iteration, (images, targets) in enumerate(progress):
        if max_iterations is not None and iteration >= max_iterations:
            break
        if deadline is not None and time.monotonic() > deadline:
            logger.info("time budget reached during epoch %d after %d iterations", epoch, iteration)
            break
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(
            device_type=device.type, dtype=amp_dtype, enabled=scaler is not None or amp_dtype is not None
        ):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            parts = {k: float(v.detach()) for k, v in loss_dict.items()}
            raise NonFiniteLossError(
                f"non-finite loss {loss_value} at epoch {epoch}, iteration {iteration} ({parts}); "
                "lower --lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        values["loss"] = loss_value
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
        count += 1
        progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if on_iteration is not None:
            on_iteration(iteration, values)
    return {key: value / max(count, 1) for key, value in totals.items()}


@torch.inference_mode()
def detections_from_output(
    output: dict[str, torch.Tensor], image: torch.Tensor, image_id: int
) -> ImageDetections:
    """One torchvision detection output as :class:`ImageDetections`, in pixels of ``image [C, H, W]``."""
    height, width = image.shape[-2:]
    return ImageDetections(
        image_id=image_id,
        boxes=output["boxes"].float().cpu().numpy(),
        labels=output["labels"].cpu().numpy(),
        scores=output["scores"].float().cpu().numpy(),
        width=int(width),
        height=int(height),
        image_probs=output["image_probs"].float().cpu().numpy() if "image_probs" in output else None,
    )


def run_inference(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    show_progress: bool = True,
    desc: str = "inference",
) -> tuple[list[ImageDetections], list[ImageDetections], list[int], float]:
    """Run the model over a loader of ``(images, targets)`` in eval mode.

    Returns ``(predictions, ground_truth, image_labels, seconds_per_image)``; boxes are in pixels of the
    images the loader yields; ``image_labels`` are class indices 0..2 (model id - 1).
    """
    model.eval()
    predictions, ground_truth, image_labels = [], [], []
    seconds = 0.0
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    for images, targets in tqdm(
        loader, total=total, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True
    ):
        start = time.perf_counter()
        outputs = model([image.to(device) for image in images])
        seconds += time.perf_counter() - start
        for image, output, target in zip(images, outputs, targets, strict=True):
            image_id = int(target["image_id"])
            height, width = image.shape[-2:]
            predictions.append(detections_from_output(output, image, image_id))
            ground_truth.append(
                ImageDetections(
                    image_id=image_id,
                    boxes=target["boxes"].cpu().numpy(),
                    labels=target["labels"].cpu().numpy(),
                    width=int(width),
                    height=int(height),
                )
            )
            image_labels.append(int(target["image_label"]) - 1)
    return predictions, ground_truth, image_labels, seconds / max(len(predictions), 1)


class EvaluationReport(TypedDict):
    """The metrics report of one split (:func:`evaluate_detections`), JSON-ready.

    ``detection`` (per class) and ``lung_detection`` (class-agnostic) are COCO box metrics over the
    images with ground-truth boxes, ``None`` when there is none; ``image`` the image-level metrics of the
    decision rule, whose parameters ``decision`` records.
    """

    n_images: int
    n_images_with_boxes: int
    detection: CocoMetrics | None
    lung_detection: CocoMetrics | None
    image: ImageLevelMetrics
    decision: DecisionSection


@dataclass
class EvaluationResult:
    """Metrics report (JSON-ready) plus the arrays the plots need and the per-image decisions."""

    report: EvaluationReport
    y_true: np.ndarray
    probabilities: np.ndarray
    assessments: list[Assessment]


def evaluate_detections(
    predictions: list[ImageDetections],
    ground_truth: list[ImageDetections],
    image_labels: list[int],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    temperature: float = 1.0,
    image_weight: float = 0.0,
) -> EvaluationResult:
    """Box metrics and image-level metrics of one split.

    Box metrics (COCO, via pycocotools) use only images that have ground-truth boxes: a box-less image
    has unannotated lungs, not absent lungs, so a box there is not a false positive. ``lung_detection``
    ignores the class (does the detector find the lungs?). Image-level metrics apply the decision rule
    of :mod:`covidet.detection.decision` to every image (``temperature`` scales its probabilities;
    ``image_weight`` mixes in the image head's probabilities, version 2 of the rule).
    """
    annotated = [i for i, gt in enumerate(ground_truth) if len(gt.boxes)]
    gt_boxed = [ground_truth[i] for i in annotated]
    pred_boxed = [predictions[i] for i in annotated]
    detection: CocoMetrics | None = None
    lung: CocoMetrics | None = None
    if gt_boxed:
        detection = coco_detection_metrics(gt_boxed, pred_boxed)
        lung = coco_detection_metrics(gt_boxed, pred_boxed, class_agnostic=True)
    assessments = [
        assess(
            p.labels,
            p.scores,
            threshold=threshold,
            temperature=temperature,
            image_probs=p.image_probs,
            image_weight=image_weight,
        )
        for p in predictions
    ]
    probabilities = np.array([[a.probabilities[c] for c in CLASS_NAMES] for a in assessments], np.float64)
    y_pred = [model_id_from_label(a.label) - 1 for a in assessments]
    image = image_level_metrics(image_labels, probabilities.reshape(-1, len(CLASS_NAMES)), y_pred=y_pred)
    report: EvaluationReport = {
        "n_images": len(predictions),
        "n_images_with_boxes": len(gt_boxed),
        "detection": detection,
        "lung_detection": lung,
        "image": image,
        "decision": {
            "rule": rule_name(image_weight),
            "threshold": threshold,
            "temperature": temperature,
            "image_weight": image_weight,
        },
    }
    return EvaluationResult(
        report=report, y_true=np.asarray(image_labels), probabilities=probabilities, assessments=assessments
    )


def summary_metrics(report: EvaluationReport) -> dict[str, float]:
    """Flat scalar metrics of a report for logs and model selection (missing values are NaN)."""
    image = report["image"]
    detection = report.get("detection")
    lung = report.get("lung_detection")
    per_class = image["per_class"]
    return {
        "accuracy": image["accuracy"],
        "macro_f1": image["macro_f1"],
        "macro_auc": _nan(image.get("macro_auc")),
        "ece": image["ece"],
        "covid19_sensitivity": _nan(per_class["covid19"]["sensitivity"]),
        "covid19_specificity": _nan(per_class["covid19"]["specificity"]),
        "map": _nan(detection["map"] if detection else None),
        "map50": _nan(detection["map50"] if detection else None),
        "lung_map50": _nan(lung["map50"] if lung else None),
    }


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
