"""The shortcut guards of ``covidet evaluate`` on small fixtures whose answers are known."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from covidet.detection.data import ImageRecord
from covidet.detection.shortcuts import (
    format_shortcut_guards,
    geometry_baseline,
    label_summary,
    v1_rows_metrics,
    within_source_metrics,
)
from covidet.detection.transforms import CropBorder, PadToSquare, RandomFraming
from covidet.domain import Assessment, Label


def _record(index: int, label: str, source: str, path: Path | None = None) -> ImageRecord:
    return ImageRecord(
        index=index,
        image=f"{index}.png",
        path=path or Path(f"{index}.png"),
        label=Label(label),
        patient_id=str(index),
        source=source,
    )


def _assessment(label: str, covid19: float, pneumonia: float, normal: float) -> Assessment:
    return Assessment(
        label=Label(label),
        probabilities={Label.COVID19: covid19, Label.PNEUMONIA: pneumonia, Label.NORMAL: normal},
        threshold=0.5,
    )


def test_label_summary_counts_by_hand() -> None:
    truth = ["covid19", "covid19", "pneumonia", "normal"]
    decided = ["covid19", "normal", "covid19", "normal"]
    summary = label_summary(truth, decided)
    assert summary["n"] == 4 and summary["accuracy"] == 0.5
    assert summary["covid19_sensitivity"] == 0.5  # 1 of 2 Covid-19 images called covid19
    assert summary["covid19_specificity"] == 0.5  # 1 of 2 others not called covid19
    # F1: covid19 P 1/2 R 1/2 -> 0.5; pneumonia 0; normal P 1/2 R 1 -> 2/3
    assert summary["macro_f1"] == pytest.approx((0.5 + 0 + 2 / 3) / 3)
    assert summary["support"] == {"covid19": 2, "pneumonia": 1, "normal": 1}


def test_v1_rows_leave_out_the_version_2_sources() -> None:
    records = [
        _record(0, "covid19", "ieee8023"),
        _record(1, "normal", "nih_cxr8"),
        _record(2, "normal", "crd_rsna"),
    ]
    v1 = v1_rows_metrics(records, ["covid19", "pneumonia", "covid19"])
    assert v1 is not None and v1["n"] == 2 and v1["accuracy"] == 0.5
    assert v1_rows_metrics(records[::2], ["covid19", "covid19"]) is None  # only version-1 rows


def test_within_source_compares_the_two_classes_of_each_source() -> None:
    records = [
        _record(0, "pneumonia", "nih_cxr8"),
        _record(1, "pneumonia", "nih_cxr8"),
        _record(2, "normal", "nih_cxr8"),
        _record(3, "normal", "nih_cxr8"),
        _record(4, "normal", "nih_cxr8"),
        _record(5, "covid19", "mhh_hannover"),  # one class only: no within-source figure
        _record(6, "covid19", "nih_cxr8"),  # a third class of the source is left out
    ]
    assessments = [
        _assessment("covid19", 0.6, 0.3, 0.1),  # pneumonia > normal: right between the two
        _assessment("normal", 0.1, 0.2, 0.7),  # wrong
        _assessment("normal", 0.0, 0.1, 0.9),  # right
        _assessment("pneumonia", 0.2, 0.5, 0.3),  # wrong
        _assessment("normal", 0.2, 0.3, 0.5),  # right
        _assessment("covid19", 0.9, 0.05, 0.05),
        _assessment("covid19", 0.9, 0.05, 0.05),
    ]
    result = within_source_metrics(records, assessments)
    assert list(result) == ["nih_cxr8"]
    entry = result["nih_cxr8"]
    assert entry["classes"] == ["normal", "pneumonia"]  # the larger class first
    assert entry["n"] == 5 and entry["support"] == {"normal": 3, "pneumonia": 2}
    assert entry["accuracy"] == pytest.approx(3 / 5) and entry["majority"] == pytest.approx(3 / 5)
    assert entry["accuracy_3class"] == pytest.approx(2 / 5)
    # AUC of p(normal)/(p(normal)+p(pneumonia)), normal positive: shares n .9, .375, .625 vs p .25, .778
    assert entry["auc"] == pytest.approx(4 / 6)


def test_geometry_baseline_reads_image_size(tmp_path: Path) -> None:
    def image(index: int, size: tuple[int, int]) -> Path:
        path = tmp_path / f"{index}.png"
        Image.new("L", size).save(path)
        return path

    # Label follows the size exactly: the forest must find it (that is the shortcut it measures).
    train = [_record(i, "normal", "crd_rsna", image(i, (224, 224))) for i in range(6)]
    train += [_record(10 + i, "covid19", "ieee8023", image(10 + i, (900, 700))) for i in range(6)]
    val = [
        _record(20, "normal", "crd_rsna", image(20, (224, 224))),
        _record(21, "covid19", "ieee8023", image(21, (900, 700))),
    ]
    baseline = geometry_baseline(train, val)
    assert baseline["accuracy"] == 1.0 and baseline["n"] == 2 and baseline["n_train"] == 12
    assert baseline["per_source"] == {"crd_rsna": 1.0, "ieee8023": 1.0}


def test_pad_to_square_and_crop_border_move_the_boxes() -> None:
    image = torch.rand(1, 100, 60)
    target = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]])}
    padded, moved = PadToSquare()(image, target)
    assert padded.shape == (1, 100, 100)
    assert torch.equal(padded[:, :, 20:80], image) and padded[:, :, :20].max() == 0
    assert moved["boxes"].tolist() == [[30.0, 20.0, 50.0, 40.0]]
    cropped, clipped = CropBorder(0.1)(image, target)
    assert cropped.shape == (1, 80, 48)
    assert torch.equal(cropped, image[:, 10:90, 6:54])
    assert clipped["boxes"].tolist() == [[4.0, 10.0, 24.0, 30.0]]
    with pytest.raises(ValueError, match="fraction"):
        CropBorder(0.5)


def test_summary_names_every_guard() -> None:
    report = {
        "split": "val",
        "n_images": 3,
        "image": {
            "accuracy": 2 / 3,
            "macro_f1": 0.5,
            "per_class": {"covid19": {"sensitivity": 1.0, "specificity": 0.5}},
        },
        "geometry_baseline": {
            "fitted_on": "train",
            "accuracy": 1 / 3,
            "macro_f1": 0.2,
            "covid19_sensitivity": 0.0,
            "covid19_specificity": 1.0,
            "per_source": {"a": 0.5},
        },
        "v1_rows": {"n": 2, "accuracy": 0.5, "macro_f1": 0.4},
        "per_source": {"a": {"n": 2, "correct": 1, "accuracy": 0.5}},
        "within_source": {
            "a": {"classes": ["covid19", "normal"], "n": 2, "accuracy": 1.0, "auc": 1.0, "majority": 0.5}
        },
        "stability_probes": {"pad_to_square": {"unchanged": 1.0}},
    }
    text = format_shortcut_guards(report)
    assert "model: accuracy 66.7%, macro F1 0.500" in text
    assert "forest (fitted on train): accuracy 33.3%" in text
    assert "version-1 rows (2): accuracy 50.0%" in text
    assert "source a: 1/2 = 50.0% (geometry baseline 50.0%)" in text
    assert "within a, covid19 vs normal (2): accuracy 100.0%, AUC 1.000 (majority 50.0%)" in text
    assert "labels unchanged under pad_to_square: 100.0%" in text


def test_random_framing_pads_or_crops_and_keeps_boxes_with_their_labels() -> None:
    import random

    random.seed(0)
    framing = RandomFraming(p=1.0, max_crop=0.1)
    shapes = set()
    for _ in range(40):
        image = torch.rand(1, 384, 300)
        target = {
            "boxes": torch.tensor([[10.0, 20.0, 150.0, 300.0], [2.0, 2.0, 5.0, 5.0]]),
            "labels": torch.tensor([1, 2]),
        }
        out, moved = framing(image, target)
        shapes.add(tuple(out.shape))
        assert len(moved["boxes"]) == len(moved["labels"]) >= 1
        # the tiny corner box may be cut away by a crop, and its label with it; the lung box never is
        assert moved["labels"].tolist() == [1, 2][: len(moved["labels"])]
        height, width = out.shape[-2:]
        assert (moved["boxes"][:, 2] <= width).all() and (moved["boxes"][:, 3] <= height).all()
        if out.shape[-2:] != (384, 384):  # cropped: at most 10% off each edge
            assert 0.8 * 384 <= height <= 384 and 0.8 * 300 <= width <= 300
    assert (1, 384, 384) in shapes and len(shapes) > 5  # both padding and varied crops happen
