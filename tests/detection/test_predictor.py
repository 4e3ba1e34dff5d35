"""Predictor: results in original pixels, independent of batch composition."""

import numpy as np

from covidet.detection.data import load_records
from covidet.detection.predictor import Predictor
from covidet.imaging import read_image


def test_results_do_not_depend_on_the_other_images_in_the_batch(data_root, rg1_dicom) -> None:
    predictor = Predictor.from_bundle()
    records = load_records(data_root, split="val")
    images = [read_image(rg1_dicom)]
    shapes = {images[0].pixels.shape}
    for record in records:  # pick images of different shapes, so a batch would need padding
        xray = read_image(record.path)
        if xray.pixels.shape not in shapes:
            images.append(xray)
            shapes.add(xray.pixels.shape)
        if len(images) == 5:
            break
    images.append(images[1])  # a same-shape pair does share a forward pass
    batched = predictor.predict(images, batch_size=4)
    alone = [predictor.predict([image])[0] for image in images]
    for together, single in zip(batched, alone, strict=True):
        assert together.assessment.label == single.assessment.label
        for label, probability in together.assessment.probabilities.items():
            assert abs(probability - single.assessment.probabilities[label]) < 1e-5  # float noise only
        assert len(together.findings) == len(single.findings)
        for a, b in zip(together.findings, single.findings, strict=True):
            assert a.label == b.label
            np.testing.assert_allclose(a.box.as_list(), b.box.as_list(), atol=1e-3)
            assert abs(a.score - b.score) < 1e-5
    assert batched[1].assessment.label == batched[-1].assessment.label


def test_boxes_are_in_original_pixels(data_root) -> None:
    import torch
    from torchvision.ops import box_iou

    predictor = Predictor.from_bundle()
    records = [r for r in load_records(data_root, split="val") if len(r.boxes) == 2][:5]
    predictions = predictor.predict([read_image(r.path) for r in records])
    best = []
    for record, prediction in zip(records, predictions, strict=True):
        assert prediction.findings, f"the shipped model finds no lung on boxed val image {record.image}"
        ious = box_iou(
            torch.tensor(record.boxes), torch.tensor([f.box.as_list() for f in prediction.findings])
        )
        best += ious.max(dim=1).values.tolist()
    # Every annotated lung is matched by a finding in the same (original) pixel frame: boxes left in the
    # model's resized frame (384 px for images of ~900 px) would overlap them hardly at all. How well the
    # lungs are matched is the model's quality: most well, none badly.
    assert min(best) >= 0.3 and float(np.median(best)) >= 0.6, best
