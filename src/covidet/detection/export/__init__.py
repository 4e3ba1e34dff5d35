"""``covidet export``: accelerated artefacts for a model bundle, int8 calibration, and the parity check.

What it writes into ``BUNDLE/accelerated/``:

* ``fp32/{backbone,rpn_head,box_head}.onnx``: the three compiled parts of the detector (see
  :mod:`covidet.detection.accelerated`) exported to ONNX with dynamic batch and spatial axes. ONNX Runtime
  runs them as they are; OpenVINO reads the same files (fp32, or bf16 arithmetic on CPUs that have it).
* ``openvino-int8/*.xml|bin``: OpenVINO IR quantised to int8 by NNCF post-training quantisation.
* ``onnxruntime-int8/*.onnx``: QDQ int8 models from ONNX Runtime's static quantiser.

int8 is calibrated on **train-split** images only (the check runs on the val split, so it never sees
its calibration data). Then, unless told not to, every variant goes through :func:`check_parity` on the
val split against the torch model on identical inputs, and the model card's ``accelerated`` section
records, per variant: runtime, precision, files and their SHA-256, the weights' SHA-256, the parity
figures, ``parity_ok`` and the median seconds per image measured during the check. Only variants with
``parity_ok`` are used by the ``auto`` backend.

Parity criteria (``PARITY_CRITERIA``), against torch on the same val images:

* the image-level label (the card's decision rule) is the same on at least 99% of images;
* detections scoring at least 0.3 are paired by label and IoU (greedy, IoU > 0.5): at least 99% of
  the pairs have IoU >= 0.9;
* accuracy, macro F1, macro AUC, COVID-19 sensitivity/specificity, mAP, mAP@50 and lung mAP@50 are
  within 1 point (0.01) of torch's.
"""

from covidet.detection.export.driver import export_bundle, machine_info
from covidet.detection.export.errors import ExportError
from covidet.detection.export.onnx import export_onnx
from covidet.detection.export.parity import COMPARED_METRICS, PARITY_CRITERIA, check_parity, load_images
from covidet.detection.export.quantize import (
    CalibrationInputs,
    calibration_inputs,
    quantize_onnxruntime,
    quantize_openvino,
)

# The public names of the export (its parts: onnx, quantize, parity, driver). ``_load_images`` is the
# old name of ``parity.load_images``, kept for code that imported it from here.
__all__ = [
    "COMPARED_METRICS",
    "PARITY_CRITERIA",
    "CalibrationInputs",
    "ExportError",
    "calibration_inputs",
    "check_parity",
    "export_bundle",
    "export_onnx",
    "machine_info",
    "quantize_onnxruntime",
    "quantize_openvino",
]

_load_images = load_images
