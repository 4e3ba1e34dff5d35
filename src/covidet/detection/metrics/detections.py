"""The input of every detection metric: detections or ground truth of one image, and the class order.

Boxes are ``[x1, y1, x2, y2]`` pixel floats; detector labels are model ids ``1..K`` in the order of
:data:`covidet.domain.CLASS_NAMES` (0 is background and never appears here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidet.domain import CLASS_NAMES

__all__ = ["DEFAULT_CLASS_NAMES", "ImageDetections"]

#: Class names in model order (model id ``i + 1`` is ``DEFAULT_CLASS_NAMES[i]``).
DEFAULT_CLASS_NAMES: tuple[str, ...] = tuple(c.value for c in CLASS_NAMES)


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
