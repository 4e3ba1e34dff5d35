"""Training augmentations for chest X-rays with boxes.

The data README warns of two shortcuts: normals of one source are 224-px images resampled twice, and
sources differ in contrast. So training (1) resizes every image to a common scale, (2) randomly
degrades resolution (down-sample to as low as 224 px, then back up) so that sharpness stops telling
the source, and (3) randomises gamma, contrast and histogram equalisation. Geometric augmentations
(flip, small rotation/scale/shift) move the boxes with the image.

Every transform takes and returns ``(image, target)``: ``image`` float32 ``[1, H, W]`` in ``[0, 1]``,
``target["boxes"]`` float ``[N, 4]`` ``[x1, y1, x2, y2]`` in pixels of ``image``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = [
    "Compose",
    "CropBorder",
    "DownsampleRoundTrip",
    "PadToSquare",
    "RandomContrast",
    "RandomFraming",
    "RandomGeometry",
    "RandomResolution",
    "ResizeLongerSide",
    "build_train_transform",
    "resize_image",
    "resize_longer_side",
]

Target = dict[str, torch.Tensor]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[C, H, W]`` so the longer side is ``size`` pixels (antialiased when shrinking)."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    if abs(scale - 1.0) < 1e-6:
        return image
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(
        image[None], size=new_size, mode="bilinear", antialias=scale < 1, align_corners=False
    )[0]
    return resized.clamp_(0, 1)


def resize_longer_side(image: torch.Tensor, target: Target, size: int) -> tuple[torch.Tensor, Target]:
    """:func:`resize_image`, scaling ``target["boxes"]`` with the image."""
    height, width = image.shape[-2:]
    resized = resize_image(image, size)
    if resized is image:
        return image, target
    new_height, new_width = resized.shape[-2:]
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.tensor(
        [new_width / width, new_height / height] * 2, dtype=torch.float32
    )
    return resized, target


class ResizeLongerSide:
    """Common scale: longer side to ``size`` pixels."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        return resize_longer_side(image, target, self.size)


class RandomResolution:
    """With probability ``p``, down-sample so the longer side is uniform in ``[min_side, current]`` and
    up-sample back: the image keeps its size but loses detail, as 224-px sources have."""

    def __init__(self, min_side: int = 224, p: float = 0.5) -> None:
        self.min_side, self.p = min_side, p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        height, width = image.shape[-2:]
        longer = max(height, width)
        if random.random() >= self.p or longer <= self.min_side:
            return image, target
        side = random.uniform(self.min_side, longer)
        small = (max(1, round(height * side / longer)), max(1, round(width * side / longer)))
        low = F.interpolate(image[None], size=small, mode="bilinear", antialias=True, align_corners=False)
        mode = random.choice(["bilinear", "bicubic", "nearest"])
        back = F.interpolate(
            low, size=(height, width), mode=mode, **({} if mode == "nearest" else {"align_corners": False})
        )
        return back[0].clamp_(0, 1), target


