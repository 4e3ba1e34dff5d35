"""Pseudo lung boxes: choosing one box per lung, the check against human boxes, merging into training.

The geometry is tested with an "oracle" network that returns fixed fractional boxes, on real X-rays
of the dataset whose human boxes are set to those fractions: scaling between the network's input and
the stored pixels, the side assignment and the IoU must then come out exact. The CLI runs on a real
(tiny, briefly trained) lung-detector bundle.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidet.cli import app
from covidet.detection.data import DatasetError, add_extra_boxes, load_records
from covidet.detection.pseudo_boxes import (
    BOX_SOURCE,
    check_proposals,
    choose_lung_boxes,
    contact_sheet,
    propose_lung_boxes,
    write_boxes_csv,
)
from covidet.imaging import read_image

# Fractions of width/height: the image's left half holds the patient's right lung.
RIGHT_LUNG = (0.10, 0.15, 0.45, 0.85)
LEFT_LUNG = (0.55, 0.15, 0.90, 0.85)


class Oracle(torch.nn.Module):
    """Returns the two lung boxes (fractions above) of whatever image it sees, plus a weak stray box."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            h, w = image.shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            boxes = torch.tensor([RIGHT_LUNG, LEFT_LUNG, (0.6, 0.1, 0.7, 0.2)]) * scale
            outputs.append(
                {"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.3]), "labels": torch.tensor([1, 1, 1])}
            )
        return outputs


def _with_fraction_boxes(record, source: str = "imageannotation_ai_human_bbox"):
    xray = read_image(record.path)
    scale = np.array([xray.width, xray.height, xray.width, xray.height], np.float32)
    boxes = np.array([RIGHT_LUNG, LEFT_LUNG], np.float32) * scale
    return replace(record, boxes=boxes, box_labels=(record.label,) * 2, box_sources=(source, source))


def test_one_box_per_image_half_best_score_and_floor() -> None:
    boxes = np.array([[10, 10, 40, 90], [5, 5, 45, 95], [60, 10, 90, 90], [20, 0, 30, 10]], np.float64)
    scores = np.array([0.7, 0.9, 0.4, 0.95])
    chosen = choose_lung_boxes(boxes, scores, width=100, min_score=0.5)
    assert [(part, score) for part, _, score in chosen] == [("right_lung", 0.95)]
    chosen = choose_lung_boxes(boxes[:3], scores[:3], width=100, min_score=0.3)
    assert [(part, box.tolist()) for part, box, _ in chosen] == [
        ("right_lung", [5, 5, 45, 95]),
        ("left_lung", [60, 10, 90, 90]),
    ]
    assert choose_lung_boxes(np.zeros((0, 4)), np.zeros(0), width=100, min_score=0.5) == []


def test_proposals_are_in_stored_pixels_and_the_check_measures_iou(data_root: Path) -> None:
    records = [_with_fraction_boxes(r) for r in load_records(data_root, split="val")[:3]]
    proposals = propose_lung_boxes(Oracle(), records, size=256, min_score=0.5, show_progress=False)
    assert len(proposals) == 6  # the stray 0.3 box is below the floor
    for proposal, record in zip(proposals[::2], records, strict=True):
        assert proposal.part == "right_lung" and proposal.label is record.label
        np.testing.assert_allclose(proposal.box, record.boxes[0], atol=2.0)  # resize rounding only
    check = check_proposals(Oracle(), records, size=256, min_score=0.5, show_progress=False)
    assert check["n_images"] == 3 and check["n_boxes"] == 6
    assert check["median_iou"] > 0.97 and check["share_iou_ge_0.75"] == 1.0 and check["share_missing"] == 0

    # Shift the human boxes: the check must see it (IoU of a box shifted by half its width is 1/3).
    shifted = []
    for record in records:
        boxes = record.boxes.copy()
        width = boxes[:, 2] - boxes[:, 0]
        boxes[:, [0, 2]] += (width / 2)[:, None]
        shifted.append(replace(record, boxes=boxes))
    check = check_proposals(Oracle(), shifted, size=256, min_score=0.5, show_progress=False)
    assert check["median_iou"] == pytest.approx(1 / 3, abs=0.03) and check["share_iou_ge_0.5"] == 0.0

    # No proposal at all: every human box counts as missed (IoU 0), not skipped.
    check = check_proposals(Oracle(), records, size=256, min_score=0.95, show_progress=False)
    assert check["n_boxes"] == 6 and check["share_missing"] == 1.0 and check["median_iou"] == 0.0


def test_extra_boxes_fill_only_boxless_images_with_the_image_label(data_root: Path, tmp_path: Path) -> None:
    records = load_records(data_root, split="train")
    boxed = next(r for r in records if len(r.boxes))
    boxless = [r for r in records if not len(r.boxes)][:2]
    proposals = propose_lung_boxes(Oracle(), [boxed, *boxless], size=128, show_progress=False)
    path = write_boxes_csv(proposals, tmp_path / "proposed.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["box_source"] for row in rows} == {BOX_SOURCE} and len(rows) == 6
    assert all(0.5 <= float(row["score"]) <= 1 for row in rows)

    merged = {r.image: r for r in add_extra_boxes([boxed, *boxless], path)}
    assert merged[boxed.image] == boxed  # human boxes are never replaced
    for record in boxless:
        updated = merged[record.image]
        assert updated.boxes.shape == (2, 4)
        assert updated.box_labels == (record.label, record.label)
        assert updated.box_sources == (BOX_SOURCE, BOX_SOURCE)
    assert all(not len(r.boxes) for r in add_extra_boxes(boxless, path, min_score=0.95))

    (tmp_path / "bad.csv").write_text("image,x1,y1,x2,y2\n" + f"{boxless[0].image},50,10,40,90\n")
    with pytest.raises(DatasetError, match="x2 <= x1"):
        add_extra_boxes(boxless, tmp_path / "bad.csv")


def test_contact_sheet_draws_the_proposals(data_root: Path, tmp_path: Path) -> None:
    records = [r for r in load_records(data_root, split="train") if not len(r.boxes)][:4]
    proposals = propose_lung_boxes(Oracle(), records[:3], size=128, show_progress=False)
    from PIL import Image

    sheet = Image.open(contact_sheet(records, proposals, tmp_path / "sheet.png", count=4, columns=2))
    assert sheet.size == (400, 2 * 214)
    pixels = np.asarray(sheet.convert("RGB"))
    assert (np.abs(pixels - np.array([0, 220, 255])).sum(-1) == 0).any()  # a right-lung outline


@pytest.fixture(scope="module")
def lung_bundle(tmp_path_factory, data_root: Path) -> Path:
    """A real lung-detector bundle: `covidet train --task lungs` for a few steps on the tiny tier."""
    out = tmp_path_factory.mktemp("lungs")
    args = ["train", "--task", "lungs", "--data", str(data_root), "--tier", "tiny", "--val-split", "train"]
    args += ["--backbone", "mobilenet_v3_large", "--size", "128", "--epochs", "1", "--max-iterations", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out / "bundle"


def test_lung_bundle_card_and_refusal_by_the_predictor(lung_bundle: Path) -> None:
    from covidet.detection.bundle import BundleError, read_model_card
    from covidet.detection.predictor import Predictor

    card = read_model_card(lung_bundle)
    assert card["purpose"] == "lungs" and card["training"]["selected_by"].endswith("lung_map50")
    with pytest.raises(BundleError, match="not an assessment model"):
        Predictor.from_bundle(lung_bundle)


def test_propose_boxes_cli_writes_csv_sheet_and_check(lung_bundle: Path, data_root: Path, tmp_path) -> None:
    out, sheet = tmp_path / "boxes.csv", tmp_path / "sheet.png"
    args = ["propose-boxes", "--model", str(lung_bundle), "--data", str(data_root), "--tier", "tiny"]
    args += ["--split", "train", "--check-split", "train", "--min-score", "0", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--sheet", str(sheet), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    tiny_train = load_records(data_root, split="train", tier="tiny")
    boxless = [r for r in tiny_train if not len(r.boxes)]
    assert summary["images_without_boxes"] == len(boxless) > 0
    assert sum(v["images"] for v in summary["per_label"].values()) == len(boxless)
    with out.open(newline="") as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == summary["boxes_proposed"]
    assert summary["check"]["n_boxes"] > 0 and 0 <= summary["check"]["median_iou"] <= 1
    assert sheet.stat().st_size > 0

    from covidet.detection.bundle import default_bundle_path

    refused = CliRunner().invoke(
        app, ["propose-boxes", "--model", str(default_bundle_path()), "--out", str(out)]
    )
    assert refused.exit_code == 2 and "not a lung detector" in refused.output
