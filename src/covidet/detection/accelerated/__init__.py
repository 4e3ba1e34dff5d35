"""Fast CPU inference: the heavy, static parts of Faster R-CNN in ONNX Runtime or OpenVINO.

The detector is split where its work changes nature:

* **Compiled graphs** (run by a runtime): ``backbone`` (backbone + FPN: images ``[B, 3, H, W]`` ->
  one feature map ``[B, 256, H/s, W/s]`` per level), ``rpn_head`` (feature maps -> objectness
  ``[B, A, h, w]`` and box deltas ``[B, 4A, h, w]`` per level) and ``box_head`` (the two fully connected
  layers: RoI features ``[N, 256, 7, 7]`` -> ``[N, 1024]``). They hold almost all the arithmetic and have
  no data-dependent control flow, so they export cleanly and quantise well.
* **torch** (unchanged torchvision code): resizing and normalisation, anchors, proposal decoding and NMS,
  RoIAlign, the final class/box layer, per-class NMS and the scaling of boxes back to image pixels. These
  are data-dependent (``torch.export`` fails on NMS) and cheap.

:func:`accelerate` returns a copy of a ``FasterRCNN`` whose ``backbone``, ``rpn.head`` and
``roi_heads.box_head`` submodules call the runtime instead of torch; everything else, including
torchvision's ``forward`` code, is the original, so the accelerated model sees exactly the tensors the
torch model sees (same resize, same padding to a multiple of 32, same batching) and differs only by the
runtime's arithmetic. Its contract is the torch model's: ``model(images)`` with a list of ``[3, H, W]``
float tensors in ``[0, 1]`` returns per image ``boxes`` (``[N, 4]``, ``[x1, y1, x2, y2]`` in pixels of
that image), ``labels`` and ``scores``.

The artefacts live in a model bundle under ``accelerated/`` (see :mod:`covidet.detection.export`) and
are described by the model card's ``accelerated`` section; :func:`load_variant` loads one after checking
that it was made from the bundle's weights.

One module per job: ``runtime`` (names, the :class:`Graph` protocol, availability), ``onnx_runtime`` and
``openvino_runtime`` (one runtime each), ``modules`` (the torch stand-ins and :func:`accelerate`) and
``variants`` (the card's variants, selection, loading); every public name is re-exported here.
"""

from __future__ import annotations

from covidet.detection.accelerated.modules import (
    RuntimeBackbone,
    RuntimeBoxHead,
    RuntimeRPNHead,
    accelerate,
)
from covidet.detection.accelerated.onnx_runtime import OnnxRuntimeGraph
from covidet.detection.accelerated.openvino_runtime import OpenVINOGraph
from covidet.detection.accelerated.runtime import (
    BACKENDS,
    GRAPHS,
    Backend,
    Graph,
    Precision,
    RuntimeUnavailableError,
    runtime_available,
)
from covidet.detection.accelerated.variants import (
    ACCELERATED_DIR,
    MANIFEST_FILE,
    Variant,
    available_variants,
    file_sha256,
    load_graphs,
    load_variant,
    select_variant,
)

__all__ = [
    "ACCELERATED_DIR",
    "BACKENDS",
    "GRAPHS",
    "MANIFEST_FILE",
    "Backend",
    "Graph",
    "OnnxRuntimeGraph",
    "OpenVINOGraph",
    "Precision",
    "RuntimeBackbone",
    "RuntimeBoxHead",
    "RuntimeRPNHead",
    "RuntimeUnavailableError",
    "Variant",
    "accelerate",
    "available_variants",
    "file_sha256",
    "load_graphs",
    "load_variant",
    "runtime_available",
    "select_variant",
]
