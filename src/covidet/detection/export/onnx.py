"""The detector's three compiled parts (backbone + FPN, RPN head, box head) as ONNX graphs with dynamic
batch and spatial axes (see :mod:`covidet.detection.accelerated` for how they are run)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from covidet.detection.accelerated import GRAPHS

__all__ = ["export_onnx"]

logger = logging.getLogger(__name__)


class _BackboneGraph(nn.Module):
    """Backbone + FPN: ``images [B, 3, H, W]`` (normalised, H and W multiples of 32) -> FPN levels."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(images).values())


class _RPNHeadGraph(nn.Module):
    """RPN head over all levels: ``f_i [B, 256, h_i, w_i]`` -> objectness per level, then deltas."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.head = model.rpn.head

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        objectness, deltas = self.head(list(features))
        return (*objectness, *deltas)


class _BoxHeadGraph(nn.Module):
    """The box head's two fully connected layers: ``[N, 256, 7, 7]`` -> ``[N, 1024]``."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.box_head = model.roi_heads.box_head

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        return self.box_head(roi_features)


def _export_one(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: list[str]) -> None:
    """Export with the dynamo exporter (every axis dynamic); fall back to the TorchScript exporter.

    The dynamo exporter is torch's recommended one; the TorchScript exporter is deprecated but still
    handles these plain convolutional graphs, so it is kept as a fallback for other torch versions.
    """
    module.eval()
    auto = torch.export.Dim.AUTO
    every_axis = tuple({axis: auto for axis in range(a.dim())} for a in args)
    # forward(*features) of the RPN head: one varargs entry holding every level
    dynamic: tuple[object, ...] = (every_axis,) if isinstance(module, _RPNHeadGraph) else every_axis
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                module, args, None, dynamo=True, dynamic_shapes=dynamic, input_names=names, verbose=False
            )
        program.save(str(path), external_data=False)
        return
    except Exception as error:  # the exporter raises many types; all mean "try the other one"
        logger.warning(
            "dynamo ONNX export of %s failed (%s); using the TorchScript exporter", path.name, error
        )
    axes = {
        name: {axis: f"{name}_{axis}" for axis in range(a.dim())} for name, a in zip(names, args, strict=True)
    }
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path), dynamo=False, input_names=names, dynamic_axes=axes, opset_version=17
        )


def export_onnx(model: FasterRCNN, out_dir: str | os.PathLike, images: torch.Tensor) -> dict[str, Path]:
    """Export the three compiled parts of ``model`` to ``out_dir/{backbone,rpn_head,box_head}.onnx``.

    ``images`` is an example batch as the backbone receives it (``[B, 3, H, W]``, normalised and padded
    by ``model.transform``); the exported graphs accept any batch size and any H, W that are multiples of
    32 (the box head any number of RoIs). Returns the file of each graph.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad():
        features = list(model.backbone(images).values())
        pooled = torch.randn(8, int(model.backbone.out_channels), 7, 7)
    paths = {name: out / f"{name}.onnx" for name in GRAPHS}
    _export_one(_BackboneGraph(model), (images,), paths["backbone"], ["images"])
    _export_one(
        _RPNHeadGraph(model), tuple(features), paths["rpn_head"], [f"f{i}" for i in range(len(features))]
    )
    _export_one(_BoxHeadGraph(model), (pooled,), paths["box_head"], ["roi_features"])
    return paths
