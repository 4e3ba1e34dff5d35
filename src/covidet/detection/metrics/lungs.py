"""Where the disease boxes sit: their overlap (IoU) with the annotated lung boxes.

:func:`disease_boxes_on_lungs` is a check of what the model looks at, not a COCO metric: a model that
puts its covid19/pneumonia boxes on text, borders or the mediastinum shows a low IoU here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
from torchvision.ops import box_iou

from covidet.detection.metrics.detections import ImageDetections

__all__ = ["LungOverlap", "disease_boxes_on_lungs"]

#: The report of :func:`disease_boxes_on_lungs`: the score cut, how many disease boxes were paired, the
#: median IoU with their best lung box and the share at IoU >= 0.5 (``None`` without boxes).
LungOverlap = TypedDict(
    "LungOverlap",
    {"min_score": float, "n_boxes": int, "median_iou": float | None, "share_iou_ge_0.5": float | None},
)


def disease_boxes_on_lungs(
    predictions: Sequence[ImageDetections],
    ground_truth: Sequence[ImageDetections],
    *,
    min_score: float = 0.5,
    disease_ids: tuple[int, ...] = (1, 2),
) -> LungOverlap:
    """Do the disease boxes sit on the lungs? Their IoU with the annotated lung boxes.

    For every image with ground-truth boxes (in this dataset every box marks a lung), each predicted box
    of a disease class (model ids ``disease_ids``: covid19, pneumonia) scoring ``>= min_score`` is paired
    with the lung box it overlaps most. A model that labels the lungs reads the lungs; one that puts its
    disease boxes on text, borders or the mediastinum shows a low IoU here. Predictions and ground
    truth must be in the same pixels.
    """
    ious: list[float] = []
    for prediction, truth in zip(predictions, ground_truth, strict=True):
        if not len(truth.boxes) or prediction.scores is None:
            continue
        keep = np.isin(prediction.labels, disease_ids) & (prediction.scores >= min_score)
        if not keep.any():
            continue
        overlaps = box_iou(
            torch.as_tensor(prediction.boxes[keep], dtype=torch.float32),
            torch.as_tensor(truth.boxes, dtype=torch.float32),
        )
        ious.extend(overlaps.max(dim=1).values.tolist())
    values = np.asarray(ious, np.float64)
    return {
        "min_score": min_score,
        "n_boxes": len(values),
        "median_iou": float(np.median(values)) if len(values) else None,
        "share_iou_ge_0.5": float((values >= 0.5).mean()) if len(values) else None,
    }
