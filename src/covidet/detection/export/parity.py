"""The parity check: an accelerated model against torch on the same images (labels, paired boxes,
metrics, speed), by the criteria of :data:`PARITY_CRITERIA` (see :mod:`covidet.detection.export`)."""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import nn
from torchvision.ops import box_iou

from covidet.detection.data import DetectionDataset, ImageRecord
from covidet.detection.decision import DEFAULT_THRESHOLD
from covidet.detection.engine import detections_from_output, evaluate_detections, summary_metrics
from covidet.detection.metrics import ImageDetections
from covidet.detection.transforms import Compose, ResizeLongerSide

__all__ = ["COMPARED_METRICS", "PARITY_CRITERIA", "ParityFigures", "check_parity", "load_images"]

logger = logging.getLogger(__name__)

PARITY_CRITERIA: dict[str, float] = {
    "min_label_agreement": 0.99,
    "box_min_score": 0.3,
    "box_iou": 0.9,
    "min_share_boxes_iou_ok": 0.99,
    "max_metric_delta": 0.01,
}


#: Metrics compared between torch and the accelerated model (keys of ``engine.summary_metrics``).
COMPARED_METRICS = (
    "accuracy",
    "macro_f1",
    "macro_auc",
    "covid19_sensitivity",
    "covid19_specificity",
    "map",
    "map50",
    "lung_map50",
)

#: One candidate's result in :func:`check_parity`: ``ok`` by :data:`PARITY_CRITERIA`, label agreement
#: with torch, the greedy same-label box pairs (count, share at IoU >= 0.9, min and mean IoU; ``None``
#: without pairs), the :data:`COMPARED_METRICS` deltas (``None`` where either side is undefined), both
#: sides' summary metrics, and the median seconds per image of both with the speed-up.
ParityFigures = TypedDict(
    "ParityFigures",
    {
        "ok": bool,
        "n_images": int,
        "label_agreement": float,
        "box_pairs": int,
        "boxes_torch": int,
        "boxes_accelerated": int,
        "share_pairs_iou_ge_0.9": float,
        "min_pair_iou": float | None,
        "mean_pair_iou": float | None,
        "metric_deltas": dict[str, float | None],
        "max_abs_metric_delta": float,
        "metrics_torch": dict[str, float],
        "metrics_accelerated": dict[str, float],
        "seconds_per_image": float,
        "seconds_per_image_torch": float,
        "speedup_vs_torch": float | None,
    },
)


def load_images(records: Sequence[ImageRecord], size: int) -> list[tuple[torch.Tensor, dict]]:
    """Images resized as the predictor resizes them (longer side ``size``), 3 channels, with targets."""
    dataset = DetectionDataset(records, Compose([ResizeLongerSide(size)]))
    items = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        items.append((image.expand(3, -1, -1).contiguous(), target))
    return items


