"""The CPU RoIAlign gives torchvision's values and gradients, and the detector's outputs do not change."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from covidet.detection.data import load_records
from covidet.detection.predictor import Predictor
from covidet.detection.roi_align import FastMultiScaleRoIAlign, roi_align_gather
from covidet.imaging import read_image


def _boxes(generator: torch.Generator, count: int, image_size: int) -> torch.Tensor:
    """Boxes of every kind the RPN produces: large, sub-pixel, touching and crossing the border."""
    corner = torch.rand(count, 2, generator=generator) * (image_size + 40) - 20
    size = torch.rand(count, 2, generator=generator) ** 3 * image_size + 0.1
    boxes = torch.cat([corner, corner + size], dim=1)
    boxes[:4] = torch.tensor(
        [
            [0, 0, image_size, image_size],
            [0, 0, 0.5, 0.5],
            [image_size - 1, 3, image_size, 9],
            [-30, -30, 5, 5],
        ]
    )
    return boxes


@pytest.mark.parametrize("channels_last", [True, False])
def test_single_level_values_and_gradients_match_torchvision(channels_last: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 16, 24, 20, generator=generator)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    features.requires_grad_()
    rois = torch.cat(
        [torch.randint(0, 3, (200, 1), generator=generator).float(), _boxes(generator, 200, 320)], dim=1
    )
    expected = roi_align(features, rois, output_size=7, spatial_scale=1 / 16, sampling_ratio=2)
    pooled = roi_align_gather([features], rois, None, [1 / 16], (7, 7), 2)
    assert pooled.shape == expected.shape == (200, 16, 7, 7)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(expected.shape, generator=generator)
    (expected_grad,) = torch.autograd.grad(expected, features, upstream)
    (grad,) = torch.autograd.grad(pooled, features, upstream)
    assert expected_grad.abs().sum() > 0
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


def _pyramid(generator: torch.Generator, batch: int, size: int) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict(
        (name, torch.randn(batch, 8, size // stride, size // stride, generator=generator).requires_grad_())
        for name, stride in (("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64))
    )


def test_multiscale_pooler_matches_torchvision_in_the_boxes_order() -> None:
    generator = torch.Generator().manual_seed(1)
    features = _pyramid(generator, 2, 256)
    boxes = [_boxes(generator, 150, 256), _boxes(generator, 90, 256)]
    shapes = [(256, 256), (256, 256)]
    expected = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, shapes)
    pooled = FastMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, shapes)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(expected.shape, generator=generator)
    levels = [features[name] for name in ("0", "1", "2", "3")]
    expected_grads = torch.autograd.grad(expected, levels, upstream)
    grads = torch.autograd.grad(pooled, levels, upstream)
    assert sum(int(g.abs().sum() > 0) for g in expected_grads) >= 3  # several levels are really used
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


def test_no_boxes_and_reduced_precision() -> None:
    generator = torch.Generator().manual_seed(2)
    features = _pyramid(generator, 1, 128)
    pooler = FastMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    assert pooler(features, [torch.zeros((0, 4))], [(128, 128)]).shape == (0, 8, 7, 7)
    boxes = [_boxes(generator, 30, 128)]
    expected = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, [(128, 128)])
    halves = OrderedDict((k, v.detach().bfloat16()) for k, v in features.items())
    pooled = pooler(halves, boxes, [(128, 128)])
    assert pooled.dtype == torch.bfloat16  # computed in float32, returned in the features' dtype
    torch.testing.assert_close(pooled.float(), expected, rtol=0.02, atol=0.03)


def test_detector_outputs_are_unchanged_on_real_xrays(data_root) -> None:
    """The shipped model with torchvision's pooler and with ours: same boxes, labels and scores."""
    predictor = Predictor.from_bundle(backend="torch")
    assert isinstance(predictor.model.roi_heads.box_roi_pool, FastMultiScaleRoIAlign)
    records = load_records(data_root, split="val")[:6]
    images = [read_image(record.path) for record in records]
    fast = predictor.predict(images)
    predictor.model.roi_heads.box_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    reference = predictor.predict(images)
    assert sum(len(p.findings) for p in reference) > 0
    for ours, theirs in zip(fast, reference, strict=True):
        assert ours.assessment.label == theirs.assessment.label
        assert len(ours.findings) == len(theirs.findings)
        for a, b in zip(ours.findings, theirs.findings, strict=True):
            assert a.label == b.label
            np.testing.assert_allclose(a.box.as_list(), b.box.as_list(), atol=0.05)
            assert abs(a.score - b.score) < 1e-4
