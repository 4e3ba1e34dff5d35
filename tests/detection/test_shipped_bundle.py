"""Regression: the shipped bundle still scores what its model card says on the validation split."""

import pytest

from covidet.detection.bundle import default_bundle_path, read_model_card
from covidet.detection.evaluate import evaluate_bundle
from tests.conftest import manifest_images


def test_shipped_bundle_matches_its_model_card_on_val(data_root) -> None:
    bundle = default_bundle_path()
    assert bundle is not None, "models/covidet-detector is missing"
    card = read_model_card(bundle)
    assert card["disclaimer"] == "not for clinical use"
    recorded = card["metrics"]["val"]
    n_val = len(manifest_images(data_root, "val"))
    # The card's figures must be of this data set's val split, not of an older version of it.
    assert recorded["n_images"] == n_val, (
        f"the model card's val figures are of {recorded['n_images']} images, the data set's val split has "
        f"{n_val}: re-run `covidet evaluate --split val --write-card` on the shipped bundle"
    )
    report = evaluate_bundle(
        bundle, data=data_root, split="val", show_progress=False, shape_probes=False, baseline_split=None
    )
    assert report["n_images"] == n_val
    assert report["image"]["accuracy"] == pytest.approx(recorded["image"]["accuracy"], abs=0.02)
    assert report["image"]["macro_f1"] == pytest.approx(recorded["image"]["macro_f1"], abs=0.02)
    assert report["lung_detection"]["map50"] == pytest.approx(recorded["lung_detection"]["map50"], abs=0.02)
    assert report["stability"]["unchanged"] == pytest.approx(recorded["stability"]["unchanged"], abs=0.02)
