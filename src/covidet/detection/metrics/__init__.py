"""Evaluation metrics for the detector and for the image-level assessment derived from it.

Two families of metrics live here:

* **COCO box metrics** (:func:`coco_detection_metrics`): mAP@[.5:.95], AP50, AP75 and AR@100, overall and
  per class, computed by ``pycocotools.cocoeval.COCOeval`` (never re-implemented by hand) from ground
  truth and predictions held in memory.
* **Image-level classification metrics** (:func:`image_level_metrics`): accuracy, per-class
  sensitivity/specificity/precision/F1/ROC-AUC, macro F1/AUC, confusion matrix and the top-label expected
  calibration error (:func:`expected_calibration_error`) with its reliability table.

Every function returns plain Python values (``float``, ``int``, ``None``, lists, dicts) so that reports
can be written with :func:`json.dumps` directly. :func:`save_metric_plots` renders the usual figures,
:func:`disease_boxes_on_lungs` checks where the disease boxes sit.

The package keeps one module per job: ``detections`` (the input type and class order), ``coco`` (box
metrics), ``classification`` (image-level metrics), ``calibration`` (ECE), ``plots`` (figures) and
``lungs`` (disease boxes against lung boxes); every public name is re-exported here.

Boxes are ``[x1, y1, x2, y2]`` pixel floats; detector labels are model ids ``1..K`` in the order of
:data:`covidet.domain.CLASS_NAMES` (0 is background and never appears here).
"""

from __future__ import annotations

from covidet.detection.metrics.calibration import Reliability, expected_calibration_error
from covidet.detection.metrics.classification import ClassMetrics, ImageLevelMetrics, image_level_metrics
from covidet.detection.metrics.coco import AGNOSTIC_CLASS_NAME, ClassAP, CocoMetrics, coco_detection_metrics
from covidet.detection.metrics.detections import DEFAULT_CLASS_NAMES, ImageDetections
from covidet.detection.metrics.lungs import LungOverlap, disease_boxes_on_lungs
from covidet.detection.metrics.plots import save_metric_plots

__all__ = [
    "AGNOSTIC_CLASS_NAME",
    "DEFAULT_CLASS_NAMES",
    "ClassAP",
    "ClassMetrics",
    "CocoMetrics",
    "ImageDetections",
    "ImageLevelMetrics",
    "LungOverlap",
    "Reliability",
    "coco_detection_metrics",
    "disease_boxes_on_lungs",
    "expected_calibration_error",
    "image_level_metrics",
    "save_metric_plots",
]
