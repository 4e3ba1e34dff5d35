"""`covidet calibrate`: fits threshold and temperature, writes them into the card, the predictor uses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from covidet.cli import app
from covidet.detection.bundle import CARD_FILE, default_bundle_path, read_model_card
from covidet.detection.calibrate import cross_fitted_metrics, patient_folds
from covidet.detection.data import load_records


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    shipped = default_bundle_path()
    assert shipped is not None
    for name in (CARD_FILE, read_model_card(shipped)["weights"]["file"]):
        shutil.copy2(shipped / name, tmp_path / name)
    return tmp_path


def test_calibrate_writes_the_fitted_decision_and_the_predictor_follows_it(bundle_copy, data_root) -> None:
    args = ["calibrate", "--model", str(bundle_copy), "--data", str(data_root), "--tier", "tiny"]
    args += ["--split", "train", "--covid-sensitivity", "0.5", "--folds", "2", "--no-progress"]
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert read_model_card(bundle_copy)["decision"].get("fitted") is None  # --dry-run writes nothing

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    card = read_model_card(bundle_copy)
    decision = card["decision"]
    assert decision["threshold"] == printed["threshold"] and decision["temperature"] == printed["temperature"]
    assert decision["fitted"]["on_split"] == "train" and decision["fitted"]["n_images"] == 24
    assert decision["fitted"]["achieved_covid19_sensitivity"] >= 0.5
    assert 0 <= decision["fitted"]["cross_fitted"]["accuracy"] <= 1
    assert card["metrics"]["train"]["decision_fitted_on_this_split"] is True
    assert card["metrics"]["train"]["image"]["per_class"]["covid19"]["sensitivity"] == pytest.approx(
        decision["fitted"]["achieved_covid19_sensitivity"]
    )

    from covidet.detection.predictor import Predictor

    predictor = Predictor.from_bundle(bundle_copy, backend="torch")
    assert predictor.threshold == decision["threshold"] and predictor.temperature == decision["temperature"]


def test_calibrate_refuses_the_test_split(bundle_copy, data_root) -> None:
    result = CliRunner().invoke(
        app, ["calibrate", "--model", str(bundle_copy), "--data", str(data_root), "--split", "test"]
    )
    assert result.exit_code == 2 and "never fit the decision on the test split" in result.output


def test_cross_fitting_keeps_patients_in_one_fold_and_fits_without_the_held_fold(data_root) -> None:
    records = load_records(data_root, split="val")
    folds = patient_folds(records, 5)
    by_patient: dict[str, set[int]] = {}
    for record, fold in zip(records, folds, strict=True):
        by_patient.setdefault(record.patient_id, set()).add(int(fold))
    assert all(len(f) == 1 for f in by_patient.values()) and len(set(folds.tolist())) == 5

    # Fold 0's covid images carry weaker evidence than the others: a threshold fitted on the other
    # folds (which never sees fold 0) misses them, so out-of-fold sensitivity falls below the target.
    truth = np.array([0, 0, 0, 0, 2, 2, 0, 0, 2, 2])
    fold = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    evidence = np.array(
        [
            *([0.2, 0, 0], [0.25, 0, 0], [0.9, 0, 0], [0.8, 0, 0], [0.1, 0, 0.9], [0.05, 0, 0.9]),
            *([0.85, 0, 0], [0.7, 0, 0], [0.1, 0, 0.8], [0, 0, 0.9]),
        ],
        np.float64,
    )
    result = cross_fitted_metrics(evidence, truth, fold, target_covid_sensitivity=1.0)
    assert result["folds"][0]["threshold"] == 0.7
    assert result["covid19_sensitivity"] == pytest.approx(4 / 6)
