"""Detector builder: every backbone builds, trains a step and keeps the output contract."""

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from covidet.detection.model import BACKBONES, build_detector


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbones_use_trainable_norms_and_train_one_step(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_detector(backbone=backbone, min_size=128, max_size=128)
    modules = list(model.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in modules)
    assert any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert all(p.requires_grad for p in model.backbone.body.parameters())
    model.train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 10.0, 60.0, 120.0], [70.0, 10.0, 120.0, 120.0]]),
            "labels": torch.tensor([1, 1]),
        },
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # box-less image
    ]
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_group_norm_option() -> None:
    model = build_detector(backbone="resnet18", norm="group", min_size=96, max_size=96)
    assert any(isinstance(m, nn.GroupNorm) for m in model.backbone.body.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())


def test_eval_output_contract() -> None:
    model = build_detector(backbone="mobilenet_v3_large", min_size=160, max_size=160).eval()
    with torch.inference_mode():
        (output,) = model([torch.rand(3, 200, 180)])
    assert set(output) == {"boxes", "labels", "scores"}
    assert output["boxes"].shape[1:] == (4,)
    assert output["boxes"].shape[0] == output["labels"].shape[0] == output["scores"].shape[0] <= 20
    # boxes are in pixels of the input tensor (180 wide, 200 high)
    if len(output["boxes"]):
        assert float(output["boxes"][:, 2].max()) <= 180 and float(output["boxes"][:, 3].max()) <= 200


def test_unknown_backbone_and_norm_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_detector(backbone="vgg16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown norm"):
        build_detector(backbone="resnet18", norm="layer")  # type: ignore[arg-type]