class DownsampleRoundTrip:
    """Deterministic: down-sample so the longer side is ``side`` pixels, then back to the original size
    (bilinear). Used to test that labels do not hinge on resolution."""

    def __init__(self, side: int = 224) -> None:
        self.side = side

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        height, width = image.shape[-2:]
        if max(height, width) <= self.side:
            return image, target
        low = resize_image(image, self.side)
        back = F.interpolate(low[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return back.clamp_(0, 1), target


class PadToSquare:
    """Deterministic: pad the shorter side with black (0) on both sides to a square, boxes shifted with
    the image. Used to test that labels do not hinge on the aspect ratio or the border (one source's
    images are square, another's are not)."""

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        height, width = image.shape[-2:]
        side = max(height, width)
        left, top = (side - width) // 2, (side - height) // 2
        if left == 0 and top == 0:
            return image, target
        padded = F.pad(image, (left, side - width - left, top, side - height - top), value=0.0)
        target = dict(target)
        target["boxes"] = target["boxes"] + torch.tensor([left, top, left, top], dtype=torch.float32)
        return padded, target


class CropBorder:
    """Deterministic: cut ``fraction`` of the width (height) off the left and right (top and bottom)
    edges; boxes are shifted and clipped to what remains. Used to test that labels do not hinge on the
    border (text, markers, collimation)."""

    def __init__(self, fraction: float = 0.08) -> None:
        if not 0.0 <= fraction < 0.5:
            raise ValueError(f"fraction must be in [0, 0.5), got {fraction}")
        self.fraction = fraction

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        height, width = image.shape[-2:]
        dx, dy = round(width * self.fraction), round(height * self.fraction)
        cropped = image[..., dy : height - dy, dx : width - dx]
        target = dict(target)
        boxes = target["boxes"] - torch.tensor([dx, dy, dx, dy], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 2 * dx)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 2 * dy)
        target["boxes"] = boxes
        return cropped, target


class RandomFraming:
    """With probability ``p``, change the framing: half of the time pad to a square (:class:`PadToSquare`),
    otherwise cut an independent random share in ``[0, max_crop]`` off each edge. Boxes move with the
    image; a box left under 4 px wide or high is dropped with its label. It teaches that neither the
    aspect ratio nor the border tells the label (one source's films are square, another's are not), which
    ``covidet evaluate``'s pad-to-square and border-crop probes measure."""

    def __init__(self, p: float = 0.5, max_crop: float = 0.1) -> None:
        if not 0.0 <= max_crop < 0.5:
            raise ValueError(f"max_crop must be in [0, 0.5), got {max_crop}")
        self.p, self.max_crop = p, max_crop

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if random.random() >= self.p:
            return image, target
        if random.random() < 0.5:
            return PadToSquare()(image, target)
        height, width = image.shape[-2:]
        left, right = (round(width * random.uniform(0, self.max_crop)) for _ in range(2))
        top, bottom = (round(height * random.uniform(0, self.max_crop)) for _ in range(2))
        new_width, new_height = width - left - right, height - top - bottom
        cropped = image[..., top : height - bottom, left : width - right]
        target = dict(target)
        boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_height)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 4) & ((boxes[:, 3] - boxes[:, 1]) >= 4)
        target["boxes"] = boxes[keep]
        if "labels" in target:
            target["labels"] = target["labels"][keep]
        return cropped, target


class RandomContrast:
    """Random gamma, contrast/brightness, occasional histogram equalisation and mild noise."""

    def __init__(
        self,
        gamma: tuple[float, float] = (0.6, 1.6),
        contrast: float = 0.3,
        brightness: float = 0.1,
        equalize_p: float = 0.25,
        noise_p: float = 0.3,
    ) -> None:
        self.gamma, self.contrast, self.brightness = gamma, contrast, brightness
        self.equalize_p, self.noise_p = equalize_p, noise_p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        log_low, log_high = math.log(self.gamma[0]), math.log(self.gamma[1])
        image = image.clamp(0, 1) ** math.exp(random.uniform(log_low, log_high))
        if random.random() < self.equalize_p:
            equalized = v2.functional.equalize((image * 255).round().to(torch.uint8)).float() / 255
            alpha = random.uniform(0.3, 1.0)  # partial equalisation, a cheap CLAHE-like contrast boost
            image = alpha * equalized + (1 - alpha) * image
        mean = image.mean()
        factor = 1 + random.uniform(-self.contrast, self.contrast)
        image = (image - mean) * factor + mean + random.uniform(-self.brightness, self.brightness)
        if random.random() < self.noise_p:
            image = image + torch.randn_like(image) * random.uniform(0.0, 0.02)
        return image.clamp_(0, 1), target


class RandomGeometry:
    """Horizontal flip (p=0.5) and a small affine (rotation, scale, shift) applied to image and boxes;
    boxes that leave the image or collapse are dropped with their labels."""

    def __init__(
        self, degrees: float = 7.0, scale: tuple[float, float] = (0.9, 1.1), translate: float = 0.05
    ) -> None:
        self.transform = v2.Compose(
            [
                v2.RandomHorizontalFlip(p=0.5),
                v2.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale),
                v2.ClampBoundingBoxes(),
                v2.SanitizeBoundingBoxes(min_size=4.0),
            ]
        )

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        height, width = image.shape[-2:]
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width))
        sample = {"image": tv_tensors.Image(image), "boxes": boxes, "labels": target["labels"]}
        out = self.transform(sample)
        target = dict(target)
        target["boxes"] = out["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4)
        target["labels"] = out["labels"]
        return out["image"].as_subclass(torch.Tensor), target


def build_train_transform(*, size: int, min_side: int = 224, framing: bool = False) -> Compose:
    """The training pipeline: common scale (longer side ``size``), resolution randomisation, with
    ``framing`` :class:`RandomFraming`, contrast randomisation, then geometry."""
    return Compose(
        [
            ResizeLongerSide(size),
            RandomResolution(min_side=min(min_side, size), p=0.5),
            *([RandomFraming()] if framing else []),
            RandomContrast(),
            RandomGeometry(),
        ]
    )
