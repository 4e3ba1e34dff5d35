"""The ``covidet`` command as a user runs it: a real subprocess, real data, real files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import torch
from PIL import Image

from covidet.detection.bundle import default_bundle_path, read_model_card

COVIDET = [sys.executable, "-m", "covidet.cli"]
# Small and fast: the tests check the pipeline works end to end, not what it learns.
TINY_TRAIN = [
    "--tier",
    "tiny",
    "--val-split",
    "train",
    "--backbone",
    "mobilenet_v3_large",
    "--size",
    "160",
    "--batch-size",
    "4",
    "--max-iterations",
    "2",
    "--warmup",
    "2",
    "--workers",
    "0",
    "--no-progress",
    "--device",
    "cpu",
]


def run(args: list[str], data_root: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "COVIDET_DATA": str(data_root), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, **kwargs
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = run(
        [*COVIDET, "train", *TINY_TRAIN, "--epochs", "2", "--patience", "5", "--out", str(out)], data_root
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["bundle"] == str(out / "bundle")
    return out


def test_train_writes_checkpoints_metrics_log_and_bundle(trained_run: Path) -> None:
    with (trained_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_accuracy", "val_macro_f1", "val_map50", "val_lung_map50"} <= set(rows[0])
    checkpoint = torch.load(trained_run / "last.pt", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "epoch", "config", "best_metric", "history"} <= set(
        checkpoint
    )
    assert checkpoint["epoch"] == 2
    card = read_model_card(trained_run / "bundle")
    assert card["disclaimer"] == "not for clinical use"
    assert card["classes"] == ["covid19", "pneumonia", "normal"]
    assert card["architecture"]["backbone"] == "mobilenet_v3_large"
    assert card["architecture"]["max_size"] == 160
    assert len(card["training"]["data_hash_sha256"]) == 64
    assert card["metrics"]["train"]["image"]["n"] == 24  # validated on the tiny images (a pipeline test)
    assert card["version"] and card["created"]


def test_resume_continues_from_the_last_epoch(trained_run: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "metrics.csv").write_text((trained_run / "metrics.csv").read_text())
    result = run(
        [
            *COVIDET,
            "train",
            *TINY_TRAIN,
            "--epochs",
            "3",
            "--patience",
            "5",
            "--out",
            str(out),
            "--resume",
            str(trained_run / "last.pt"),
        ],
        data_root,
    )
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr
    with (out / "metrics.csv").open() as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2", "3"]
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 3


def test_init_model_starts_from_a_bundle_and_refuses_another_network(
    trained_run: Path, data_root: Path, tmp_path: Path
) -> None:
    source = trained_run / "bundle"
    # A learning rate of ~0 keeps the convolutions where the bundle left them: proof they were loaded.
    args = [*COVIDET, "train", *TINY_TRAIN, "--epochs", "1", "--max-iterations", "1", "--lr", "1e-12"]
    result = run([*args, "--init-model", str(source), "--out", str(tmp_path / "ft")], data_root)
    assert result.returncode == 0, result.stderr
    card = read_model_card(tmp_path / "ft" / "bundle")
    assert card["training"]["config"]["init_model"] == str(source)
    before = torch.load(source / "model.pt", weights_only=True)
    after = torch.load(tmp_path / "ft" / "bundle" / "model.pt", weights_only=True)
    convolutions = [k for k in before if k.endswith("conv.weight") or k.endswith("cls_logits.weight")]
    assert convolutions and all(torch.equal(before[k], after[k]) for k in convolutions)
    other = [arg if arg != "mobilenet_v3_large" else "resnet18" for arg in args]
    refused = run([*other, "--init-model", str(source), "--out", str(tmp_path / "bad")], data_root)
    assert refused.returncode == 2
    assert (
        "--init-model" in refused.stderr
        and "another network: backbone 'mobilenet_v3_large'" in refused.stderr
    )
    assert "Traceback" not in refused.stderr


def test_early_stopping_follows_the_monitored_metric(data_root: Path, tmp_path: Path) -> None:
    result = run(
        [
            *COVIDET,
            "train",
            *TINY_TRAIN,
            "--epochs",
            "4",
            "--patience",
            "1",
            "--monitor",
            "map",
            "--out",
            str(tmp_path),
        ],
        data_root,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    with (tmp_path / "metrics.csv").open() as handle:
        values = [float(r["val_map"]) for r in csv.DictReader(handle)]
    # With patience 1, training stops at the first validation that does not beat the best so far.
    first_stale = next((i for i in range(1, len(values)) if values[i] <= max(values[:i])), None)
    if first_stale is None:
        assert len(values) == 4 and summary["stopped_because"] == "max epochs"
    else:
        assert len(values) == first_stale + 1
        assert summary["stopped_because"].startswith("early stop")
    assert summary["best_epoch"] == 1 + values.index(max(values))


def test_evaluate_writes_report_and_plots(trained_run: Path, data_root: Path, tmp_path: Path) -> None:
    result = run(
        [
            *COVIDET,
            "evaluate",
            "--model",
            str(trained_run / "bundle"),
            "--tier",
            "tiny",
            "--split",
            "train",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
        data_root,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    image = report["image"]
    assert image["n"] == 24
    assert {"accuracy", "macro_f1", "macro_auc", "ece", "confusion_matrix", "per_class"} <= set(image)
    assert sum(map(sum, image["confusion_matrix"])) == 24
    for name in ("covid19", "pneumonia", "normal"):
        assert {"sensitivity", "specificity", "auc"} <= set(image["per_class"][name])
    assert {"map", "map50", "per_class"} <= set(report["detection"])
    assert report["disclaimer"] == "not for clinical use"
    assert sum(entry["n"] for entry in report["per_source"].values()) == 24
    correct = round(image["accuracy"] * 24)
    assert sum(entry["correct"] for entry in report["per_source"].values()) == correct
    assert report["stability"]["side"] == 224 and 0 <= report["stability"]["unchanged"] <= 1
    # The shortcut guards: every probe, the geometry baseline beside the model, within-source figures.
    probes = report["stability_probes"]
    assert set(probes) == {"downsample_224", "pad_to_square", "crop_border_8pct"}
    assert probes["downsample_224"]["unchanged"] == report["stability"]["unchanged"]
    assert report["geometry_baseline"]["fitted_on"] == "train" and report["geometry_baseline"]["n"] == 24
    # The tiny tier: ieee8023 holds 8 covid19, 8 pneumonia and 3 normals; actualmed normals only.
    assert list(report["within_source"]) == ["ieee8023"]
    ieee = report["within_source"]["ieee8023"]
    assert ieee["classes"] == ["covid19", "pneumonia"] and ieee["n"] == 16 and ieee["majority"] == 0.5
    assert report["v1_rows"] is None  # every tiny row is a version-1 row: nothing to set apart
    assert "shortcut guards (train, 24 images" in result.stderr
    assert "width/height/aspect forest" in result.stderr
    for plot in ("confusion_matrix.png", "roc.png", "reliability.png"):
        with Image.open(tmp_path / plot) as picture:
            assert picture.size[0] > 100


def test_train_with_image_head_bundles_it_and_evaluate_uses_rule_two(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trained = run(
        [
            *COVIDET,
            "train",
            *TINY_TRAIN,
            "--epochs",
            "1",
            "--image-head",
            "--image-weight",
            "0.4",
            "--image-head-pool",
            "boxes",
            "--out",
            str(out),
        ],
        data_root,
    )
    assert trained.returncode == 0, trained.stderr
    # The tiny tier's box-less normals would be pooled over the whole image: training says so.
    assert "have no boxes: the box-pooled image head" in trained.stderr
    card = read_model_card(out / "bundle")
    assert card["architecture"]["image_head"] is True and card["architecture"]["image_head_pool"] == "boxes"
    assert card["decision"]["rule"] == "max-score-v2" and card["decision"]["image_weight"] == 0.4
    with (out / "metrics.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["train_loss_image"]) > 0
    evaluated = run(
        [
            *COVIDET,
            "evaluate",
            "--model",
            str(out / "bundle"),
            "--tier",
            "tiny",
            "--split",
            "train",
            "--stability-side",
            "0",
            "--no-progress",
        ],
        data_root,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["decision"]["rule"] == "max-score-v2" and report["decision"]["image_weight"] == 0.4
    assert report["image"]["n"] == 24
    xray = data_root / "images" / "covid19" / sorted(os.listdir(data_root / "images" / "covid19"))[0]
    predicted = run([*COVIDET, "predict", str(xray), "--model", str(out / "bundle")], data_root)
    assert predicted.returncode == 0, predicted.stderr
    (record,) = json.loads(predicted.stdout)
    head = record["assessment"]["image_head"]
    assert head["weight"] == 0.4 and set(head["probabilities"]) == {"covid19", "pneumonia", "normal"}
    assert abs(sum(head["probabilities"].values()) - 1.0) < 1e-4


def test_bad_dataset_path_is_one_line_error(data_root: Path, tmp_path: Path) -> None:
    result = run([*COVIDET, "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)], data_root)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: dataset path does not exist")
    assert "Traceback" not in result.stderr


def test_ddp_training_with_two_gloo_processes(data_root: Path, tmp_path: Path) -> None:
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "covidet.cli",
    ]
    result = run(
        [*torchrun, "train", *TINY_TRAIN, "--epochs", "1", "--out", str(tmp_path)], data_root, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("training on 24 of 24 images") == 2  # both ranks ran
    assert (tmp_path / "bundle" / "model.pt").is_file()
    with (tmp_path / "metrics.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 1  # only rank 0 writes


# --- predict with the shipped bundle -------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_bundle() -> Path:
    bundle = default_bundle_path()
    assert bundle is not None, "the shipped model bundle is missing from models/"
    return bundle


def test_predict_dicom_png_and_jpeg_with_the_shipped_bundle(
    shipped_bundle: Path, rg1_dicom: Path, data_root: Path, tmp_path: Path
) -> None:
    jpeg = data_root / "images" / "covid19" / sorted(os.listdir(data_root / "images" / "covid19"))[0]
    png = tmp_path / "xray.png"
    with Image.open(jpeg) as picture:
        picture.save(png)
    draw = tmp_path / "drawn"
    result = run([*COVIDET, "predict", str(rg1_dicom), str(png), str(jpeg), "--draw", str(draw)], data_root)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["file"] for r in records] == [str(rg1_dicom), str(png), str(jpeg)]
    card = read_model_card(shipped_bundle)
    header = pydicom.dcmread(rg1_dicom, stop_before_pixels=True)
    sizes = [(int(header.Rows), int(header.Columns))]
    for source in (png, jpeg):
        with Image.open(source) as picture:
            sizes.append((picture.height, picture.width))
    for record, (height, width) in zip(records, sizes, strict=True):
        assert record["model"] == {"name": card["name"], "version": card["version"]}
        assert record["disclaimer"] == "not for clinical use"
        assessment = record["assessment"]
        assert assessment["label"] in {"covid19", "pneumonia", "normal"}
        assert sum(assessment["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert assessment["threshold"] == card["decision"]["threshold"]
        assert "image_head" not in assessment  # the shipped model has no image head
        for finding in record["findings"]:
            x1, y1, x2, y2 = finding["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height  # original-image pixels
            assert finding["label"] in {"covid19", "pneumonia", "normal"} and 0.3 <= finding["score"] <= 1
    assert records[1]["findings"] == records[2]["findings"]  # same pixels as PNG or JPEG, same answer
    assert len(list(draw.glob("*.png"))) == 3


def test_predict_draws_a_grad_cam_per_finding(shipped_bundle: Path, data_root: Path, tmp_path: Path) -> None:
    xray = data_root / "images" / "covid19" / sorted(os.listdir(data_root / "images" / "covid19"))[0]
    draw = tmp_path / "drawn"
    refused = run([*COVIDET, "predict", str(xray), "--saliency"], data_root)
    assert refused.returncode != 0 and "--saliency needs --draw" in refused.stderr
    result = run([*COVIDET, "predict", str(xray), "--draw", str(draw), "--saliency"], data_root)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["findings"], "this X-ray has findings to explain"
    for number, finding in enumerate(record["findings"]):
        assert finding["saliency"] == str(draw / f"0000_{xray.stem}_gradcam{number}.png")
        with Image.open(finding["saliency"]) as picture, Image.open(xray) as original:
            assert picture.size == original.size  # drawn over the original pixels


def test_predict_corrupt_file_is_one_line_error_without_traceback(
    shipped_bundle: Path, data_root: Path, tmp_path: Path, rg1_dicom: Path
) -> None:
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(rg1_dicom.read_bytes()[:5000])
    result = run([*COVIDET, "predict", str(corrupt)], data_root)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "corrupt.dcm" in lines[0]
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)[0]["error"]
