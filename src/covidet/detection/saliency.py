"""Grad-CAM for one finding of the Faster R-CNN: where in the image its score came from.

For a finding (box and class), Grad-CAM (Selvaraju et al., ICCV 2017; Captum's ``LayerGradCam``)
takes the gradient of that detection's class score with respect to each FPN level the box head pools
from, averages it per channel, weighs that level's activations with it, keeps the positive part, and
upsamples the map to the image. The maps of all pooled levels are summed (the detection's score only
depends on the level its proposal was pooled from, so the others contribute zeros), then scaled to
``[0, 1]``.

Why it matters here: a model that calls Covid-19 for the right reason should draw its evidence from
the lungs, not from text markers, borders or the image's source. :func:`mass_inside` measures that:
the share of a map's mass that falls inside given boxes.

Limits: Grad-CAM shows where the features that raised the score are, at the FPN level's resolution
(1/16 or 1/32 of the input for MobileNetV3); it is not a segmentation and does not prove causation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.ops import box_iou

__all__ = ["finding_grad_cam", "mass_inside", "resize_map"]


def _pooled_level_layers(model: FasterRCNN) -> list[torch.nn.Module]:
    """The FPN output convolutions of the levels the box head pools from (``"0"``, ``"1"``, ...)."""
    pooled = {int(name) for name in model.roi_heads.box_roi_pool.featmap_names if name.isdigit()}
    blocks = model.backbone.fpn.layer_blocks
    return [blocks[index] for index in sorted(pooled) if index < len(blocks)]


def finding_grad_cam(model: FasterRCNN, image: Tensor, box: Tensor, label: int) -> Tensor | None:
    """Grad-CAM map ``[H, W]`` in ``[0, 1]`` for one detection of ``model`` on ``image``.

    ``image`` is the model input ``[3, H, W]`` (already resized as the predictor does); ``box`` is
    the finding's ``[x1, y1, x2, y2]`` in that input's pixels and ``label`` its model class id
    (1..3). The detection explained is the one of that class whose box overlaps ``box`` most (IoU
    ≥ 0.9, so it is the same detection the predictor reported). Returns ``None`` when the model no
    longer produces it. ``model`` must be a torch model (not an accelerated copy): gradients are needed.
    """
    model.eval()
    target_box = box.reshape(1, 4).float()

    def detection_score(batch: Tensor) -> Tensor:
        output = model(list(batch))[0]
        same_class = torch.where(output["labels"] == label)[0]
        if len(same_class) == 0:
            raise LookupError("no detection of this class")
        overlap = box_iou(output["boxes"][same_class].detach().float(), target_box)[:, 0]
        best = int(overlap.argmax())
        if float(overlap[best]) < 0.9:
            raise LookupError("the detection is not reproduced")
        return output["scores"][same_class[best]].reshape(1)

    height, width = image.shape[-2:]
    total = torch.zeros((height, width))
    with torch.enable_grad():
        for layer in _pooled_level_layers(model):
            try:
                level_map = LayerGradCam(detection_score, layer).attribute(
                    image[None].detach(), relu_attributions=True
                )
            except LookupError:
                return None
            total += LayerAttribution.interpolate(level_map.detach(), (height, width), "bilinear")[0, 0]
    peak = float(total.max())
    return total / peak if peak > 0 else total


def mass_inside(heatmap: Tensor, boxes: Tensor) -> float:
    """Share of ``heatmap``'s mass (``[H, W]``, non-negative) inside the union of ``boxes``
    (``[N, 4]`` ``[x1, y1, x2, y2]`` in the map's pixels); 0.0 for an all-zero map."""
    inside = torch.zeros(heatmap.shape, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.round().long().tolist():
        inside[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    total = float(heatmap.sum())
    return float(heatmap[inside].sum()) / total if total > 0 else 0.0


def resize_map(heatmap: Tensor, height: int, width: int) -> Tensor:
    """``heatmap [h, w]`` resized (bilinear) to ``[height, width]``."""
    return F.interpolate(heatmap[None, None], size=(height, width), mode="bilinear", align_corners=False)[
        0, 0
    ]
