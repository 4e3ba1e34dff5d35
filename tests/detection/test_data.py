"""Datasets over the real manifest and over COCO JSON; patient-level splits; augmentations."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from covidet.detection.data import (
    DatasetError,
    DetectionDataset,
    load_coco,
    load_records,
    patient_split,
    resolve_data_dir,
)
from covidet.detection.transforms import RandomGeometry, RandomResolution, build_train_transform
from covidet.domain import Label
from tests.conftest import manifest_images


def test_manifest_splits_are_by_patient_and_keep_boxless_images(data_root: Path) -> None:
    train = load_records(data_root, split="train")
    val = load_records(data_root, split="val")
    # Every manifest row of the split is loaded, none twice, whatever the data set's version.
    assert sorted(r.image for r in train) == sorted(manifest_images(data_root, "train"))
    assert sorted(r.image for r in val) == sorted(manifest_images(data_root, "val"))
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    boxless_normals = [r for r in train if r.label is Label.NORMAL and len(r.boxes) == 0]
    assert len(boxless_normals) > 100  # most normals carry only the image label: kept, not dropped
    boxed = next(r for r in train if len(r.boxes))
    assert boxed.boxes.shape[1] == 4 and len(boxed.box_labels) == len(boxed.boxes)
    assert (boxed.boxes[:, 2] > boxed.boxes[:, 0]).all()


def test_tiny_tier_has_eight_images_per_class(data_root: Path) -> None:
    tiny = load_records(data_root, tier="tiny")
    counts = {label: sum(r.label is label for r in tiny) for label in Label}
    assert counts == {Label.COVID19: 8, Label.PNEUMONIA: 8, Label.NORMAL: 8}


def test_data_path_comes_from_option_or_environment(monkeypatch: pytest.MonkeyPatch, data_root: Path) -> None:
    monkeypatch.delenv("COVIDET_DATA", raising=False)
    with pytest.raises(DatasetError, match="COVIDET_DATA"):
        resolve_data_dir(None)
    monkeypatch.setenv("COVIDET_DATA", str(data_root))
    assert resolve_data_dir(None) == data_root
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_data_dir("/nonexistent/cxr")


def test_dataset_item_contract(data_root: Path) -> None:
    records = [r for r in load_records(data_root, tier="tiny") if len(r.boxes)][:1]
    records += [r for r in load_records(data_root, split="train") if not len(r.boxes)][:1]
    dataset = DetectionDataset(records)
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and image.min() >= 0 and image.max() <= 1
    assert torch.equal(image[0], image[2])  # grayscale replicated
    assert target["boxes"].shape == (len(records[0].boxes), 4)
    assert target["labels"].tolist() == [
        1 + ["covid19", "pneumonia", "normal"].index(b) for b in records[0].box_labels
    ]
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert int(empty["image_label"]) in (1, 2, 3)


def test_coco_json_round_trip(tmp_path: Path, data_root: Path) -> None:
    records = load_records(data_root, tier="tiny")[:6]
    coco = {
        "categories": [
            {"id": 1, "name": "covid19"},
            {"id": 2, "name": "pneumonia"},
            {"id": 3, "name": "normal"},
        ],
        "images": [],
        "annotations": [],
    }
    for r in records:
        image = {"id": r.index, "file_name": str(r.path), "width": 1, "height": 1, "patient_id": r.patient_id}
        if not len(r.boxes):
            image["label"] = r.label.value
        coco["images"].append(image)
        for box, label in zip(r.boxes, r.box_labels, strict=True):
            x1, y1, x2, y2 = box.tolist()
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": r.index,
                    "category_id": 1 + list(Label).index(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    loaded = load_coco(path, image_root="/")
    assert [r.label for r in loaded] == [r.label for r in records]
    for a, b in zip(loaded, records, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    # no split column: a deterministic patient-level split is made
    with_split = load_records(path)
    assert {r.split for r in with_split} <= {"train", "val"}


def test_patient_split_is_deterministic_and_by_patient(data_root: Path) -> None:
    records = load_records(data_root)
    first = patient_split(records, val_fraction=0.2, seed=1)
    assert first == patient_split(records, val_fraction=0.2, seed=1)
    share = sum(v == "val" for v in first.values()) / len(first)
    assert 0.1 < share < 0.3


def test_bad_label_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("image,label,patient_id\na.jpg,flu,p1\n")
    with pytest.raises(DatasetError, match="unknown label 'flu'"):
        load_records(tmp_path)


def test_random_resolution_degrades_detail_but_keeps_size() -> None:
    random.seed(0)
    image = torch.rand(1, 400, 300)
    out, _ = RandomResolution(min_side=224, p=1.0)(image, {"boxes": torch.zeros(0, 4)})
    assert out.shape == image.shape
    # high-frequency noise is smoothed away by the down/up-sampling
    assert out.diff(dim=-1).abs().mean() < image.diff(dim=-1).abs().mean()


def test_geometry_moves_boxes_with_the_image() -> None:
    torch.manual_seed(3)
    image = torch.zeros(1, 200, 200)
    image[:, 50:150, 20:80] = 1.0  # a bright "lung" exactly where the box is
    target = {"boxes": torch.tensor([[20.0, 50.0, 80.0, 150.0]]), "labels": torch.tensor([1])}
    for _ in range(5):
        out, moved = RandomGeometry()(image, target)
        x1, y1, x2, y2 = moved["boxes"][0].round().int().tolist()
        inside = out[0, y1:y2, x1:x2].sum()
        assert inside / out.sum() > 0.9  # the bright region stays inside its (moved) box


def test_train_transform_output_size() -> None:
    image = torch.rand(1, 1000, 800)
    target = {"boxes": torch.tensor([[100.0, 100.0, 400.0, 900.0]]), "labels": torch.tensor([1])}
    out, moved = build_train_transform(size=320)(image, target)
    assert max(out.shape[-2:]) == 320 and out.min() >= 0 and out.max() <= 1
    assert moved["boxes"].shape[1] == 4 and float(moved["boxes"].max()) <= 320