def _greedy_pairs(
    boxes_a: torch.Tensor, labels_a: torch.Tensor, boxes_b: torch.Tensor, labels_b: torch.Tensor
) -> list[float]:
    """IoUs of same-label pairs matched greedily by IoU (> 0.5), each box used once."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return []
    iou = box_iou(boxes_a, boxes_b)
    iou[labels_a[:, None] != labels_b[None, :]] = 0.0
    pairs = []
    while True:
        value = float(iou.max())
        if value <= 0.5:
            return pairs
        flat = int(iou.argmax())
        i, j = divmod(flat, iou.shape[1])
        pairs.append(value)
        iou[i, :] = 0.0
        iou[:, j] = 0.0


def check_parity(
    reference: nn.Module,
    candidates: dict[str, nn.Module],
    items: Sequence[tuple[torch.Tensor, dict]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    image_weight: float = 0.0,
) -> dict[str, ParityFigures]:
    """Compare each candidate model with ``reference`` (torch) on the same images.

    ``threshold`` and ``image_weight`` are the decision rule's (:mod:`covidet.detection.decision`).
    ``items`` are ``(image [3, H, W] in [0, 1], target)`` pairs as :class:`DetectionDataset` yields them
    (boxes in the image's pixels). All models run one image at a time, interleaved image by image, so
    their timings see the same machine load. Returns, per candidate name: the parity figures, ``ok``
    (see :data:`PARITY_CRITERIA`), ``seconds_per_image`` (median) and the reference's median.
    """
    criteria = PARITY_CRITERIA
    names = ["torch", *candidates]
    models = {"torch": reference, **candidates}
    predictions: dict[str, list[ImageDetections]] = {name: [] for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ground_truth, image_labels = [], []
    with torch.inference_mode():
        for index, (image, target) in enumerate(items):
            order = names if index % 2 == 0 else [names[0], *reversed(names[1:])]
            for name in order:
                began = time.perf_counter()
                (output,) = models[name]([image])
                seconds[name].append(time.perf_counter() - began)
                predictions[name].append(detections_from_output(output, image, index))
            ground_truth.append(
                ImageDetections(
                    image_id=index,
                    boxes=target["boxes"].numpy(),
                    labels=target["labels"].numpy(),
                    width=int(image.shape[-1]),
                    height=int(image.shape[-2]),
                )
            )
            image_labels.append(int(target["image_label"]) - 1)
    reference_result = evaluate_detections(
        predictions["torch"], ground_truth, image_labels, threshold=threshold, image_weight=image_weight
    )
    reference_metrics = summary_metrics(reference_result.report)
    reference_labels = [a.label for a in reference_result.assessments]
    torch_median = statistics.median(seconds["torch"])
    results: dict[str, ParityFigures] = {}
    for name in candidates:
        evaluated = evaluate_detections(
            predictions[name], ground_truth, image_labels, threshold=threshold, image_weight=image_weight
        )
        labels = [a.label for a in evaluated.assessments]
        agreement = sum(a == b for a, b in zip(labels, reference_labels, strict=True)) / max(len(labels), 1)
        ious: list[float] = []
        n_reference = n_candidate = 0
        for ref, cand in zip(predictions["torch"], predictions[name], strict=True):
            keep_r = ref.scores >= criteria["box_min_score"]
            keep_c = cand.scores >= criteria["box_min_score"]
            n_reference += int(keep_r.sum())
            n_candidate += int(keep_c.sum())
            ious += _greedy_pairs(
                torch.from_numpy(ref.boxes[keep_r]),
                torch.from_numpy(ref.labels[keep_r]),
                torch.from_numpy(cand.boxes[keep_c]),
                torch.from_numpy(cand.labels[keep_c]),
            )
        share_iou_ok = sum(v >= criteria["box_iou"] for v in ious) / len(ious) if ious else 1.0
        metrics = summary_metrics(evaluated.report)
        deltas = {
            key: (
                None
                if math.isnan(metrics[key]) or math.isnan(reference_metrics[key])
                else metrics[key] - reference_metrics[key]
            )
            for key in COMPARED_METRICS
        }
        worst = max((abs(v) for v in deltas.values() if v is not None), default=0.0)
        median = statistics.median(seconds[name])
        ok = (
            agreement >= criteria["min_label_agreement"]
            and share_iou_ok >= criteria["min_share_boxes_iou_ok"]
            and worst <= criteria["max_metric_delta"] + 1e-9
        )
        results[name] = {
            "ok": bool(ok),
            "n_images": len(items),
            "label_agreement": agreement,
            "box_pairs": len(ious),
            "boxes_torch": n_reference,
            "boxes_accelerated": n_candidate,
            "share_pairs_iou_ge_0.9": share_iou_ok,
            "min_pair_iou": min(ious) if ious else None,
            "mean_pair_iou": statistics.fmean(ious) if ious else None,
            "metric_deltas": deltas,
            "max_abs_metric_delta": worst,
            "metrics_torch": reference_metrics,
            "metrics_accelerated": metrics,
            "seconds_per_image": median,
            "seconds_per_image_torch": torch_median,
            "speedup_vs_torch": torch_median / median if median > 0 else None,
        }
        logger.info(
            "parity %s: labels %.3f, boxes IoU>=0.9 %.3f (%d pairs), worst metric delta %.4f, %.3f s vs "
            "torch %.3f s -> %s",
            name,
            agreement,
            share_iou_ok,
            len(ious),
            worst,
            median,
            torch_median,
            "ok" if ok else "FAILED",
        )
    return results
