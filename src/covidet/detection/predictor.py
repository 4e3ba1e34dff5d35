"""Run a model bundle on X-ray images: findings in original-image pixels plus an image assessment."""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.ops import nms
from torchvision.utils import draw_bounding_boxes

from covidet import DISCLAIMER
from covidet.detection.bundle import BundleError, default_bundle_path, load_bundle
from covidet.detection.card import ModelCard
from covidet.detection.decision import DEFAULT_THRESHOLD, assess, image_weight_of
from covidet.detection.prediction import Prediction
from covidet.detection.transforms import resize_image
from covidet.domain import CLASS_NAMES, Box, Finding, label_from_model_id
from covidet.imaging import XRayImage

if TYPE_CHECKING:  # PIL is imported where a picture is drawn
    from PIL.Image import Image as PILImage

__all__ = ["DEFAULT_MIN_SCORE", "Prediction", "Predictor", "draw_prediction", "draw_saliency"]

logger = logging.getLogger(__name__)

#: Findings under this score are not reported (the decision rule still sees every detection).
DEFAULT_MIN_SCORE = 0.3
#: Overlapping findings of different classes on the same region are merged above this IoU.
FINDING_NMS_IOU = 0.5

_COLOURS = {"covid19": "#ff4040", "pneumonia": "#ffb000", "normal": "#40c040"}


