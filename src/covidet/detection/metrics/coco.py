"""COCO box metrics computed by pycocotools' ``COCOeval`` (never re-implemented by hand).

:func:`coco_detection_metrics` builds the COCO ground truth and the detection results in memory from
:class:`~covidet.detection.metrics.detections.ImageDetections` and returns mAP@[.5:.95], AP50, AP75 and
AR@100, overall and per class, as plain Python values (JSON-ready).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from covidet.detection.metrics.detections import DEFAULT_CLASS_NAMES, ImageDetections

__all__ = ["AGNOSTIC_CLASS_NAME", "ClassAP", "CocoMetrics", "coco_detection_metrics"]

#: Name of the single category used by ``coco_detection_metrics(..., class_agnostic=True)``.
AGNOSTIC_CLASS_NAME = "lung"


class ClassAP(TypedDict):
    """One category of :func:`coco_detection_metrics`: AP@[.5:.95], AP@.5 (``None`` when undefined)
    and the number of ground-truth boxes."""

    map: float | None
    map50: float | None
    n_gt: int


class CocoMetrics(TypedDict):
    """The report of :func:`coco_detection_metrics` (JSON-ready; ``None`` where COCOeval is undefined)."""

    map: float | None
    map50: float | None
    map75: float | None
    mar100: float | None
    per_class: dict[str, ClassAP]


class _CocoImage(TypedDict):
    id: int
    width: int
    height: int


class _CocoAnnotation(TypedDict):
    id: int
    image_id: int
    category_id: int
    bbox: list[float]
    area: float
    iscrowd: int


class _CocoResult(TypedDict):
    image_id: int
    category_id: int
    bbox: list[float]
    score: float


def _as_boxes(item: ImageDetections) -> np.ndarray:
    """``item.boxes`` as a float64 ``(N, 4)`` array (an empty input gives ``(0, 4)``)."""
    boxes = np.asarray(item.boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {item.image_id}: boxes must have shape (N, 4), got {boxes.shape}")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError(f"image {item.image_id}: box corners out of order (need x1 <= x2, y1 <= y2)")
    return boxes


def _as_labels(item: ImageDetections, n_boxes: int, n_classes: int) -> np.ndarray:
    """``item.labels`` as an int array of length ``n_boxes``, checked to lie in ``1..n_classes``."""
    labels = np.asarray(item.labels).reshape(-1)
    if labels.shape[0] != n_boxes:
        raise ValueError(f"image {item.image_id}: {labels.shape[0]} labels for {n_boxes} boxes")
    if labels.size and (np.any(labels != np.round(labels)) or labels.min() < 1 or labels.max() > n_classes):
        raise ValueError(f"image {item.image_id}: labels must be model ids 1..{n_classes}, got {labels}")
    return labels.astype(np.int64)


def _xyxy_to_xywh(box: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of an ``[x1, y1, x2, y2]`` box, as plain floats."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _coco_value(value: float) -> float | None:
    """A COCOeval summary value as a plain float, or ``None`` for its "undefined" marker ``-1``."""
    value = float(value)
    return None if value < 0 else value


def _mean_valid(values: np.ndarray) -> float | None:
    """Mean of the entries of a COCOeval precision slice that are defined (``> -1``), else ``None``."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else None


