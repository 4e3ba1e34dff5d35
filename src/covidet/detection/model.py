"""Faster R-CNN detector builder (torchvision), trained from scratch.

The paper's detector is Faster R-CNN with a ResNet-101 FPN backbone and a region proposal network.
Lighter backbones are offered because a ResNet-101 training step costs 16-21 s on a 2-core CPU
(see ``docs/training.md``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.resnet import BasicBlock, Bottleneck

from covidet.detection.roi_align import FastMultiScaleRoIAlign
from covidet.domain import CLASS_NAMES

__all__ = [
    "BACKBONES",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "AssessmentRCNN",
    "Backbone",
    "ImageHead",
    "Norm",
    "build_detector",
]

Backbone = Literal["resnet101", "resnet50", "resnet18", "mobilenet_v3_large"]
Norm = Literal["batch", "group"]
BACKBONES: tuple[str, ...] = ("resnet101", "resnet50", "resnet18", "mobilenet_v3_large")

#: Grayscale X-rays are replicated to 3 channels (so ImageNet-shaped weights stay loadable by users who
#: have them) and normalised with these statistics (pixels in [0, 1]).
IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGE_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)


def _group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest of 32/16/8/4/2/1 groups that divides ``num_channels``."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if num_channels % g == 0)
    return nn.GroupNorm(groups, num_channels)


def _norm_layer(norm: Norm) -> Callable[..., nn.Module]:
    # torchvision's FPN backbones default to FrozenBatchNorm2d: fixed affine statistics copied from
    # ImageNet weights. Trained from scratch there is nothing to copy, so a frozen norm is an identity
    # and the deep network trains badly or diverges. We use a norm that learns: BatchNorm (fast, fine
    # for batches of >= 4 images) or GroupNorm (independent of batch size, better for 1-2 images per
    # device, a little slower on CPU).
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return _group_norm
    raise ValueError(f"unknown norm {norm!r}: choose 'batch' or 'group'")


def build_detector(
    *,
    backbone: Backbone = "resnet101",
    num_classes: int = len(CLASS_NAMES) + 1,
    min_size: int = 800,
    max_size: int = 1333,
    norm: Norm = "batch",
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    box_score_thresh: float = 0.01,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 20,
    rpn_post_nms_top_n_train: int = 600,
    rpn_post_nms_top_n_test: int = 300,
    box_batch_size_per_image: int = 128,
    image_head: bool = False,
    image_loss_weight: float = 1.0,
    image_head_pool: Literal["image", "boxes"] = "image",
) -> FasterRCNN:
    """Build an untrained Faster R-CNN with an FPN backbone and a region proposal network.

    Args:
        backbone: ``resnet101`` (the paper's; default), ``resnet50``, ``resnet18`` or
            ``mobilenet_v3_large``. All layers are trainable; no pretrained weights are loaded.
        num_classes: classes including background (default 4: background, covid19, pneumonia, normal).
        min_size, max_size: the model resizes each image so its shorter side is ``min_size`` pixels
            unless the longer side would exceed ``max_size``.
        norm: ``batch`` or ``group`` normalisation in the backbone (see the comment in ``_norm_layer``).
        anchor_aspect_ratios: height/width ratios of the RPN anchors at every FPN level.
        box_score_thresh: detections scoring below this are dropped (kept low so mAP and the image-level
            decision see weak evidence too).
        box_nms_thresh: per-class NMS IoU threshold of the box head.
        box_detections_per_img: at most this many detections per image.
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals kept per image after the RPN's NMS.
            A chest X-ray holds two lungs, so a few hundred proposals suffice; torchvision's defaults
            (2000/1000, tuned for 80-class COCO scenes) make the box head dominate CPU time.
        box_batch_size_per_image: RoIs sampled per image to train the box head (torchvision: 512).
        image_head: also classify the whole image (covid19 / pneumonia / normal) from the FPN features
            (:class:`ImageHead`), trained jointly with the detector; the model is then an
            :class:`AssessmentRCNN`. Bundles without it rebuild the plain detector, unchanged.
        image_loss_weight: weight of the image head's cross-entropy in the training loss.
        image_head_pool: where the image head averages the features: ``image`` (the whole image) or
            ``boxes`` (inside the image's boxes: the detector's own, scoring >= 0.3, at inference; the
            ground-truth boxes in training; the whole image when there are none).

    Returns:
        A ``torchvision.models.detection.FasterRCNN``. In eval mode, ``model(images)`` takes a list of
        float tensors ``[3, H, W]`` with values in ``[0, 1]`` and returns, per image, a dict with
        ``boxes`` (float ``[N, 4]``, ``[x1, y1, x2, y2]`` in pixels of that input tensor), ``labels``
        (int64 ``[N]``, 1..num_classes-1) and ``scores`` (float ``[N]``, softmax class scores). In train
        mode, ``model(images, targets)`` with targets ``{"boxes": [N, 4], "labels": [N]}`` (N may be 0)
        returns a dict of losses. With ``image_head``, each eval output also has ``image_probs`` (float
        ``[3]``, softmax over covid19, pneumonia, normal), and in train mode each target needs
        ``image_label`` (model id 1..3) and the losses include ``loss_image``.
    """
    norm_layer = _norm_layer(norm)
    if backbone == "mobilenet_v3_large":
        body = mobilenet_backbone(
            backbone_name=backbone, weights=None, fpn=True, norm_layer=norm_layer, trainable_layers=6
        )
        # MobileNetV3-FPN returns two feature maps plus the pooled level, as in torchvision's
        # fasterrcnn_mobilenet_v3_large_fpn: every level sees every anchor size.
        sizes: tuple[tuple[int, ...], ...] = ((32, 64, 128, 256, 512),) * 3
    elif backbone in ("resnet101", "resnet50", "resnet18"):
        body = resnet_fpn_backbone(
            backbone_name=backbone, weights=None, norm_layer=norm_layer, trainable_layers=5
        )
        sizes = ((32,), (64,), (128,), (256,), (512,))
    else:
        raise ValueError(f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
    anchor_generator = AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(anchor_aspect_ratios),) * len(sizes))
    kwargs = (
        {"image_loss_weight": image_loss_weight, "image_head_pool": image_head_pool} if image_head else {}
    )
    model = (AssessmentRCNN if image_head else FasterRCNN)(
        body,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        rpn_anchor_generator=anchor_generator,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
        rpn_pre_nms_top_n_train=2 * rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=2 * rpn_post_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_batch_size_per_image=box_batch_size_per_image,
        # torchvision's default pooler (levels "0".."3", 7x7, sampling ratio 2) with a faster CPU kernel:
        # its RoIAlign backward was a third of a training step (see covidet.detection.roi_align).
        box_roi_pool=FastMultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
        **kwargs,
    )
    _init_from_scratch(model)
    return model


class ImageHead(nn.Module):
    """Image-level classifier on the FPN features, beside the box head.

    Each FPN level is averaged over the image's own area (the batch padding is left out, so a result
    does not depend on the other images of the batch), the levels' averages are concatenated
    (``levels x channels`` values: 768 for MobileNetV3-FPN's three levels of 256), and one linear layer
    after dropout gives the logits ``[B, num_classes]`` (covid19, pneumonia, normal). A linear probe on
    these averages of the frozen detector scored val AUC 0.88 (``benchmarks/image_head_probe.py``); here
    the backbone learns them jointly with the boxes.
    """

    def __init__(
        self, in_channels: int, num_levels: int, num_classes: int = len(CLASS_NAMES), dropout: float = 0.2
    ):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels * num_levels, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        features: OrderedDict[str, torch.Tensor],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
        boxes: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``features``: FPN levels ``[B, C, h, w]`` of the padded batch ``[B, 3, *padded_size]``;
        ``image_sizes``: each image's ``(H, W)`` before padding; ``boxes``: per image, ``[K, 4]`` regions to
        average inside (:meth:`pool_in_boxes`), or ``None`` for the whole image (:meth:`pool`).
        Returns logits ``[B, num_classes]``."""
        pooled = (
            self.pool(features, image_sizes, padded_size)
            if boxes is None
            else self.pool_in_boxes(features, boxes, image_sizes, padded_size)
        )
        return self.classifier(self.dropout(pooled))

    @staticmethod
    def pool(
        features: OrderedDict[str, torch.Tensor],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
    ) -> torch.Tensor:
        """The head's input ``[B, levels * C]`` (float32): each level averaged over each image's own
        area, levels concatenated in order."""
        pooled = []
        for level in features.values():
            height, width = level.shape[-2:]
            per_image = []
            for index, (image_h, image_w) in enumerate(image_sizes):
                # The level's stride follows from the padded input; ceil keeps a partly covered cell.
                rows = max(1, min(height, math.ceil(image_h * height / padded_size[0])))
                cols = max(1, min(width, math.ceil(image_w * width / padded_size[1])))
                per_image.append(level[index, :, :rows, :cols].float().mean(dim=(-2, -1)))
            pooled.append(torch.stack(per_image))
        return torch.cat(pooled, dim=1)

    @staticmethod
    def pool_in_boxes(
        features: OrderedDict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
    ) -> torch.Tensor:
        """Like :meth:`pool`, but each level is averaged over the cells covered by the image's
        ``boxes[i]`` (``[K, 4]``, ``[x1, y1, x2, y2]`` in the padded batch's pixels); an image without
        boxes is averaged over its whole area."""
        whole = ImageHead.pool(features, image_sizes, padded_size)
        rows = []
        for index, image_boxes in enumerate(boxes):
            if len(image_boxes) == 0:
                rows.append(whole[index])
                continue
            pooled = []
            for level in features.values():
                height, width = level.shape[-2:]
                mask = torch.zeros(height, width, dtype=torch.bool, device=level.device)
                for x1, y1, x2, y2 in image_boxes.tolist():
                    # Cells the box overlaps by at least half; at least one cell per box.
                    r1, c1 = int(y1 * height / padded_size[0]), int(x1 * width / padded_size[1])
                    r2 = max(r1 + 1, round(y2 * height / padded_size[0]))
                    c2 = max(c1 + 1, round(x2 * width / padded_size[1]))
                    mask[r1:r2, c1:c2] = True
                pooled.append(level[index][:, mask].float().mean(dim=1))
            rows.append(torch.cat(pooled))
        return torch.stack(rows)


class AssessmentRCNN(FasterRCNN):
    """torchvision's Faster R-CNN plus an :class:`ImageHead` on the same FPN features.

    ``forward`` is :class:`~torchvision.models.detection.generalized_rcnn.GeneralizedRCNN`'s (transform,
    backbone, RPN, box head, postprocess) with the image head run on the backbone's features: in train
    mode the losses gain ``loss_image`` (cross-entropy with each target's ``image_label``, times
    ``image_loss_weight``); in eval mode each output gains ``image_probs`` ``[3]``.
    """

    #: Detections scoring at least this mark the regions the ``boxes`` pooling averages at inference.
    POOL_MIN_SCORE = 0.3

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        image_loss_weight: float = 1.0,
        image_head_pool: Literal["image", "boxes"] = "image",
        **kwargs,
    ):
        super().__init__(backbone, num_classes, **kwargs)
        num_levels = len(self.rpn.anchor_generator.sizes)
        self.image_head = ImageHead(int(backbone.out_channels), num_levels)
        self.image_loss_weight = float(image_loss_weight)
        if image_head_pool not in ("image", "boxes"):
            raise ValueError(f"unknown image_head_pool {image_head_pool!r}: choose 'image' or 'boxes'")
        self.image_head_pool = image_head_pool

    def forward(  # type: ignore[override]
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Losses (train mode) or one detection dict per image with ``image_probs`` (eval mode)."""
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        padded = (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1]))
        regions = None
        if self.image_head_pool == "boxes":
            # Training pools inside the ground-truth boxes, inference inside the detector's own.
            regions = (
                [target["boxes"] for target in targets]
                if self.training
                else [d["boxes"][d["scores"] >= self.POOL_MIN_SCORE] for d in detections]
            )
        logits = self.image_head(features, image_list.image_sizes, padded, regions)
        if self.training:
            truth = torch.stack([target["image_label"] for target in targets]).to(logits.device) - 1
            return {
                **detector_losses,
                **proposal_losses,
                "loss_image": self.image_loss_weight * F.cross_entropy(logits, truth),
            }
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        for detection, probabilities in zip(detections, logits.float().softmax(dim=1), strict=True):
            detection["image_probs"] = probabilities
        return detections


def _init_from_scratch(model: nn.Module) -> None:
    """He-initialise convolutions (torchvision leaves the backbone at its defaults) and start the
    norm layers at identity, which keeps activations finite through 100+ layers from the first step."""
    for module in model.backbone.body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    # Zero-init the last norm of each residual branch ("Bag of Tricks", Goyal et al. 2017): each block
    # starts as identity, so a deep ResNet trains stably from scratch.
    for module in model.backbone.body.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    # Start the classifier near the class prior instead of uniform (Focal-loss paper's prior trick,
    # light version): background dominates sampled RoIs, so the initial loss is smaller and stable.
    cls_score = model.roi_heads.box_predictor.cls_score
    nn.init.normal_(cls_score.weight, std=0.01)
    with torch.no_grad():
        cls_score.bias.zero_()
        cls_score.bias[0] = math.log(3.0)
