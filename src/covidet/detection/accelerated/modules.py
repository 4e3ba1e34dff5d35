"""The torch side of an accelerated model: stand-in modules that call a runtime graph, and :func:`accelerate`.

:func:`accelerate` copies a ``FasterRCNN`` and substitutes its ``backbone``, ``rpn.head`` and
``roi_heads.box_head`` by :class:`RuntimeBackbone`, :class:`RuntimeRPNHead` and :class:`RuntimeBoxHead`;
each takes and returns the tensors the torch submodule does, so torchvision's own ``forward`` code runs
unchanged around them.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torchvision.models.detection import FasterRCNN

from covidet.detection.accelerated.runtime import Graph

__all__ = ["RuntimeBackbone", "RuntimeBoxHead", "RuntimeRPNHead", "accelerate"]


def _as_numpy(tensor: torch.Tensor) -> NDArray[np.float32]:
    # Runtimes read NCHW float32; channels_last torch tensors are re-laid out here.
    return tensor.detach().to(torch.float32).contiguous().cpu().numpy()


class RuntimeBackbone(nn.Module):
    """Stands in for ``model.backbone``: images ``[B, 3, H, W]`` -> ``OrderedDict`` of FPN levels."""

    def __init__(self, graph: Graph, names: Sequence[str], out_channels: int) -> None:
        super().__init__()
        self.graph, self.names, self.out_channels = graph, list(names), out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        outputs = self.graph.run([_as_numpy(images)])
        return OrderedDict(
            (name, torch.from_numpy(array).to(images.device))
            for name, array in zip(self.names, outputs, strict=True)
        )


class RuntimeRPNHead(nn.Module):
    """Stands in for ``model.rpn.head``: FPN levels -> (objectness per level, box deltas per level)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outputs = [torch.from_numpy(a) for a in self.graph.run([_as_numpy(f) for f in features])]
        levels = len(features)
        return outputs[:levels], outputs[levels:]


class RuntimeBoxHead(nn.Module):
    """Stands in for ``model.roi_heads.box_head``: RoI features ``[N, 256, 7, 7]`` -> ``[N, 1024]``."""

    def __init__(self, graph: Graph, representation_size: int) -> None:
        super().__init__()
        self.graph, self.representation_size = graph, representation_size

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        if roi_features.shape[0] == 0:  # no proposal survived: nothing to run
            return roi_features.new_zeros((0, self.representation_size))
        (output,) = self.graph.run([_as_numpy(roi_features)])
        return torch.from_numpy(output)


def accelerate(model: FasterRCNN, graphs: dict[str, Graph], feature_names: Sequence[str]) -> FasterRCNN:
    """A copy of ``model`` (eval mode) whose compiled parts run in ``graphs`` (keys from :data:`GRAPHS`;
    a missing key keeps that part in torch). ``model`` itself is not changed.

    ``feature_names`` are the backbone's output keys in order (``"0", "1", ..., "pool"``).
    """
    replacements: dict[str, nn.Module] = {}
    if "backbone" in graphs:
        replacements["backbone"] = RuntimeBackbone(
            graphs["backbone"], feature_names, int(model.backbone.out_channels)
        )
    if "rpn_head" in graphs:
        replacements["rpn_head"] = RuntimeRPNHead(graphs["rpn_head"])
    if "box_head" in graphs:
        size = int(model.roi_heads.box_head.fc7.out_features)
        replacements["box_head"] = RuntimeBoxHead(graphs["box_head"], size)
    originals = {
        "backbone": model.backbone,
        "rpn_head": model.rpn.head,
        "box_head": model.roi_heads.box_head,
    }
    # deepcopy with a pre-filled memo: the replaced submodules are substituted instead of copied (their
    # weights, most of the model, are never duplicated); every other part is a private copy.
    memo = {id(originals[key]): module for key, module in replacements.items()}
    fast = copy.deepcopy(model, memo)
    return fast.eval()
