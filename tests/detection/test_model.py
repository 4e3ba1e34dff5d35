"""Detector builder: every backbone builds, trains a step and keeps the output contract; the optional
image-level head trains jointly, ignores batch padding and survives a bundle round trip."""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from covidet.detection.bundle import load_bundle, save_bundle
from covidet.detection.model import BACKBONES, AssessmentRCNN, ImageHead, build_detector
from covidet.detection.predictor import Predictor
from covidet.domain import Label
from covidet.imaging import XRayImage


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


def _image_head_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 10.0, 60.0, 120.0]]),
            "labels": torch.tensor([1]),
            "image_label": torch.tensor(1),
        },
        {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros((0,), dtype=torch.int64),
            "image_label": torch.tensor(3),
        },
    ]


def test_image_head_trains_jointly_and_reports_probabilities() -> None:
    torch.manual_seed(0)
    model = build_detector(backbone="mobilenet_v3_large", min_size=128, max_size=128, image_head=True)
    assert isinstance(model, AssessmentRCNN)
    model.train()
    losses = model([torch.rand(3, 128, 128), torch.rand(3, 96, 128)], _image_head_targets())
    assert "loss_image" in losses and {"loss_classifier", "loss_objectness"} <= set(losses)
    # untrained, the head is near uniform over three classes: cross-entropy about log(3)
    assert abs(float(losses["loss_image"].detach()) - np.log(3)) < 0.05
    sum(losses.values()).backward()
    assert model.image_head.classifier.weight.grad is not None
    first_conv = next(p for p in model.backbone.body.parameters())
    assert first_conv.grad is not None and float(first_conv.grad.abs().sum()) > 0  # the backbone learns too
    model.eval()
    with torch.inference_mode():
        (output,) = model([torch.rand(3, 100, 128)])
    assert set(output) == {"boxes", "labels", "scores", "image_probs"}
    assert output["image_probs"].shape == (3,)
    assert abs(float(output["image_probs"].sum()) - 1.0) < 1e-5


def test_image_head_ignores_the_batch_padding() -> None:
    torch.manual_seed(0)
    head = ImageHead(in_channels=4, num_levels=2).eval()
    # a 64 x 48 image padded to 64 x 64: levels at stride 8 (8 x 8) and stride 16 (4 x 4)
    fine, coarse = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)
    logits = head(OrderedDict([("0", fine), ("1", coarse)]), [(64, 48)], (64, 64))
    fine[..., 6:] = 1e3  # only the padded columns change
    coarse[..., 3:] = -1e3
    again = head(OrderedDict([("0", fine), ("1", coarse)]), [(64, 48)], (64, 64))
    torch.testing.assert_close(logits, again)
    fine[..., 5] = 1e3  # a column inside the image does change the result
    assert not torch.allclose(logits, head(OrderedDict([("0", fine), ("1", coarse)]), [(64, 48)], (64, 64)))


def test_image_head_bundle_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_detector(backbone="mobilenet_v3_large", min_size=128, max_size=128, image_head=True)
    with torch.no_grad():
        model.image_head.classifier.bias.copy_(torch.tensor([0.0, 0.0, 3.0]))
    architecture = {
        "backbone": "mobilenet_v3_large",
        "min_size": 128,
        "max_size": 128,
        "image_head": True,
        "image_loss_weight": 1.0,
    }
    save_bundle(
        model,
        tmp_path,
        architecture=architecture,
        decision={"rule": "max-score-v2", "threshold": 0.5, "image_weight": 1.0},
        training={},
        metrics={},
        half=False,
    )
    loaded, card = load_bundle(tmp_path)
    assert isinstance(loaded, AssessmentRCNN)
    torch.testing.assert_close(loaded.image_head.classifier.bias, torch.tensor([0.0, 0.0, 3.0]))
    predictor = Predictor(loaded, card)
    assert predictor.image_weight == 1.0
    pixels = np.random.default_rng(0).random((150, 120), dtype=np.float32)
    xray = XRayImage(
        pixels=pixels, width=120, height=150, bits_stored=8, source_format="png", photometric="MONOCHROME2"
    )
    (prediction,) = predictor.predict([xray])
    # with image_weight 1 the image head alone decides: its bias favours normal strongly
    assert prediction.assessment.label is Label.NORMAL
    # a bundle without the head rebuilds the plain detector
    plain, _ = load_bundle(_plain_bundle(tmp_path / "plain"))
    assert not isinstance(plain, AssessmentRCNN)


def _plain_bundle(path: Path) -> Path:
    model = build_detector(backbone="mobilenet_v3_large", min_size=96, max_size=96)
    return save_bundle(
        model,
        path,
        architecture={"backbone": "mobilenet_v3_large", "min_size": 96, "max_size": 96},
        decision={"rule": "max-score-v1", "threshold": 0.5},
        training={},
        metrics={},
    )


def test_box_pooling_averages_inside_the_boxes_only() -> None:
    # one level at stride 8 of a 64 x 64 batch: 8 x 8 cells; channel 0 holds the row index
    level = torch.arange(8.0).view(1, 1, 8, 1).expand(2, 2, 8, 8).clone()
    level[:, 1] = 1.0
    features = OrderedDict([("0", level)])
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 16.0]]), torch.zeros((0, 4))]  # rows 0-1 only; no box
    pooled = ImageHead.pool_in_boxes(features, boxes, [(64, 64), (64, 64)], (64, 64))
    torch.testing.assert_close(pooled[0], torch.tensor([0.5, 1.0]))  # mean of rows 0 and 1
    torch.testing.assert_close(pooled[1], ImageHead.pool(features, [(64, 64)] * 2, (64, 64))[1])


def test_box_pooled_image_head_trains_on_ground_truth_boxes_and_predicts() -> None:
    torch.manual_seed(0)
    model = build_detector(
        backbone="mobilenet_v3_large", min_size=128, max_size=128, image_head=True, image_head_pool="boxes"
    )
    model.train()
    losses = model([torch.rand(3, 128, 128), torch.rand(3, 96, 128)], _image_head_targets())
    assert torch.isfinite(losses["loss_image"])
    model.eval()
    with torch.inference_mode():
        (output,) = model([torch.rand(3, 100, 128)])
    assert abs(float(output["image_probs"].sum()) - 1.0) < 1e-5
    with pytest.raises(ValueError, match="image_head_pool"):
        build_detector(backbone="mobilenet_v3_large", image_head=True, image_head_pool="lungs")  # type: ignore[arg-type]
