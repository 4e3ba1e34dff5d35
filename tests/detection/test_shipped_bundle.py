"""Regression: the shipped bundle still scores what its model card says on the validation split."""

import pytest

from covidet.detection.bundle import default_bundle_path, read_model_card
from covidet.detection.evaluate import evaluate_bundle


def test_shipped_bundle_matches_its_model_card_on_val(data_root) -> None:
    bundle = default_bundle_path()
    assert bundle is not None, "models/covidet-detector is missing"
    card = read_model_card(bundle)
    assert card["disclaimer"] == "not for clinical use"
    recorded = card["metrics"]["val"]
    report = evaluate_bundle(bundle, data=data_root, split="val", show_progress=False)
    assert report["n_images"] == 77
    assert report["image"]["accuracy"] == pytest.approx(recorded["image"]["accuracy"], abs=0.02)
    assert report["image"]["macro_f1"] == pytest.approx(recorded["image"]["macro_f1"], abs=0.02)
    assert report["lung_detection"]["map50"] == pytest.approx(recorded["lung_detection"]["map50"], abs=0.02)
