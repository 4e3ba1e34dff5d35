"""Accelerated inference: export, parity check, backend selection and fallbacks (shipped bundle).

One module-scoped export (``covidet export`` on a copy of the shipped bundle, int8 calibrated on 4
train images, checked on 4 val images) serves every test; the full val-split check belongs to
``covidet export --check``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidet.cli import app
from covidet.config import Settings
from covidet.detection import accelerated
from covidet.detection.accelerated import OnnxRuntimeGraph, OpenVINOGraph, Variant, accelerate
from covidet.detection.bundle import CARD_FILE, default_bundle_path, load_bundle, read_model_card
from covidet.detection.data import load_records
from covidet.detection.export import _load_images, check_parity
from covidet.detection.predictor import Predictor
from covidet.imaging import read_image

# ONNX Runtime and OpenVINO stay out of the main test process: see tests/conftest.py.
pytestmark = pytest.mark.own_process


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_root) -> Path:
    """A copy of the shipped bundle after `covidet export` (ONNX fp32 for both runtimes, OpenVINO int8)."""
    shipped = default_bundle_path()
    assert shipped is not None
    bundle = tmp_path_factory.mktemp("bundle")
    for name in (CARD_FILE, read_model_card(shipped)["weights"]["file"]):
        shutil.copy2(shipped / name, bundle / name)
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--model",
            str(bundle),
            "--data",
            str(data_root),
            "--calibration-images",
            "4",
            "--limit",
            "4",
            "--no-bf16",
            "--no-search",
            "--runtime",
            "openvino",
            "--runtime",
            "onnxruntime",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # JSON only on stdout (progress and logs go to stderr)
    assert summary["fastest_passing"] is not None
    return bundle


def _val_xrays(data_root: Path, count: int):
    return [read_image(r.path) for r in load_records(data_root, split="val")[:count]]


def _val_items(data_root: Path, count: int, size: int):
    return _load_images(load_records(data_root, split="val")[:count], size)


def test_export_records_variants_and_parity_in_the_card(exported: Path) -> None:
    card = read_model_card(exported)
    section = card["accelerated"]
    names = {f"{v['backend']}-{v['precision']}" for v in section["variants"]}
    assert {"onnxruntime-fp32", "openvino-fp32", "openvino-int8", "onnxruntime-int8"} <= names
    assert section["calibration"]["split"] == "train"
    assert section["check"]["split"] == "val" and section["check"]["n_images"] == 4
    for entry in section["variants"]:
        assert entry["weights_sha256"] == card["weights"]["sha256"]
        assert set(entry["files"]) == {"backbone", "rpn_head", "box_head"}
        for relative in entry["files"].values():
            assert (exported / relative).is_file()
        parity = entry["parity"]
        expected = {"label_agreement", "share_pairs_iou_ge_0.9", "metric_deltas", "seconds_per_image"}
        assert expected <= set(parity)
        if entry["precision"] == "fp32":  # same arithmetic up to float rounding: must pass
            assert entry["parity_ok"], parity
            assert parity["label_agreement"] == 1.0
            assert parity["min_pair_iou"] is None or parity["min_pair_iou"] > 0.99


def test_fp32_graphs_give_torchs_detections_on_identical_inputs(exported: Path, data_root: Path) -> None:
    model, card = load_bundle(exported)
    entry = next(v for v in card["accelerated"]["variants"] if v["precision"] == "fp32")
    variant = Variant.from_json(entry)
    files = {name: exported / relative for name, relative in variant.files.items()}
    items = _val_items(data_root, 2, int(card["architecture"]["max_size"]))
    for graph_class in (OnnxRuntimeGraph, OpenVINOGraph):
        fast = accelerate(model, {n: graph_class(p) for n, p in files.items()}, variant.feature_names)
        with torch.inference_mode():
            for image, _ in items:
                (reference,) = model([image])
                (output,) = fast([image])
                assert torch.equal(reference["labels"], output["labels"])
                np.testing.assert_allclose(output["boxes"], reference["boxes"], atol=0.05)
                np.testing.assert_allclose(output["scores"], reference["scores"], atol=1e-4)
    # the torch model itself was not modified by accelerate()
    assert not isinstance(model.backbone, accelerated.RuntimeBackbone)


def test_auto_picks_the_fastest_passing_variant_and_matches_torch(exported: Path, data_root: Path) -> None:
    card = read_model_card(exported)
    fast = Predictor.from_bundle(exported, backend="auto")
    assert fast.backend == card["accelerated"]["fastest_passing"]
    reference = Predictor.from_bundle(exported, backend="torch")
    assert reference.backend == "torch"
    xrays = _val_xrays(data_root, 3)
    for a, b in zip(fast.predict(xrays), reference.predict(xrays), strict=True):
        assert a.assessment.label == b.assessment.label
    # COVIDET_BACKEND is the default of from_bundle (the worker does not pass a backend)
    assert Predictor.from_bundle(exported).backend == fast.backend


def test_backend_setting_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("COVIDET_BACKEND", "openvino")
    assert Settings().backend == "openvino"
    monkeypatch.setenv("COVIDET_BACKEND", "tensorrt")
    with pytest.raises(ValueError):
        Settings()


def test_named_backend_selects_its_runtime(exported: Path, monkeypatch) -> None:
    monkeypatch.setenv("COVIDET_BACKEND", "onnxruntime")
    predictor = Predictor.from_bundle(exported)
    assert predictor.backend.startswith("onnxruntime-")


def test_missing_runtime_falls_back_to_torch_with_a_warning(exported: Path, monkeypatch, caplog) -> None:
    real = accelerated.runtime_available
    monkeypatch.setattr(accelerated, "runtime_available", lambda b: False if b == "openvino" else real(b))
    with caplog.at_level(logging.WARNING):
        predictor = Predictor.from_bundle(exported, backend="openvino")
    assert predictor.backend == "torch"
    assert "not installed" in caplog.text


def test_artefacts_of_other_weights_or_tampered_files_are_not_used(exported: Path, tmp_path, caplog) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(exported, bundle)
    card = read_model_card(bundle)
    for entry in card["accelerated"]["variants"]:
        entry["weights_sha256"] = "0" * 64  # exported from other weights
    (bundle / CARD_FILE).write_text(json.dumps(card))
    assert Predictor.from_bundle(bundle, backend="auto").backend == "torch"

    shutil.rmtree(bundle)
    shutil.copytree(exported, bundle)
    section = read_model_card(bundle)["accelerated"]
    chosen = section["fastest_passing"]
    entry = next(v for v in section["variants"] if f"{v['backend']}-{v['precision']}" == chosen)
    with open(bundle / entry["files"]["box_head"], "ab") as handle:
        handle.write(b"tampered")
    with caplog.at_level(logging.WARNING):
        assert Predictor.from_bundle(bundle, backend="auto").backend == "torch"
    assert "SHA-256" in caplog.text

    shutil.rmtree(bundle / "accelerated")  # a bundle as git holds it: card figures, no artefacts
    assert Predictor.from_bundle(bundle, backend="auto").backend == "torch"


def test_check_rejects_a_variant_that_changes_the_detections(exported: Path, data_root: Path) -> None:
    model, card = load_bundle(exported)
    items = _val_items(data_root, 3, int(card["architecture"]["max_size"]))
    same = accelerate(model, {}, [])  # a plain copy: torch again
    broken = accelerate(model, {}, [])
    with torch.no_grad():  # what a bad quantisation does: shifted class scores and boxes
        broken.roi_heads.box_predictor.cls_score.bias.add_(torch.tensor([0.0, 3.0, -3.0, 0.0]))
        broken.roi_heads.box_predictor.bbox_pred.bias.add_(0.3)
    results = check_parity(model, {"broken": broken, "same": same}, items)
    assert results["same"]["ok"] and results["same"]["label_agreement"] == 1.0
    assert not results["broken"]["ok"]


def test_common_scale_cache_serves_what_the_dataset_serves(data_root: Path) -> None:
    """The training speed-up's image cache: same pixels (to float16 rounding), same targets."""
    from covidet.detection.data import DetectionDataset
    from covidet.detection.train import CommonScaleCache
    from covidet.detection.transforms import Compose, ResizeLongerSide

    records = [r for r in load_records(data_root, split="train") if len(r.boxes)][:2]
    dataset = DetectionDataset(records, Compose([ResizeLongerSide(128)]))
    cached = CommonScaleCache(dataset, 128).fill()
    assert len(cached) == len(dataset)
    for index in range(len(dataset)):
        (image, target), (again, cached_target) = dataset[index], cached[index]
        assert image.shape == again.shape and image.shape[0] == 3
        torch.testing.assert_close(again, image, atol=5e-4, rtol=0)
        torch.testing.assert_close(cached_target["boxes"], target["boxes"])
        assert torch.equal(cached_target["labels"], target["labels"])
