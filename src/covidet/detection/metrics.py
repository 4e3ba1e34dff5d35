"""Evaluation metrics for the detector and for the image-level assessment derived from it.

Two families of metrics live here:

* **COCO box metrics** (:func:`coco_detection_metrics`): mAP@[.5:.95], AP50, AP75 and AR@100, overall and
  per class, computed by ``pycocotools.cocoeval.COCOeval`` (never re-implemented by hand) from ground
  truth and predictions held in memory.
* **Image-level classification metrics** (:func:`image_level_metrics`): accuracy, per-class
  sensitivity/specificity/precision/F1/ROC-AUC, macro F1/AUC, confusion matrix and the top-label expected
  calibration error (:func:`expected_calibration_error`) with its reliability table.

Every function returns plain Python values (``float``, ``int``, ``None``, lists, dicts) so that reports
can be written with :func:`json.dumps` directly. :func:`save_metric_plots` renders the usual figures.

Boxes are ``[x1, y1, x2, y2]`` pixel floats; detector labels are model ids ``1..K`` in the order of
:data:`covidet.domain.CLASS_NAMES` (0 is background and never appears here).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from covidet.domain import CLASS_NAMES

__all__ = [
    "AGNOSTIC_CLASS_NAME",
    "DEFAULT_CLASS_NAMES",
    "ImageDetections",
    "coco_detection_metrics",
    "disease_boxes_on_lungs",
    "expected_calibration_error",
    "image_level_metrics",
    "save_metric_plots",
]

#: Class names in model order (model id ``i + 1`` is ``DEFAULT_CLASS_NAMES[i]``).
DEFAULT_CLASS_NAMES: tuple[str, ...] = tuple(c.value for c in CLASS_NAMES)

#: Name of the single category used by ``coco_detection_metrics(..., class_agnostic=True)``.
AGNOSTIC_CLASS_NAME = "lung"


@dataclass
class ImageDetections:
    """Detections or ground truth for one image.

    ``boxes`` are ``[x1, y1, x2, y2]`` in pixels, float ``(N, 4)``; ``labels`` are model ids ``1..K``
    ``(N,)``; ``scores`` ``(N,)`` in ``[0, 1]`` for predictions, ``None`` for ground truth. ``width`` and
    ``height`` are the image size in pixels (0 when unknown; COCO box evaluation does not use them).
    ``image_probs`` ``(3,)``: a model's image-head probabilities (covid19, pneumonia, normal), when it has
    an image head.
    """

    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    width: int = 0
    height: int = 0
    image_probs: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------
# COCO detection metrics
# --------------------------------------------------------------------------------------------------


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
) -> dict[str, Any]:
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

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
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

    results: list[dict[str, Any]] = []
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
    per_class: dict[str, dict[str, Any]] = {}
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


# --------------------------------------------------------------------------------------------------
# Image-level metrics
# --------------------------------------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` as a float, or ``None`` when the denominator is 0 (undefined)."""
    return float(numerator) / float(denominator) if denominator else None


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, *, n_bins: int = 10
) -> tuple[float, dict[str, Any]]:
    """Top-label expected calibration error and its reliability table.

    ``ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width bins closed on the
    right: ``[0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]`` (a confidence of exactly 0 falls into the first).
    ``confidences`` are the probabilities of the predicted class, ``correct`` whether that prediction was
    right.

    Returns ``(ece, {"bin_edges": [n_bins + 1 floats], "bin_confidence": [...], "bin_accuracy": [...],
    "bin_count": [...]})``; an empty bin has confidence and accuracy ``None`` and count 0.
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct, dtype=bool).reshape(-1)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if conf.shape != hit.shape:
        raise ValueError(f"{conf.size} confidences for {hit.size} correctness flags")
    if conf.size == 0:
        raise ValueError("no predictions to calibrate")
    if np.any(~np.isfinite(conf)) or np.any(conf < 0) or np.any(conf > 1):
        raise ValueError("confidences must lie in [0, 1]")

    # Inner edges i/n computed as a correctly rounded division, so that e.g. a confidence of 0.3 equals
    # the edge 3/10 and lands in (0.2, 0.3] as the right-closed convention says.
    inner_edges = np.arange(1, n_bins, dtype=np.float64) / n_bins
    bins = np.searchsorted(inner_edges, conf, side="left")
    n = conf.size
    ece = 0.0
    bin_confidence: list[float | None] = []
    bin_accuracy: list[float | None] = []
    bin_count: list[int] = []
    for b in range(n_bins):
        members = bins == b
        count = int(members.sum())
        bin_count.append(count)
        if count == 0:
            bin_confidence.append(None)
            bin_accuracy.append(None)
            continue
        mean_conf = float(conf[members].mean())
        accuracy = float(hit[members].mean())
        bin_confidence.append(mean_conf)
        bin_accuracy.append(accuracy)
        ece += count / n * abs(accuracy - mean_conf)
    reliability = {
        "bin_edges": [0.0, *(float(e) for e in inner_edges), 1.0],
        "bin_confidence": bin_confidence,
        "bin_accuracy": bin_accuracy,
        "bin_count": bin_count,
    }
    return float(ece), reliability


def image_level_metrics(
    y_true: Sequence[int],
    probabilities: np.ndarray,
    *,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    n_bins: int = 10,
    y_pred: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Image-level classification metrics of ``K``-class probabilities against true classes.

    ``y_true`` holds class indices ``0..K-1`` (index into ``class_names``, i.e. model id - 1);
    ``probabilities`` is ``(N, K)`` with rows summing to 1; ``y_pred`` defaults to the row-wise argmax
    (callers with a threshold rule pass their own decisions).

    Returns ``{"n", "accuracy", "macro_f1", "per_class": {name: {"sensitivity", "specificity",
    "precision", "f1", "auc", "support"}}, "macro_auc", "confusion_matrix" (rows true, columns predicted),
    "ece", "reliability"}``. Confusion matrix, F1 (``zero_division=0``) and one-vs-rest ROC-AUC come from
    scikit-learn. Ratios that are undefined (0/0) are ``None``: sensitivity without positives,
    specificity without negatives, precision without predictions of the class, and AUC when only one of
    positive/negative is present. ``macro_auc`` averages the defined AUCs (``None`` if there is none).
    ECE is top-label: the confidence is the probability of the *predicted* class, see
    :func:`expected_calibration_error`.
    """
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    n_classes = len(class_names)
    truth = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (truth.size, n_classes):
        raise ValueError(f"probabilities must have shape ({truth.size}, {n_classes}), got {probs.shape}")
    if truth.size == 0:
        raise ValueError("no images to evaluate")
    if np.any(truth < 0) or np.any(truth >= n_classes) or np.any(truth != np.round(truth)):
        raise ValueError(f"y_true must hold class indices 0..{n_classes - 1}")
    truth = truth.astype(np.int64)
    if y_pred is None:
        pred = probs.argmax(axis=1)
    else:
        pred = np.asarray(y_pred).reshape(-1)
        if pred.shape != truth.shape:
            raise ValueError(f"{pred.size} predictions for {truth.size} images")
        if np.any(pred < 0) or np.any(pred >= n_classes) or np.any(pred != np.round(pred)):
            raise ValueError(f"y_pred must hold class indices 0..{n_classes - 1}")
        pred = pred.astype(np.int64)

    labels = list(range(n_classes))
    cm = confusion_matrix(truth, pred, labels=labels)
    f1_per_class = f1_score(truth, pred, labels=labels, average=None, zero_division=0)
    macro_f1 = f1_score(truth, pred, labels=labels, average="macro", zero_division=0)
    n = int(truth.size)

    per_class: dict[str, dict[str, Any]] = {}
    aucs: list[float] = []
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        fn = int(cm[k, :].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = n - tp - fn - fp
        positives = truth == k
        auc: float | None = None
        if 0 < int(positives.sum()) < n:
            auc = float(roc_auc_score(positives.astype(int), probs[:, k]))
            aucs.append(auc)
        per_class[str(name)] = {
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp),
            "f1": float(f1_per_class[k]),
            "auc": auc,
            "support": int(positives.sum()),
        }

    confidences = probs[np.arange(n), pred]
    ece, reliability = expected_calibration_error(confidences, pred == truth, n_bins=n_bins)
    return {
        "n": n,
        "accuracy": float(np.trace(cm)) / n,
        "macro_f1": float(macro_f1),
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "confusion_matrix": [[int(v) for v in row] for row in cm],
        "ece": ece,
        "reliability": reliability,
    }


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def save_metric_plots(
    report: dict[str, Any],
    out_dir: Path,
    *,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    y_true: Sequence[int] | None = None,
    probabilities: np.ndarray | None = None,
) -> list[Path]:
    """Write PNG figures of an :func:`image_level_metrics` report into ``out_dir`` (created if missing).

    * ``confusion_matrix.png``: counts, annotated (rows true, columns predicted);
    * ``roc.png``: one-vs-rest ROC curve per class labelled with its AUC, only when ``y_true`` and
      ``probabilities`` are given; classes with only positives or only negatives are skipped;
    * ``reliability.png``: accuracy and mean confidence per bin against the diagonal, ECE in the title.

    Figures are drawn on the Agg canvas through :class:`matplotlib.figure.Figure` (no pyplot, so the
    global backend and any interactive session are left untouched) and released after saving.
    Returns the paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [str(name) for name in class_names]
    written: list[Path] = []

    def save(fig: Figure, filename: str) -> None:
        FigureCanvasAgg(fig)
        path = out_dir / filename
        fig.savefig(path, dpi=120, bbox_inches="tight")
        fig.clear()
        written.append(path)

    # Confusion matrix.
    cm = np.asarray(report["confusion_matrix"], dtype=np.int64)
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), value in np.ndenumerate(cm):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    save(fig, "confusion_matrix.png")

    # ROC curves, one-vs-rest.
    if y_true is not None and probabilities is not None:
        truth = np.asarray(y_true).reshape(-1)
        probs = np.asarray(probabilities, dtype=np.float64)
        fig = Figure(figsize=(4.5, 4))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        for k, name in enumerate(names):
            positives = truth == k
            if not 0 < int(positives.sum()) < truth.size:
                continue
            fpr, tpr, _ = roc_curve(positives.astype(int), probs[:, k])
            auc = report.get("per_class", {}).get(name, {}).get("auc")
            label = f"{name} (AUC {auc:.3f})" if auc is not None else name
            ax.plot(fpr, tpr, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title("ROC (one-vs-rest)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
        save(fig, "roc.png")

    # Reliability diagram.
    reliability = report["reliability"]
    accuracy = reliability["bin_accuracy"]
    confidence = reliability["bin_confidence"]
    n_bins = len(accuracy)
    edges = reliability.get("bin_edges") or list(np.linspace(0.0, 1.0, n_bins + 1))
    lefts = np.asarray(edges[:-1], dtype=np.float64)
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    acc_values = np.asarray([math.nan if a is None else a for a in accuracy], dtype=np.float64)
    conf_values = np.asarray([math.nan if c is None else c for c in confidence], dtype=np.float64)
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    ax.bar(lefts, np.nan_to_num(acc_values), width=widths, align="edge", edgecolor="black", label="accuracy")
    filled = ~np.isnan(conf_values)
    ax.plot(conf_values[filled], acc_values[filled], "o", color="tab:red", label="mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of predicted class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {float(report['ece']):.3f})")
    ax.legend(loc="upper left")
    save(fig, "reliability.png")
    return written


def disease_boxes_on_lungs(
    predictions: Sequence[ImageDetections],
    ground_truth: Sequence[ImageDetections],
    *,
    min_score: float = 0.5,
    disease_ids: tuple[int, ...] = (1, 2),
) -> dict[str, Any]:
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
