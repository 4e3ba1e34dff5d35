"""Grad-CAM per finding: a map of the right shape and range that follows the finding it explains."""

import numpy as np
import pytest
import torch

from covidet.detection.bundle import default_bundle_path, load_bundle
from covidet.detection.data import load_records
from covidet.detection.evaluate import infer_records, saliency_on_lungs
from covidet.detection.predictor import Predictor, draw_saliency
from covidet.detection.saliency import finding_grad_cam, mass_inside
from covidet.imaging import read_image


def test_mass_inside_counts_the_union_of_boxes() -> None:
    heat = torch.zeros(10, 20)
    heat[2:4, 5:9] = 1.0  # 8 pixels
    heat[8, 18] = 8.0  # as much mass again, outside every box
    boxes = torch.tensor([[5.0, 2.0, 9.0, 4.0], [6.0, 2.0, 7.0, 3.0]])  # overlapping boxes count once
    assert mass_inside(heat, boxes) == pytest.approx(0.5)
    assert mass_inside(torch.ones(10, 20), torch.tensor([[0.0, 0.0, 10.0, 5.0]])) == pytest.approx(0.25)
    assert mass_inside(torch.zeros(10, 20), boxes) == 0.0


@pytest.fixture(scope="module")
def two_lung_prediction(data_root):
    predictor = Predictor.from_bundle(backend="torch")
    for record in load_records(data_root, split="val"):
        xray = read_image(record.path)
        prediction = predictor.predict([xray])[0]
        lefts = sorted(f.box.x1 for f in prediction.findings)
        if len(lefts) == 2 and lefts[1] > xray.width / 3:  # one finding per lung
            return predictor, xray, prediction
    pytest.fail("no val image with a finding on each lung")


def test_each_finding_gets_its_own_map_at_the_original_size(two_lung_prediction, tmp_path) -> None:
    predictor, xray, prediction = two_lung_prediction
    maps = predictor.explain(xray, prediction)
    assert len(maps) == 2 and all(m is not None for m in maps)
    for heat in maps:
        assert heat.shape == (xray.height, xray.width)
        assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    # The maps explain different detections, so they differ (a map blind to its target would not).
    assert np.corrcoef(maps[0].ravel(), maps[1].ravel())[0, 1] < 0.99
    path = draw_saliency(xray, prediction.findings[0], maps[0], tmp_path / "cam.png", model_version="x")
    assert path.stat().st_size > 1000


def test_a_box_the_model_did_not_detect_is_not_explained(two_lung_prediction) -> None:
    predictor, xray, _ = two_lung_prediction
    image, _ = predictor._model_input(xray)
    nowhere = torch.tensor([0.0, 0.0, 12.0, 12.0])  # a corner, no finding there
    assert finding_grad_cam(predictor.model, image, nowhere, 1) is None


def test_accelerated_backends_refuse_to_explain(two_lung_prediction) -> None:
    predictor, xray, prediction = two_lung_prediction
    accelerated = Predictor(predictor.model, predictor.card, backend="openvino-fp32")
    with pytest.raises(ValueError, match="torch backend"):
        accelerated.explain(xray, prediction)


def test_evaluate_measures_saliency_on_the_annotated_lungs(data_root) -> None:
    model, card = load_bundle(default_bundle_path())
    size = int(card["architecture"]["max_size"])
    records = [
        r for r in load_records(data_root, split="val") if len(r.boxes) and r.label.value == "covid19"
    ][:4]
    predictions, truth, _, _ = infer_records(model, records, size=size, show_progress=False)
    summary = saliency_on_lungs(model, records, predictions, truth, size=size, show_progress=False)
    covid = summary["covid19"]
    assert summary["not_reproduced"] == 0
    assert 1 <= covid["findings"] <= 2 * len(records)
    assert 0.0 <= covid["mass_in_lungs_median"] <= 1.0
    # Chance level: the share of the image the lung boxes cover, strictly between nothing and everything.
    assert 0.2 < covid["lung_area_share_median"] < 1.0
    # With no lung boxes there is nothing to measure against.
    empty = [type(t)(t.image_id, t.boxes[:0], t.labels[:0]) for t in truth]
    assert (
        saliency_on_lungs(model, records, predictions, empty, size=size, show_progress=False)["covid19"][
            "findings"
        ]
        == 0
    )