def coco_detection_metrics(
    ground_truth: Sequence[ImageDetections],
    predictions: Sequence[ImageDetections],
    *,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    class_agnostic: bool = False,
) -> CocoMetrics:
    """COCO box metrics of ``predictions`` against ``ground_truth``, computed by pycocotools' COCOeval.

    The COCO ground-truth dataset is built in memory: every ground-truth image is listed (also those
    without boxes, so that false positives on them count), annotations carry ``bbox`` in COCO
    ``[x, y, w, h]``, ``area = w * h`` and ``iscrowd = 0``; categories are ``1..K`` named after
    ``class_names``. Predictions go through ``COCO.loadRes`` as a list of detection dicts. With
    ``class_agnostic=True`` every label (ground truth and predicted) is first mapped to one category
    ``"lung"``, which measures box-finding quality regardless of the class.

    Returns ``{"map": AP@[.5:.95], "map50": AP@.5, "map75": AP@.75, "mar100": AR@100 (all areas),
    "per_class": {name: {"map": .., "map50": .., "n_gt": int}}}``. Per-class values average the defined
    (``> -1``) entries of ``eval["precision"][T, R, K, A, M]`` at area ``"all"`` and ``maxDets=100``.
    A value COCOeval leaves undefined (a class without ground truth, or no ground-truth box at all) is
    ``None``. Without any prediction every defined AP/AR is ``0.0``.

    Raises ``ValueError`` for malformed inputs: duplicate image ids, labels outside ``1..K``, predictions
    without scores or for images absent from the ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n_classes = len(class_names)
    if n_classes == 0:
        raise ValueError("class_names is empty")
    if not ground_truth:
        raise ValueError("ground_truth lists no image")
    category_names = [AGNOSTIC_CLASS_NAME] if class_agnostic else [str(name) for name in class_names]

    def category_of(label: int) -> int:
        return 1 if class_agnostic else int(label)

    images: list[_CocoImage] = []
    annotations: list[_CocoAnnotation] = []
    n_gt = [0] * len(category_names)
    known_ids: set[int] = set()
    for item in ground_truth:
        image_id = int(item.image_id)
        if image_id in known_ids:
            raise ValueError(f"ground truth lists image {image_id} twice")
        known_ids.add(image_id)
        images.append({"id": image_id, "width": int(item.width), "height": int(item.height)})
        boxes = _as_boxes(item)
        labels = _as_labels(item, len(boxes), n_classes)
        for box, label in zip(boxes, labels, strict=True):
            bbox = _xyxy_to_xywh(box)
            category_id = category_of(label)
            n_gt[category_id - 1] += 1
            annotations.append(
                {
                    # COCOeval treats annotation id 0 as "unmatched": ids start at 1.
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )

    results: list[_CocoResult] = []
    for item in predictions:
        image_id = int(item.image_id)
        if image_id not in known_ids:
            raise ValueError(f"prediction for image {image_id}, which the ground truth does not list")
        boxes = _as_boxes(item)
        labels = _as_labels(item, len(boxes), n_classes)
        if len(boxes) == 0:
            continue
        if item.scores is None:
            raise ValueError(f"prediction for image {image_id} has no scores")
        scores = np.asarray(item.scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(boxes):
            raise ValueError(f"image {image_id}: {scores.shape[0]} scores for {len(boxes)} boxes")
        for box, label, score in zip(boxes, labels, scores, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_of(label),
                    "bbox": _xyxy_to_xywh(box),
                    "score": float(score),
                }
            )

    dataset = {
        "info": {"description": "covidet evaluation"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(category_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            # loadRes indexes anns[0] and fails on an empty list: build the empty result set directly.
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(images),
                "annotations": [],
                "categories": [dict(c) for c in dataset["categories"]],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    stats = evaluator.stats
    params = evaluator.params
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    area_index = params.areaRngLbl.index("all")
    maxdet_index = list(params.maxDets).index(100)
    iou50_index = int(np.where(np.isclose(params.iouThrs, 0.5))[0][0])
    per_class: dict[str, ClassAP] = {}
    for k, category_id in enumerate(params.catIds):
        name = category_names[category_id - 1]
        per_class[name] = {
            "map": _mean_valid(precision[:, :, k, area_index, maxdet_index]),
            "map50": _mean_valid(precision[iou50_index, :, k, area_index, maxdet_index]),
            "n_gt": int(n_gt[category_id - 1]),
        }
    return {
        "map": _coco_value(stats[0]),
        "map50": _coco_value(stats[1]),
        "map75": _coco_value(stats[2]),
        "mar100": _coco_value(stats[8]),
        "per_class": per_class,
    }
