"""Self-supervised pretraining: the NT-Xent loss, that the backbone learns from views of real X-rays,
the backbone.pt file, and `covidet train --init-backbone` starting from it (real tiny-tier data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from covidet.cli import app
from covidet.detection.data import DetectionDataset, load_records
from covidet.detection.model import build_detector
from covidet.detection.pretrain import (
    BACKBONE_FORMAT,
    BackboneFileError,
    ContrastiveViews,
    PretrainConfig,
    SimCLR,
    load_backbone_weights,
    nt_xent,
    pretrain,
)


def test_nt_xent_is_the_softmax_cross_entropy_of_finding_the_partner() -> None:
    temperature = 0.5
    rows = torch.eye(8)[:4]  # four orthogonal unit embeddings
    loss, accuracy = nt_xent(rows, rows.clone(), temperature)
    # Each view: partner similarity 1/T, the 2B - 2 = 6 other views 0 (the view itself is excluded).
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 6))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == 1.0
    # Partners swapped: each view's nearest other view is a stranger's.
    loss_swapped, accuracy_swapped = nt_xent(rows, rows.roll(1, dims=0), temperature)
    assert accuracy_swapped.item() == 0.0 and loss_swapped.item() > loss.item() + 1


def test_views_of_one_xray_are_random_squares_in_unit_range(data_root: Path) -> None:
    records = load_records(data_root, split="train", tier="tiny")[:3]
    views = ContrastiveViews(DetectionDataset(records), size=64, cache_size=96, min_crop=0.35)
    view_a, view_b = views[0]
    assert view_a.shape == view_b.shape == (3, 64, 64)
    assert view_a.min() >= 0 and view_a.max() <= 1
    assert not torch.equal(view_a, view_b)  # two independent augmentations of the same image


def test_the_backbone_learns_to_pair_views_of_real_xrays(data_root: Path) -> None:
    """A few optimiser steps on one batch of real views: the loss must fall and pairs be found, which
    fails if no gradient reaches the body or the loss is wired wrongly."""
    torch.manual_seed(0)
    records = load_records(data_root, split="train", tier="tiny")[:8]
    views = ContrastiveViews(DetectionDataset(records), size=64, cache_size=96, min_crop=0.35)
    view_a, view_b = (torch.stack(v) for v in zip(*(views[i] for i in range(len(views))), strict=True))
    model = SimCLR(backbone="mobilenet_v3_large", norm="batch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    body_before = {k: v.clone() for k, v in model.body.state_dict().items()}
    losses = []
    for _ in range(12):
        z_a, z_b = model(torch.cat([view_a, view_b])).chunk(2)
        loss, accuracy = nt_xent(z_a, z_b, 0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert accuracy.item() >= 0.75
    floats = [k for k, v in body_before.items() if v.is_floating_point()]
    changed = [k for k in floats if not torch.equal(model.body.state_dict()[k], body_before[k])]
    assert len(changed) > 0.9 * len(floats)  # the gradient reaches (nearly) every layer of the body


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    config = PretrainConfig(
        data=str(data_root), tier="tiny", out=out, size=64, cache_size=96, epochs=2, batch_size=4,
        max_iterations_per_epoch=2, workers=0, show_progress=False,
    )  # fmt: skip
    result = pretrain(config)
    assert result.epochs == 2 and math.isfinite(result.final_loss)
    assert (out / "metrics.csv").read_text().count("\n") == 3  # header and two epochs
    return result.weights


def test_backbone_file_loads_into_the_detector_body(backbone_file: Path) -> None:
    saved = torch.load(backbone_file, map_location="cpu", weights_only=False)
    assert saved["format"] == BACKBONE_FORMAT and saved["backbone"] == "mobilenet_v3_large"
    assert len(saved["history"]) == 2
    detector = build_detector(backbone="mobilenet_v3_large")
    fresh = {k: v.clone() for k, v in detector.backbone.body.state_dict().items()}
    meta = load_backbone_weights(detector, backbone_file, backbone="mobilenet_v3_large", norm="batch")
    assert "state_dict" not in meta and meta["config"]["size"] == 64
    loaded = detector.backbone.body.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved["state_dict"].items())
    assert any(not torch.equal(loaded[k], fresh[k]) for k in fresh if fresh[k].is_floating_point())


def test_backbone_file_for_another_architecture_or_not_a_backbone_is_refused(
    backbone_file: Path, tmp_path: Path
) -> None:
    detector = build_detector(backbone="resnet18")
    with pytest.raises(BackboneFileError, match=r"holds a mobilenet_v3_large .* but this model is resnet18"):
        load_backbone_weights(detector, backbone_file, backbone="resnet18", norm="batch")
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(BackboneFileError, match="not a covidet backbone file"):
        load_backbone_weights(detector, other, backbone="resnet18", norm="batch")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(BackboneFileError, match="not a readable torch file"):
        load_backbone_weights(detector, garbage, backbone="resnet18", norm="batch")
    with pytest.raises(FileNotFoundError, match="covidet pretrain"):
        load_backbone_weights(detector, tmp_path / "missing.pt", backbone="resnet18", norm="batch")


def test_cli_pretrain_then_train_from_the_backbone(data_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    pre = tmp_path / "pre"
    args = ["pretrain", "--data", str(data_root), "--tier", "tiny", "--size", "64", "--cache-size", "96"]
    args += ["--epochs", "1", "--batch-size", "4", "--max-iterations", "1", "--workers", "0", "--no-progress"]
    result = runner.invoke(app, [*args, "--out", str(pre)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["weights"] == str(pre / "backbone.pt") and summary["epochs"] == 1

    train = ["train", "--data", str(data_root), "--tier", "tiny", "--val-split", "train", "--size", "128"]
    train += ["--backbone", "mobilenet_v3_large", "--epochs", "1", "--max-iterations", "1", "--workers", "0"]
    run = tmp_path / "run"
    result = runner.invoke(app, [*train, "--init-backbone", str(pre / "backbone.pt"), "--out", str(run)])
    assert result.exit_code == 0, result.output
    card = json.loads((run / "bundle" / "model_card.json").read_text())
    assert card["training"]["config"]["init_backbone"] == str(pre / "backbone.pt")

    mismatched = [*train, "--backbone", "resnet18", "--init-backbone", str(pre / "backbone.pt")]
    wrong = runner.invoke(app, [*mismatched, "--out", str(run)])
    assert wrong.exit_code == 2 and "holds a mobilenet_v3_large" in wrong.output


def test_cli_invalid_options_are_one_line_errors(data_root: Path) -> None:
    runner = CliRunner()
    too_small = runner.invoke(app, ["pretrain", "--data", str(data_root), "--size", "5"])
    assert (
        too_small.exit_code == 2
        and "error: --size: Input should be greater than or equal to 32" in too_small.output
    )
    unknown = runner.invoke(app, ["train", "--data", str(data_root), "--backbone", "vgg"])
    assert unknown.exit_code == 2 and "error: --backbone: Input should be 'resnet101'" in unknown.output
