"""Tests of :mod:`covidet.detection.metrics` against hand-worked values and plain pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from covidet.detection.metrics import (
    DEFAULT_CLASS_NAMES,
    ImageDetections,
    coco_detection_metrics,
    disease_boxes_on_lungs,
    expected_calibration_error,
    image_level_metrics,
    save_metric_plots,
)

# pycocotools computes precision as tp / (tp + fp + np.spacing(1)), so a "perfect" AP is 1 - 1e-16.
EXACT = 1e-12


def _gt(image_id: int, boxes: list[list[float]], labels: list[int]) -> ImageDetections:
    return ImageDetections(
        image_id=image_id,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        width=100,
        height=100,
    )


def _pred(image_id: int, boxes: list[list[float]], labels: list[int], scores: list[float]) -> ImageDetections:
    return ImageDetections(
        image_id=image_id,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float64),
    )


# --------------------------------------------------------------------------------------------------
# Image-level metrics, hand-worked
# --------------------------------------------------------------------------------------------------

# Six images, classes 0 covid19, 1 pneumonia, 2 normal.
# y_true = [0, 0, 1, 1, 2, 2]; the argmax of the rows below is y_pred = [0, 1, 1, 1, 2, 0].
SIX_TRUE = [0, 0, 1, 1, 2, 2]
SIX_PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0, pred 0 (right)
        [0.3, 0.6, 0.1],  # true 0, pred 1
        [0.1, 0.8, 0.1],  # true 1, pred 1 (right)
        [0.2, 0.5, 0.3],  # true 1, pred 1 (right)
        [0.1, 0.1, 0.8],  # true 2, pred 2 (right)
        [0.5, 0.1, 0.4],  # true 2, pred 0
    ]
)


def test_image_level_hand_worked_confusion_accuracy_f1() -> None:
    report = image_level_metrics(SIX_TRUE, SIX_PROBS)
    # Confusion matrix (rows true, columns predicted):
    #   covid19:   1 right, 1 -> pneumonia          [1, 1, 0]
    #   pneumonia: 2 right                          [0, 2, 0]
    #   normal:    1 -> covid19, 1 right            [1, 0, 1]
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["n"] == 6
    # accuracy = trace / N = (1 + 2 + 1) / 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    pc = report["per_class"]
    # covid19:   TP 1, FN 1, FP 1 (a normal called covid19), TN 6 - 3 = 3
    #   sensitivity 1/2, specificity 3/4, precision 1/2, F1 = 2PR/(P+R) = 1/2
    assert pc["covid19"]["sensitivity"] == pytest.approx(1 / 2)
    assert pc["covid19"]["specificity"] == pytest.approx(3 / 4)
    assert pc["covid19"]["precision"] == pytest.approx(1 / 2)
    assert pc["covid19"]["f1"] == pytest.approx(1 / 2)
    assert pc["covid19"]["support"] == 2
    # pneumonia: TP 2, FN 0, FP 1 (a covid19 called pneumonia), TN 3
    #   sensitivity 1, specificity 3/4, precision 2/3, F1 = 2 * (2/3 * 1) / (2/3 + 1) = 4/5
    assert pc["pneumonia"]["sensitivity"] == pytest.approx(1.0)
    assert pc["pneumonia"]["specificity"] == pytest.approx(3 / 4)
    assert pc["pneumonia"]["precision"] == pytest.approx(2 / 3)
    assert pc["pneumonia"]["f1"] == pytest.approx(4 / 5)
    # normal:    TP 1, FN 1, FP 0, TN 4
    #   sensitivity 1/2, specificity 1, precision 1, F1 = 2 * (1 * 1/2) / (3/2) = 2/3
    assert pc["normal"]["sensitivity"] == pytest.approx(1 / 2)
    assert pc["normal"]["specificity"] == pytest.approx(1.0)
    assert pc["normal"]["precision"] == pytest.approx(1.0)
    assert pc["normal"]["f1"] == pytest.approx(2 / 3)
    # macro F1 = (1/2 + 4/5 + 2/3) / 3 = (45 + 72 + 60) / 90 / 3 = 59/90
    assert report["macro_f1"] == pytest.approx(59 / 90)
    assert sum(report["reliability"]["bin_count"]) == 6
    json.dumps(report)  # plain python values only


def test_image_level_uses_given_decisions() -> None:
    # Everything called normal by a threshold rule: only the two normal images are right.
    report = image_level_metrics(SIX_TRUE, SIX_PROBS, y_pred=[2] * 6)
    assert report["confusion_matrix"] == [[0, 0, 2], [0, 0, 2], [0, 0, 2]]
    assert report["accuracy"] == pytest.approx(2 / 6)
    # covid19 is never predicted: precision is 0/0 -> None, sensitivity 0/2 = 0, specificity 4/4 = 1.
    assert report["per_class"]["covid19"]["precision"] is None
    assert report["per_class"]["covid19"]["sensitivity"] == 0.0
    assert report["per_class"]["covid19"]["specificity"] == 1.0
    # F1 with zero_division=0: covid19 0, pneumonia 0, normal 2 * (1/3 * 1) / (1/3 + 1) = 1/2.
    assert report["macro_f1"] == pytest.approx((0 + 0 + 1 / 2) / 3)
    # Top-label confidence is the probability of the *given* prediction (normal column): rows 0.1, 0.1,
    # 0.1, 0.3, 0.8, 0.4 -> bins (0,.1]: 3 wrong, (.2,.3]: 1 wrong, (.3,.4]: 1 right, (.7,.8]: 1 right.
    # ECE = 3/6 * |0 - 0.1| + 1/6 * |0 - 0.3| + 1/6 * |1 - 0.4| + 1/6 * |1 - 0.8| = (0.3+0.3+0.6+0.2)/6
    assert report["ece"] == pytest.approx(1.4 / 6)
    assert report["reliability"]["bin_count"] == [3, 0, 1, 1, 0, 0, 0, 1, 0, 0]


def test_expected_calibration_error_hand_worked() -> None:
    # Two populated bins (right-closed, so 0.9 is in (0.8, 0.9] and 0.7 in (0.6, 0.7]):
    #   (0.8, 0.9]: confidences 0.9, 0.9, 0.85, correct 1, 1, 0
    #       mean confidence 2.65/3, accuracy 2/3, gap 0.65/3, weight 3/5  -> 0.13
    #   (0.6, 0.7]: confidences 0.7, 0.65, correct 1, 0
    #       mean confidence 0.675, accuracy 0.5, gap 0.175, weight 2/5     -> 0.07
    #   ECE = 0.13 + 0.07 = 0.2
    confidences = np.array([0.9, 0.9, 0.85, 0.7, 0.65])
    correct = np.array([True, True, False, True, False])
    ece, reliability = expected_calibration_error(confidences, correct, n_bins=10)
    assert ece == pytest.approx(0.2)
    assert reliability["bin_count"] == [0, 0, 0, 0, 0, 0, 2, 0, 3, 0]
    assert reliability["bin_confidence"][8] == pytest.approx(2.65 / 3)
    assert reliability["bin_accuracy"][8] == pytest.approx(2 / 3)
    assert reliability["bin_confidence"][6] == pytest.approx(0.675)
    assert reliability["bin_accuracy"][6] == pytest.approx(0.5)
    assert reliability["bin_confidence"][0] is None and reliability["bin_accuracy"][0] is None
    assert len(reliability["bin_edges"]) == 11


def test_expected_calibration_error_edges_and_validation() -> None:
    # 0 falls into the first bin, 1 into the last; a perfectly calibrated set has ECE 0.
    ece, reliability = expected_calibration_error(np.array([0.0, 1.0]), np.array([False, True]), n_bins=4)
    assert reliability["bin_count"] == [1, 0, 0, 1]
    assert ece == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([1.5]), np.array([True]))


def test_auc_hand_worked_by_counting_pairs() -> None:
    y_true = [0, 0, 1, 2, 1]
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.4, 0.5, 0.1],
            [0.4, 0.5, 0.1],
            [0.3, 0.6, 0.1],
            [0.2, 0.7, 0.1],
        ]
    )
    report = image_level_metrics(y_true, probs)
    pc = report["per_class"]
    # AUC = P(score of a positive > score of a negative), ties count 1/2.
    # covid19: positives {0.9, 0.4}, negatives {0.4, 0.3, 0.2}: 0.9 beats 3; 0.4 ties 1, beats 2 -> 2.5.
    #   (3 + 2.5) / (2 * 3) = 11/12
    assert pc["covid19"]["auc"] == pytest.approx(11 / 12)
    # pneumonia: positives {0.5, 0.7}, negatives {0.05, 0.5, 0.6}: 0.5 beats 1, ties 1 -> 1.5; 0.7 beats 3.
    #   (1.5 + 3) / 6 = 3/4
    assert pc["pneumonia"]["auc"] == pytest.approx(3 / 4)
    # normal: positive {0.1}, negatives {0.05, 0.1, 0.1, 0.1}: beats 1, ties 3 -> 2.5 / 4 = 5/8
    assert pc["normal"]["auc"] == pytest.approx(5 / 8)
    # macro AUC = (22/24 + 18/24 + 15/24) / 3 = 55/72
    assert report["macro_auc"] == pytest.approx(55 / 72)


def test_undefined_ratios_are_none() -> None:
    # No normal image: sensitivity (0/0) and AUC (only negatives) are undefined for normal.
    y_true = [0, 1, 0, 1]
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    report = image_level_metrics(y_true, probs)
    normal = report["per_class"]["normal"]
    assert normal["sensitivity"] is None
    assert normal["auc"] is None
    assert normal["precision"] is None  # never predicted either
    assert normal["specificity"] == 1.0
    assert normal["support"] == 0
    # covid19: positives {0.8, 0.6} vs negatives {0.2, 0.5}: all 4 pairs ordered -> 1.0; pneumonia likewise.
    assert report["macro_auc"] == pytest.approx(1.0)
    json.dumps(report)
    with pytest.raises(ValueError):
        image_level_metrics([0, 3], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError):
        image_level_metrics([0, 1], np.full((2, 2), 0.5))


# --------------------------------------------------------------------------------------------------
# COCO box metrics
# --------------------------------------------------------------------------------------------------


def test_coco_perfect_predictions() -> None:
    gt = [
        _gt(1, [[10, 10, 40, 60], [50, 10, 90, 60]], [1, 1]),
        _gt(2, [[5, 5, 45, 95], [55, 5, 95, 95]], [2, 2]),
        _gt(3, [[0, 0, 30, 30]], [3]),
    ]
    pred = [_pred(g.image_id, g.boxes.tolist(), g.labels.tolist(), [0.9] * len(g.labels)) for g in gt]
    m = coco_detection_metrics(gt, pred)
    assert m["map"] == pytest.approx(1.0, abs=EXACT)
    assert m["map50"] == pytest.approx(1.0, abs=EXACT)
    assert m["map75"] == pytest.approx(1.0, abs=EXACT)
    assert m["mar100"] == pytest.approx(1.0, abs=EXACT)
    for name, n_gt in zip(DEFAULT_CLASS_NAMES, [2, 2, 1], strict=True):
        assert m["per_class"][name]["map"] == pytest.approx(1.0, abs=EXACT)
        assert m["per_class"][name]["map50"] == pytest.approx(1.0, abs=EXACT)
        assert m["per_class"][name]["n_gt"] == n_gt
    json.dumps(m)


def test_coco_iou_exactly_at_threshold_counts_as_match() -> None:
    # GT [0,0,10,10] (area 100); prediction [0,0,10,6] (area 60) lies inside it: IoU = 60 / 100 = 0.6
    # exactly in floating point. COCOeval matches when IoU >= threshold (it skips only `iou < t`), and its
    # thresholds np.linspace(.5, .95, 10) hold 0.6 exactly, so 0.50, 0.55 and 0.60 match: 3 of the 10
    # thresholds have AP 1, the other 7 AP 0 -> AP@[.5:.95] = 0.3 (not 0.2), AP50 = 1, AP75 = 0.
    gt = [_gt(1, [[0, 0, 10, 10]], [1])]
    m = coco_detection_metrics(gt, [_pred(1, [[0, 0, 10, 6]], [1], [0.9])])
    assert m["map50"] == pytest.approx(1.0, abs=EXACT)
    assert m["map75"] == 0.0
    assert m["map"] == pytest.approx(0.3, abs=EXACT)
    assert m["mar100"] == pytest.approx(0.3, abs=EXACT)
    # Just under 0.6 (IoU 0.599) only 0.50 and 0.55 match -> 0.2.
    m = coco_detection_metrics(gt, [_pred(1, [[0, 0, 10, 5.99]], [1], [0.9])])
    assert m["map"] == pytest.approx(0.2, abs=EXACT)


def test_coco_false_positive_on_image_without_ground_truth_counts() -> None:
    # Image 2 has no GT box but is listed, so the higher-scored box on it is a false positive:
    # ranked detections FP (0.9) then TP (0.5): precision 0 then 1/2 at recall 1; COCO's interpolated
    # precision is 1/2 at every recall threshold -> AP = 0.5 at every IoU threshold.
    gt = [_gt(1, [[0, 0, 50, 50]], [1]), _gt(2, [], [])]
    pred = [_pred(1, [[0, 0, 50, 50]], [1], [0.5]), _pred(2, [[0, 0, 50, 50]], [1], [0.9])]
    m = coco_detection_metrics(gt, pred)
    assert m["map"] == pytest.approx(0.5, abs=EXACT)
    assert m["map50"] == pytest.approx(0.5, abs=EXACT)
    assert m["mar100"] == pytest.approx(1.0, abs=EXACT)


def _random_case(seed: int) -> tuple[list[ImageDetections], list[ImageDetections]]:
    """~20 images with random GT boxes (some images empty) and noisy, partly wrong predictions."""
    rng = np.random.default_rng(seed)
    gt: list[ImageDetections] = []
    pred: list[ImageDetections] = []
    for image_id in range(1, 21):
        width, height = int(rng.integers(200, 600)), int(rng.integers(200, 600))
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 0.6, size=(n, 2)) * [width, height]
        wh = rng.uniform(0.05, 0.4, size=(n, 2)) * [width, height]
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(1, 4, size=n)
        gt.append(ImageDetections(image_id, boxes, labels, width=width, height=height))
        # Noisy copies of the GT (some dropped, some relabelled) plus random false positives.
        keep = rng.random(n) > 0.2
        noisy = boxes[keep] + rng.normal(0, 0.08, size=(int(keep.sum()), 4)) * np.tile(wh[keep], 2)
        noisy_labels = np.where(rng.random(int(keep.sum())) < 0.15, rng.integers(1, 4), labels[keep])
        m = int(rng.integers(0, 3))
        fxy = rng.uniform(0, 0.6, size=(m, 2)) * [width, height]
        fwh = rng.uniform(0.05, 0.3, size=(m, 2)) * [width, height]
        all_boxes = np.concatenate([noisy, np.concatenate([fxy, fxy + fwh], axis=1)])
        all_boxes = np.concatenate([np.minimum(all_boxes[:, :2], all_boxes[:, 2:]), all_boxes[:, 2:]], axis=1)
        all_boxes[:, 2:] = np.maximum(all_boxes[:, 2:], all_boxes[:, :2])
        all_labels = np.concatenate([noisy_labels, rng.integers(1, 4, size=m)])
        scores = rng.uniform(0.05, 1.0, size=len(all_labels))
        pred.append(ImageDetections(image_id, all_boxes, all_labels, scores=scores))
    return gt, pred


def _reference_cocoeval(
    gt: list[ImageDetections], pred: list[ImageDetections], tmp_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval the plain documented way: GT JSON file -> COCO(path) -> loadRes -> evaluate/summarize."""
    images, annotations, results = [], [], []
    for item in gt:
        images.append({"id": item.image_id, "width": item.width, "height": item.height})
        for (x1, y1, x2, y2), label in zip(item.boxes.tolist(), item.labels.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": item.image_id,
                    "category_id": label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    for item in pred:
        for (x1, y1, x2, y2), label, score in zip(
            item.boxes.tolist(), item.labels.tolist(), item.scores.tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": item.image_id,
                    "category_id": label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(DEFAULT_CLASS_NAMES)]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(res_path))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats, evaluator.eval["precision"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_matches_plain_pycocotools(seed: int, tmp_path: Path) -> None:
    gt, pred = _random_case(seed)
    stats, precision = _reference_cocoeval(gt, pred, tmp_path)
    m = coco_detection_metrics(gt, pred)
    assert 0.05 < m["map"] < 0.95  # a non-trivial case
    assert m["map"] == pytest.approx(stats[0], abs=1e-9)
    assert m["map50"] == pytest.approx(stats[1], abs=1e-9)
    assert m["map75"] == pytest.approx(stats[2], abs=1e-9)
    assert m["mar100"] == pytest.approx(stats[8], abs=1e-9)
    # Per class: area "all" (index 0), maxDets 100 (index 2), IoU 0.5 is threshold index 0.
    for k, name in enumerate(DEFAULT_CLASS_NAMES):
        ap = precision[:, :, k, 0, 2]
        assert m["per_class"][name]["map"] == pytest.approx(float(np.mean(ap[ap > -1])), abs=1e-9)
        ap50 = precision[0, :, k, 0, 2]
        assert m["per_class"][name]["map50"] == pytest.approx(float(np.mean(ap50[ap50 > -1])), abs=1e-9)
        assert m["per_class"][name]["n_gt"] == sum(int((g.labels == k + 1).sum()) for g in gt)


def test_coco_class_without_ground_truth_is_none() -> None:
    gt = [_gt(1, [[0, 0, 50, 50]], [1]), _gt(2, [[10, 10, 60, 80]], [2])]
    # A "normal" box is predicted, but no GT box is normal: its AP is undefined, not -1 or nan.
    pred = [
        _pred(1, [[0, 0, 50, 50], [60, 60, 90, 90]], [1, 3], [0.9, 0.8]),
        _pred(2, [[10, 10, 60, 80]], [2], [0.7]),
    ]
    m = coco_detection_metrics(gt, pred)
    assert m["per_class"]["normal"] == {"map": None, "map50": None, "n_gt": 0}
    assert m["per_class"]["covid19"]["map"] == pytest.approx(1.0, abs=EXACT)
    # The overall mean skips the undefined class: (1 + 1) / 2.
    assert m["map"] == pytest.approx(1.0, abs=EXACT)
    json.dumps(m)


def test_coco_empty_predictions_give_zero() -> None:
    gt = [_gt(1, [[0, 0, 50, 50]], [1]), _gt(2, [[10, 10, 60, 80]], [2]), _gt(3, [], [])]
    for predictions in ([], [_pred(1, [], [], []), ImageDetections(2, np.zeros((0, 4)), np.zeros(0, int))]):
        m = coco_detection_metrics(gt, predictions)
        assert (m["map"], m["map50"], m["map75"], m["mar100"]) == (0.0, 0.0, 0.0, 0.0)
        assert m["per_class"]["covid19"] == {"map": 0.0, "map50": 0.0, "n_gt": 1}
        assert m["per_class"]["normal"]["map"] is None


def test_coco_class_agnostic() -> None:
    # Perfect boxes, every class wrong: no class-aware match, but every lung is found.
    gt = [_gt(1, [[0, 0, 40, 90], [50, 0, 95, 90]], [1, 1]), _gt(2, [[5, 5, 45, 95]], [3])]
    pred = [
        _pred(1, [[0, 0, 40, 90], [50, 0, 95, 90]], [2, 3], [0.9, 0.8]),
        _pred(2, [[5, 5, 45, 95]], [1], [0.7]),
    ]
    aware = coco_detection_metrics(gt, pred)
    assert aware["map50"] == 0.0
    agnostic = coco_detection_metrics(gt, pred, class_agnostic=True)
    assert agnostic["map50"] == pytest.approx(1.0, abs=EXACT)
    assert agnostic["map"] == pytest.approx(1.0, abs=EXACT)
    assert list(agnostic["per_class"]) == ["lung"]
    assert agnostic["per_class"]["lung"]["n_gt"] == 3


def test_coco_rejects_malformed_input() -> None:
    gt = [_gt(1, [[0, 0, 50, 50]], [1])]
    with pytest.raises(ValueError, match="does not list"):
        coco_detection_metrics(gt, [_pred(7, [[0, 0, 1, 1]], [1], [0.5])])
    with pytest.raises(ValueError, match="model ids"):
        coco_detection_metrics(gt, [_pred(1, [[0, 0, 1, 1]], [0], [0.5])])
    with pytest.raises(ValueError, match="no scores"):
        coco_detection_metrics(gt, [ImageDetections(1, np.array([[0.0, 0, 1, 1]]), np.array([1]))])
    with pytest.raises(ValueError, match="twice"):
        coco_detection_metrics(gt + gt, [])


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def test_save_metric_plots_writes_three_pngs(tmp_path: Path) -> None:
    report = image_level_metrics(SIX_TRUE, SIX_PROBS)
    out = tmp_path / "plots"
    paths = save_metric_plots(report, out, y_true=SIX_TRUE, probabilities=SIX_PROBS)
    assert sorted(p.name for p in paths) == ["confusion_matrix.png", "reliability.png", "roc.png"]
    for path in paths:
        assert path.parent == out and path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG"
            image.verify()
    # Without scores the ROC figure is skipped.
    paths = save_metric_plots(report, tmp_path / "no_roc")
    assert sorted(p.name for p in paths) == ["confusion_matrix.png", "reliability.png"]


def test_disease_boxes_on_lungs_hand_worked() -> None:
    lungs = _gt(1, [[0, 0, 40, 100], [60, 0, 100, 100]], [1, 1])
    predictions = [
        # covid box = the right lung (IoU 1); pneumonia box half over the left lung (20x100 / 40x100 = 0.5);
        # a normal box and a weak covid box are not counted.
        _pred(
            1,
            [[0, 0, 40, 100], [80, 0, 100, 100], [0, 0, 40, 100], [50, 0, 60, 10]],
            [1, 2, 3, 1],
            [0.9, 0.8, 0.9, 0.3],
        ),
        _pred(2, [[0, 0, 10, 10]], [1], [0.9]),  # an image without lung boxes is not counted
    ]
    result = disease_boxes_on_lungs(predictions, [lungs, _gt(2, [], [])])
    assert result["n_boxes"] == 2
    assert result["median_iou"] == pytest.approx(0.75) and result["share_iou_ge_0.5"] == 1.0
    empty = disease_boxes_on_lungs([_pred(1, [], [], [])], [lungs])
    assert empty["n_boxes"] == 0 and empty["median_iou"] is None