class Predictor:
    """Loads a bundle once and runs it on many images.

    ``predict`` takes :class:`XRayImage` objects (any size) and returns one :class:`Prediction` each.
    Each image is resized so its longer side equals the model's input size (as in training), run in
    batches, and the boxes are scaled back to the original pixels.

    ``model`` is the bundle's torch ``FasterRCNN`` or its accelerated copy
    (:func:`covidet.detection.accelerated.accelerate`); ``backend`` names what runs it
    (``torch``, or the variant, e.g. ``openvino-int8``). :meth:`from_bundle` chooses it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        *,
        device: str | torch.device = "cpu",
        min_score: float = DEFAULT_MIN_SCORE,
        threshold: float | None = None,
        backend: str = "torch",
    ) -> None:
        # channels_last lets oneDNN pick its faster convolution kernels on CPU: measured here, ResNet-101 FPN
        # at 512 px went from 0.56 s to 0.46 s per image, the shipped MobileNetV3 from 0.083 s to 0.079 s.
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.card = card
        self.device = torch.device(device)
        self.min_score = min_score
        self.threshold = float(
            threshold
            if threshold is not None
            else card.get("decision", {}).get("threshold", DEFAULT_THRESHOLD)
        )
        # Fitted by `covidet calibrate` (1.0 before): scales the probabilities, never the label.
        self.temperature = float(card.get("decision", {}).get("temperature", 1.0))
        # Version 2 of the rule: how much the image head's probabilities count (0: boxes only).
        self.image_weight = image_weight_of(card)
        self.input_size = int(card["architecture"]["max_size"])
        self.backend = backend

    @classmethod
    def from_bundle(
        cls,
        bundle: str | os.PathLike | None = None,
        *,
        device: str = "cpu",
        backend: str | None = None,
        min_score: float = DEFAULT_MIN_SCORE,
        threshold: float | None = None,
    ) -> Predictor:
        """Load ``bundle`` (default: :func:`default_bundle_path`).

        ``backend``: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``; ``None`` reads the ``backend``
        setting (``$COVIDET_BACKEND``, default ``auto``). ``auto`` runs the fastest accelerated variant
        that the model card records as parity-passing and whose artefacts (made by ``covidet export``
        from these weights) are present, else torch. A named runtime that is missing, or has no such
        variant, falls back to torch with a warning. Accelerated runtimes are CPU-only: on another
        ``device`` torch runs. ``min_score`` and ``threshold`` go to :class:`Predictor` (``None``: the
        card's threshold).
        """
        path = Path(bundle) if bundle is not None else default_bundle_path()
        if path is None:
            raise BundleError("no model bundle: pass --model BUNDLE or set COVIDET_MODEL")
        model, card = load_bundle(path, device=device)
        if card.get("purpose", "assess") != "assess":
            raise BundleError(
                f"{path} is a {card['purpose']} model (it only proposes lung boxes for "
                "`covidet propose-boxes`), not an assessment model"
            )
        logger.info("loaded %s %s from %s", card.get("name"), card.get("version"), path)
        if backend is None:
            from covidet.config import get_settings

            backend = get_settings().backend
        model, name = _choose_engine(model, card, path, backend, torch.device(device))
        return cls(model, card, device=device, backend=name, min_score=min_score, threshold=threshold)

    @property
    def name(self) -> str:
        return str(self.card.get("name", "covidet-detector"))

    @property
    def version(self) -> str:
        return str(self.card.get("version", "unknown"))

    def _model_input(self, xray: XRayImage) -> tuple[torch.Tensor, tuple[float, float]]:
        """The model's input ``[3, h, w]`` (longer side = input size) and the (x, y) scale back to the
        original pixels."""
        pixels = torch.from_numpy(np.ascontiguousarray(xray.pixels, np.float32))[None]
        resized = resize_image(pixels, self.input_size)
        return resized.expand(3, -1, -1), (xray.width / resized.shape[-1], xray.height / resized.shape[-2])

    def explain(self, xray: XRayImage, prediction: Prediction) -> list[np.ndarray | None]:
        """Grad-CAM map of each finding of ``prediction`` (made by :meth:`predict` on ``xray``).

        One float32 ``[height, width]`` array in ``[0, 1]`` (peak 1 unless all zero) per finding, at the
        X-ray's original size, or ``None`` for a finding the model does not reproduce. Needs the torch
        backend (gradients); see :mod:`covidet.detection.saliency` for the method and its limits.
        """
        from covidet.detection.saliency import finding_grad_cam, resize_map
        from covidet.domain import model_id_from_label

        if self.backend != "torch":
            raise ValueError(f"saliency maps need the torch backend, not {self.backend}")
        image, (sx, sy) = self._model_input(xray)
        maps: list[np.ndarray | None] = []
        for finding in prediction.findings:
            x1, y1, x2, y2 = finding.box.as_list()
            box = torch.tensor([x1 / sx, y1 / sy, x2 / sx, y2 / sy])
            heat = finding_grad_cam(
                self.model, image.to(self.device), box, model_id_from_label(finding.label)
            )
            if heat is None:
                maps.append(None)
                continue
            heat = resize_map(heat, xray.height, xray.width).clamp(min=0.0)
            peak = float(heat.max())
            maps.append((heat / peak if peak > 0 else heat).numpy())  # peak 1 again after resampling
        return maps

    @torch.inference_mode()
    def predict(self, images: Sequence[XRayImage], *, batch_size: int = 4) -> list[Prediction]:
        """Predict each image; order is preserved.

        Only images of the same resized shape share a forward pass: torchvision pads a batch to its
        largest image, and that padding changes the features near the border (measured on the val split:
        mixed-shape batches of 4 changed 5% of the image labels). So a result never depends on which other
        images were in the batch.
        """
        tensors, scales = [], []
        for xray in images:
            tensor, scale = self._model_input(xray)
            tensors.append(tensor)
            scales.append(scale)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, tensor in enumerate(tensors):
            groups[tuple(tensor.shape)].append(index)
        results: list[Prediction | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                began = time.perf_counter()
                outputs = self.model([tensors[i].to(self.device) for i in chunk])
                seconds = (time.perf_counter() - began) / len(chunk)
                for index, output in zip(chunk, outputs, strict=True):
                    results[index] = self._prediction(output, scales[index], images[index], seconds)
        return [r for r in results if r is not None]

    def _prediction(
        self, output: dict[str, torch.Tensor], scale: tuple[float, float], xray: XRayImage, seconds: float
    ) -> Prediction:
        sx, sy = scale
        boxes = output["boxes"].float().cpu() * torch.tensor([sx, sy, sx, sy])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, xray.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, xray.height)
        labels, scores = output["labels"].cpu(), output["scores"].float().cpu()
        image_probs = output["image_probs"].float().cpu().numpy() if "image_probs" in output else None
        return Prediction(
            findings=self._findings(boxes, labels, scores),
            assessment=assess(
                labels.numpy(),
                scores.numpy(),
                threshold=self.threshold,
                temperature=self.temperature,
                image_probs=image_probs,
                image_weight=self.image_weight,
            ),
            seconds=seconds,
            image_head_probabilities=None
            if image_probs is None
            else {name: float(p) for name, p in zip(CLASS_NAMES, image_probs, strict=True)},
            image_weight=self.image_weight,
        )

    def _findings(self, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> list[Finding]:
        # The box head runs NMS per class, so one lung can carry a covid19 and a pneumonia box; a reader
        # wants one finding per region: keep the most confident class (class-agnostic NMS).
        keep_score = scores >= self.min_score
        boxes, labels, scores = boxes[keep_score], labels[keep_score], scores[keep_score]
        keep = nms(boxes, scores, FINDING_NMS_IOU)
        return [
            Finding(
                box=Box(*(float(c) for c in boxes[i])),
                label=label_from_model_id(int(labels[i])),
                score=float(scores[i]),
            )
            for i in keep.tolist()
        ]


def _choose_engine(
    model: torch.nn.Module, card: ModelCard, bundle: Path, backend: str, device: torch.device
) -> tuple[torch.nn.Module, str]:
    """``(model to run, its name)`` for the ``backend`` setting; see :meth:`Predictor.from_bundle`."""
    from covidet.detection.accelerated import (
        BACKENDS,
        load_variant,
        runtime_available,
        select_variant,
    )

    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    if backend == "torch":
        return model, "torch"
    if device.type != "cpu":
        if backend != "auto":
            logger.warning("backend %s runs on CPU only; using torch on %s", backend, device)
        return model, "torch"
    if backend != "auto" and not runtime_available(backend):
        logger.warning("backend %s is not installed (pip install 'covidet[fast]'); using torch", backend)
        return model, "torch"
    variant = select_variant(bundle, card, backend)
    if variant is None:
        log = logger.info if backend == "auto" else logger.warning
        log(
            "no parity-checked %s artefacts for these weights in %s (run `covidet export`); using torch",
            "accelerated" if backend == "auto" else backend,
            bundle,
        )
        return model, "torch"
    try:
        return load_variant(model, bundle, variant), variant.name
    except Exception as error:  # a broken artefact or runtime must not stop the service: torch still works
        logger.warning("cannot load %s (%s); using torch", variant.name, error)
        return model, "torch"


def draw_prediction(xray: XRayImage, prediction: Prediction, path: str | os.PathLike) -> Path:
    """Write a PNG of the X-ray with the findings drawn (label and score) and the assessment."""
    from PIL import Image, ImageDraw

    image = torch.from_numpy(xray.to_uint8())[None].expand(3, -1, -1).contiguous()
    if prediction.findings:
        boxes = torch.tensor([f.box.as_list() for f in prediction.findings], dtype=torch.float32)
        image = draw_bounding_boxes(
            image,
            boxes,
            labels=[f"{f.label.value} {f.score:.2f}" for f in prediction.findings],
            colors=[_COLOURS[f.label.value] for f in prediction.findings],
            width=max(2, round(max(xray.width, xray.height) / 300)),
        )
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    caption = (
        f"{prediction.assessment.label.value} "
        f"p={prediction.assessment.probabilities[prediction.assessment.label]:.2f} - {DISCLAIMER}"
    )
    ImageDraw.Draw(picture).text((8, 8), caption, fill=(255, 255, 0))
    return _save(picture, path)


def _save(picture: PILImage, path: str | os.PathLike) -> Path:
    """Write ``picture`` to ``path`` (its folder created when missing); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def draw_saliency(
    xray: XRayImage, finding: Finding, heatmap: np.ndarray, path: str | os.PathLike, *, model_version: str
) -> Path:
    """Write a PNG of the X-ray with ``heatmap`` (``[height, width]`` in ``[0, 1]``, e.g. from
    :meth:`Predictor.explain`) blended over it in the ``inferno`` colour map, the finding's box drawn,
    and a caption naming the method, the model version and the not-for-clinical-use marker."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    gray = xray.to_uint8().astype(np.float32)[..., None].repeat(3, axis=2)
    colour = colormaps["inferno"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    # Weak saliency stays transparent so the anatomy under it remains readable.
    alpha = 0.6 * np.clip(heatmap, 0.0, 1.0)[..., None]
    blended = (gray * (1.0 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)
    image = torch.from_numpy(blended).permute(2, 0, 1).contiguous()
    image = draw_bounding_boxes(
        image,
        torch.tensor([finding.box.as_list()], dtype=torch.float32),
        labels=[f"{finding.label.value} {finding.score:.2f}"],
        colors=[_COLOURS[finding.label.value]],
        width=max(2, round(max(xray.width, xray.height) / 300)),
    )
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    caption = f"Grad-CAM of {finding.label.value} {finding.score:.2f}, model {model_version} - {DISCLAIMER}"
    ImageDraw.Draw(picture).text((8, 8), caption, fill=(255, 255, 0))
    return _save(picture, path)
