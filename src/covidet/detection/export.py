"""``covidet export``: accelerated artefacts for a model bundle, int8 calibration, and the parity check.

What it writes into ``BUNDLE/accelerated/``:

* ``fp32/{backbone,rpn_head,box_head}.onnx``: the three compiled parts of the detector (see
  :mod:`covidet.detection.accelerated`) exported to ONNX with dynamic batch and spatial axes. ONNX Runtime
  runs them as they are; OpenVINO reads the same files (fp32, or bf16 arithmetic on CPUs that have it).
* ``openvino-int8/*.xml|bin``: OpenVINO IR quantised to int8 by NNCF post-training quantisation.
* ``onnxruntime-int8/*.onnx``: QDQ int8 models from ONNX Runtime's static quantiser.

int8 is calibrated on **train-split** images only (the check runs on the val split, so it never sees
its calibration data). Then, unless told not to, every variant goes through :func:`check_parity` on the
val split against the torch model on identical inputs, and the model card's ``accelerated`` section
records, per variant: runtime, precision, files and their SHA-256, the weights' SHA-256, the parity
figures, ``parity_ok`` and the median seconds per image measured during the check. Only variants with
``parity_ok`` are used by the ``auto`` backend.

Parity criteria (``PARITY_CRITERIA``), against torch on the same val images:

* the image-level label (the card's decision rule) is the same on at least 99% of images;
* detections scoring at least 0.3 are paired by label and IoU (greedy, IoU > 0.5): at least 99% of
  the pairs have IoU >= 0.9;
* accuracy, macro F1, macro AUC, COVID-19 sensitivity/specificity, mAP, mAP@50 and lung mAP@50 are
  within 1 point (0.01) of torch's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.ops import box_iou

from covidet import __version__
from covidet.detection.accelerated import (
    ACCELERATED_DIR,
    GRAPHS,
    MANIFEST_FILE,
    Variant,
    accelerate,
    file_sha256,
    load_graphs,
    runtime_available,
)
from covidet.detection.bundle import CARD_FILE, load_bundle, read_model_card
from covidet.detection.data import DetectionDataset, ImageRecord, load_records
from covidet.detection.decision import DEFAULT_THRESHOLD, image_weight_of
from covidet.detection.engine import detections_from_output, evaluate_detections, summary_metrics
from covidet.detection.metrics import ImageDetections
from covidet.detection.transforms import Compose, ResizeLongerSide

__all__ = [
    "PARITY_CRITERIA",
    "CalibrationInputs",
    "ExportError",
    "calibration_inputs",
    "check_parity",
    "export_bundle",
    "export_onnx",
    "quantize_onnxruntime",
    "quantize_openvino",
]

logger = logging.getLogger(__name__)

PARITY_CRITERIA: dict[str, float] = {
    "min_label_agreement": 0.99,
    "box_min_score": 0.3,
    "box_iou": 0.9,
    "min_share_boxes_iou_ok": 0.99,
    "max_metric_delta": 0.01,
}
#: Metrics compared between torch and the accelerated model (keys of ``engine.summary_metrics``).
COMPARED_METRICS = (
    "accuracy",
    "macro_f1",
    "macro_auc",
    "covid19_sensitivity",
    "covid19_specificity",
    "map",
    "map50",
    "lung_map50",
)

CalibrationInputs = dict[str, list[list[np.ndarray]]]


class ExportError(RuntimeError):
    """The export could not be done (missing runtime, data or a failed conversion); says why."""


# ------------------------------------------------------------------------------------------ ONNX export


class _BackboneGraph(nn.Module):
    """Backbone + FPN: ``images [B, 3, H, W]`` (normalised, H and W multiples of 32) -> FPN levels."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(images).values())


class _RPNHeadGraph(nn.Module):
    """RPN head over all levels: ``f_i [B, 256, h_i, w_i]`` -> objectness per level, then deltas."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.head = model.rpn.head

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        objectness, deltas = self.head(list(features))
        return (*objectness, *deltas)


class _BoxHeadGraph(nn.Module):
    """The box head's two fully connected layers: ``[N, 256, 7, 7]`` -> ``[N, 1024]``."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.box_head = model.roi_heads.box_head

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        return self.box_head(roi_features)


def _export_one(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: list[str]) -> None:
    """Export with the dynamo exporter (every axis dynamic); fall back to the TorchScript exporter.

    The dynamo exporter is torch's recommended one; the TorchScript exporter is deprecated but still
    handles these plain convolutional graphs, so it is kept as a fallback for other torch versions.
    """
    module.eval()
    auto = torch.export.Dim.AUTO
    dynamic: tuple[Any, ...] = tuple({axis: auto for axis in range(a.dim())} for a in args)
    if isinstance(module, _RPNHeadGraph):  # forward(*features): one varargs entry holding every level
        dynamic = (dynamic,)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                module, args, None, dynamo=True, dynamic_shapes=dynamic, input_names=names, verbose=False
            )
        program.save(str(path), external_data=False)
        return
    except Exception as error:  # the exporter raises many types; all mean "try the other one"
        logger.warning(
            "dynamo ONNX export of %s failed (%s); using the TorchScript exporter", path.name, error
        )
    axes = {
        name: {axis: f"{name}_{axis}" for axis in range(a.dim())} for name, a in zip(names, args, strict=True)
    }
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path), dynamo=False, input_names=names, dynamic_axes=axes, opset_version=17
        )


def export_onnx(model: FasterRCNN, out_dir: str | os.PathLike, images: torch.Tensor) -> dict[str, Path]:
    """Export the three compiled parts of ``model`` to ``out_dir/{backbone,rpn_head,box_head}.onnx``.

    ``images`` is an example batch as the backbone receives it (``[B, 3, H, W]``, normalised and padded
    by ``model.transform``); the exported graphs accept any batch size and any H, W that are multiples of
    32 (the box head any number of RoIs). Returns the file of each graph.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad():
        features = list(model.backbone(images).values())
        pooled = torch.randn(8, int(model.backbone.out_channels), 7, 7)
    paths = {name: out / f"{name}.onnx" for name in GRAPHS}
    _export_one(_BackboneGraph(model), (images,), paths["backbone"], ["images"])
    _export_one(
        _RPNHeadGraph(model), tuple(features), paths["rpn_head"], [f"f{i}" for i in range(len(features))]
    )
    _export_one(_BoxHeadGraph(model), (pooled,), paths["box_head"], ["roi_features"])
    return paths


# ------------------------------------------------------------------------------------------ calibration


def _load_images(records: Sequence[ImageRecord], size: int) -> list[tuple[torch.Tensor, dict]]:
    """Images resized as the predictor resizes them (longer side ``size``), 3 channels, with targets."""
    dataset = DetectionDataset(records, Compose([ResizeLongerSide(size)]))
    items = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        items.append((image.expand(3, -1, -1).contiguous(), target))
    return items


def calibration_inputs(model: FasterRCNN, images: Sequence[torch.Tensor]) -> CalibrationInputs:
    """Run the torch model on ``images`` (one at a time) and record what each compiled part receives:
    ``backbone``: ``[images]``, ``rpn_head``: the FPN levels, ``box_head``: the RoIAlign output."""
    captured: CalibrationInputs = {name: [] for name in GRAPHS}
    modules = {"backbone": model.backbone, "rpn_head": model.rpn.head, "box_head": model.roi_heads.box_head}

    def hook(name: str) -> Callable[[nn.Module, tuple], None]:
        def record(_module: nn.Module, args: tuple) -> None:
            first = args[0]
            tensors = list(first) if isinstance(first, list | tuple) else [first]
            captured[name].append([t.detach().float().contiguous().numpy().copy() for t in tensors])

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.inference_mode():
            model.eval()
            for image in images:
                model([image])
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _pick_calibration_records(records: Sequence[ImageRecord], count: int, seed: int = 0) -> list[ImageRecord]:
    """``count`` records spread over the labels (round robin over shuffled per-label lists)."""
    rng = random.Random(seed)
    by_label: dict[str, list[ImageRecord]] = {}
    for record in records:
        by_label.setdefault(record.label.value, []).append(record)
    for group in by_label.values():
        rng.shuffle(group)
    picked: list[ImageRecord] = []
    while len(picked) < min(count, len(records)):
        for group in by_label.values():
            if group and len(picked) < count:
                picked.append(group.pop())
    return picked


def quantize_openvino(onnx_path: Path, samples: list[list[np.ndarray]], out_xml: Path) -> Path:
    """NNCF post-training int8 quantisation of an fp32 ONNX graph for OpenVINO; writes IR ``out_xml``.

    Activations are calibrated on ``samples`` (each a list of the graph's inputs); NNCF's default
    preset (symmetric, per-channel weights) with fast bias correction.
    """
    try:
        import nncf
        import openvino as ov
    except ImportError as error:
        raise ExportError("int8 for OpenVINO needs nncf and openvino (pip install nncf openvino)") from error
    model = ov.Core().read_model(str(onnx_path))
    # NNCF draws progress bars on standard output; `covidet export` prints its JSON there.
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml


def quantize_onnxruntime(onnx_path: Path, samples: list[list[np.ndarray]], out_path: Path) -> Path:
    """ONNX Runtime static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations,
    min-max calibration on ``samples``); writes ``out_path``."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        raise ExportError("int8 for ONNX Runtime needs onnxruntime (pip install onnxruntime)") from error
    names = [
        i.name for i in ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()
    ]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([dict(zip(names, sample, strict=True)) for sample in samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return out_path


# ------------------------------------------------------------------------------------------ parity check


def _greedy_pairs(
    boxes_a: torch.Tensor, labels_a: torch.Tensor, boxes_b: torch.Tensor, labels_b: torch.Tensor
) -> list[float]:
    """IoUs of same-label pairs matched greedily by IoU (> 0.5), each box used once."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return []
    iou = box_iou(boxes_a, boxes_b)
    iou[labels_a[:, None] != labels_b[None, :]] = 0.0
    pairs = []
    while True:
        value = float(iou.max())
        if value <= 0.5:
            return pairs
        flat = int(iou.argmax())
        i, j = divmod(flat, iou.shape[1])
        pairs.append(value)
        iou[i, :] = 0.0
        iou[:, j] = 0.0


def check_parity(
    reference: nn.Module,
    candidates: dict[str, nn.Module],
    items: Sequence[tuple[torch.Tensor, dict]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    image_weight: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Compare each candidate model with ``reference`` (torch) on the same images.

    ``threshold`` and ``image_weight`` are the decision rule's (:mod:`covidet.detection.decision`).
    ``items`` are ``(image [3, H, W] in [0, 1], target)`` pairs as :class:`DetectionDataset` yields them
    (boxes in the image's pixels). All models run one image at a time, interleaved image by image, so
    their timings see the same machine load. Returns, per candidate name: the parity figures, ``ok``
    (see :data:`PARITY_CRITERIA`), ``seconds_per_image`` (median) and the reference's median.
    """
    criteria = PARITY_CRITERIA
    names = ["torch", *candidates]
    models = {"torch": reference, **candidates}
    predictions: dict[str, list[ImageDetections]] = {name: [] for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ground_truth, image_labels = [], []
    with torch.inference_mode():
        for index, (image, target) in enumerate(items):
            order = names if index % 2 == 0 else [names[0], *reversed(names[1:])]
            for name in order:
                began = time.perf_counter()
                (output,) = models[name]([image])
                seconds[name].append(time.perf_counter() - began)
                predictions[name].append(detections_from_output(output, image, index))
            ground_truth.append(
                ImageDetections(
                    image_id=index,
                    boxes=target["boxes"].numpy(),
                    labels=target["labels"].numpy(),
                    width=int(image.shape[-1]),
                    height=int(image.shape[-2]),
                )
            )
            image_labels.append(int(target["image_label"]) - 1)
    reference_result = evaluate_detections(
        predictions["torch"], ground_truth, image_labels, threshold=threshold, image_weight=image_weight
    )
    reference_metrics = summary_metrics(reference_result.report)
    reference_labels = [a.label for a in reference_result.assessments]
    torch_median = statistics.median(seconds["torch"])
    results: dict[str, dict[str, Any]] = {}
    for name in candidates:
        evaluated = evaluate_detections(
            predictions[name], ground_truth, image_labels, threshold=threshold, image_weight=image_weight
        )
        labels = [a.label for a in evaluated.assessments]
        agreement = sum(a == b for a, b in zip(labels, reference_labels, strict=True)) / max(len(labels), 1)
        ious: list[float] = []
        n_reference = n_candidate = 0
        for ref, cand in zip(predictions["torch"], predictions[name], strict=True):
            keep_r = ref.scores >= criteria["box_min_score"]
            keep_c = cand.scores >= criteria["box_min_score"]
            n_reference += int(keep_r.sum())
            n_candidate += int(keep_c.sum())
            ious += _greedy_pairs(
                torch.from_numpy(ref.boxes[keep_r]),
                torch.from_numpy(ref.labels[keep_r]),
                torch.from_numpy(cand.boxes[keep_c]),
                torch.from_numpy(cand.labels[keep_c]),
            )
        share_iou_ok = sum(v >= criteria["box_iou"] for v in ious) / len(ious) if ious else 1.0
        metrics = summary_metrics(evaluated.report)
        deltas = {
            key: (
                None
                if math.isnan(metrics[key]) or math.isnan(reference_metrics[key])
                else metrics[key] - reference_metrics[key]
            )
            for key in COMPARED_METRICS
        }
        worst = max((abs(v) for v in deltas.values() if v is not None), default=0.0)
        median = statistics.median(seconds[name])
        ok = (
            agreement >= criteria["min_label_agreement"]
            and share_iou_ok >= criteria["min_share_boxes_iou_ok"]
            and worst <= criteria["max_metric_delta"] + 1e-9
        )
        results[name] = {
            "ok": bool(ok),
            "n_images": len(items),
            "label_agreement": agreement,
            "box_pairs": len(ious),
            "boxes_torch": n_reference,
            "boxes_accelerated": n_candidate,
            "share_pairs_iou_ge_0.9": share_iou_ok,
            "min_pair_iou": min(ious) if ious else None,
            "mean_pair_iou": statistics.fmean(ious) if ious else None,
            "metric_deltas": deltas,
            "max_abs_metric_delta": worst,
            "metrics_torch": reference_metrics,
            "metrics_accelerated": metrics,
            "seconds_per_image": median,
            "seconds_per_image_torch": torch_median,
            "speedup_vs_torch": torch_median / median if median > 0 else None,
        }
        logger.info(
            "parity %s: labels %.3f, boxes IoU>=0.9 %.3f (%d pairs), worst metric delta %.4f, %.3f s vs "
            "torch %.3f s -> %s",
            name,
            agreement,
            share_iou_ok,
            len(ious),
            worst,
            median,
            torch_median,
            "ok" if ok else "FAILED",
        )
    return results


# ------------------------------------------------------------------------------------------ the export


def _bf16_supported() -> bool:
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no OpenVINO, or a CPU plugin that cannot say
        return False


def machine_info() -> dict[str, Any]:
    """The CPU a measurement ran on: model name, relevant instruction sets, cores, threads, load."""
    flags: list[str] = []
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
                flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
    except OSError:
        pass
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_model": model or None,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_flags": flags,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _versions() -> dict[str, str]:
    versions = {"covidet": __version__, "torch": torch.__version__}
    for module in ("onnxruntime", "openvino", "nncf"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    return versions


def _check_round(
    bundle: Path,
    torch_model: nn.Module,
    model: FasterRCNN,
    variants: Sequence[Variant],
    items: Sequence[tuple[torch.Tensor, dict]],
    threshold: float,
    image_weight: float = 0.0,
) -> list[Variant]:
    """Parity-check ``variants`` in one interleaved run; returns them with the results filled in."""
    if not variants:
        return []
    candidates = {v.name: accelerate(model, load_graphs(bundle, v), v.feature_names) for v in variants}
    logger.info("parity check on %d images: %s", len(items), ", ".join(candidates))
    results = check_parity(torch_model, candidates, items, threshold=threshold, image_weight=image_weight)
    checked = []
    for variant in variants:
        figures = results[variant.name]
        checked.append(
            replace(
                variant,
                parity_ok=figures["ok"],
                seconds_per_image=figures["seconds_per_image"],
                speedup_vs_torch=figures["speedup_vs_torch"],
            )
        )
        _PARITY[variant.name] = figures
    return checked


#: Parity figures of the last export, by variant name (filled by ``_check_round``).
_PARITY: dict[str, dict[str, Any]] = {}


def export_bundle(
    bundle: str | os.PathLike,
    *,
    data: str | os.PathLike | None,
    runtimes: Sequence[str] = ("onnxruntime", "openvino"),
    int8: bool = True,
    bf16: bool | None = None,
    search: bool = True,
    calibration_images: int = 64,
    check: bool = True,
    check_split: str = "val",
    check_limit: int | None = None,
    tier: str | None = None,
    update_card: bool = True,
) -> dict[str, Any]:
    """Export ``bundle``'s accelerated variants into ``bundle/accelerated``; check and record them.

    Args:
        bundle: model bundle folder (written to: artefacts and, with ``update_card``, the model card).
        data: dataset (manifest folder or COCO JSON, ``None``: ``$COVIDET_DATA``); its train split
            calibrates int8, its ``check_split`` is the parity check's.
        runtimes: ``onnxruntime`` and/or ``openvino``; one that is not installed is skipped with a warning.
        int8: also quantise every graph to int8 (calibrated on ``calibration_images`` train images).
        bf16: also try OpenVINO with bf16 arithmetic (default: where the CPU has bf16 instructions).
        search: when a runtime's all-int8 variant fails the check, check int8 on one graph at a time and
            then int8 on every graph that passed alone (the mixed variant must pass the check again).
        check: run :func:`check_parity` on ``check_split`` (``check_limit`` images at most).
        tier: ``tiny`` restricts calibration and check to the tiny tier (tests).
        update_card: write the ``accelerated`` section into the bundle's model card.

    Returns the ``accelerated`` section (JSON-ready): every variant with its files, parity figures and
    ``parity_ok``, and the fastest variant that passed.
    """
    bundle = Path(bundle)
    model, card = load_bundle(bundle)
    size = int(card["architecture"]["max_size"])
    threshold = float(card.get("decision", {}).get("threshold", DEFAULT_THRESHOLD))
    image_weight = image_weight_of(card)
    installed = []
    for runtime in runtimes:
        if runtime not in ("onnxruntime", "openvino"):
            raise ExportError(f"unknown runtime {runtime!r}: onnxruntime or openvino")
        if runtime_available(runtime):
            installed.append(runtime)
        else:
            logger.warning("%s is not installed: its variants are skipped", runtime)
    if not installed:
        raise ExportError("no runtime installed: pip install 'covidet[fast]' (onnxruntime, openvino, nncf)")
    if bf16 is None:
        bf16 = "openvino" in installed and _bf16_supported()
    if (check or int8) and data is None and not os.environ.get("COVIDET_DATA"):
        raise ExportError(
            "the parity check and int8 calibration need the dataset: pass --data or set COVIDET_DATA"
        )

    root = bundle / ACCELERATED_DIR
    if root.exists():
        shutil.rmtree(root)  # artefacts of other weights must not survive next to the new ones
    train_records = load_records(data, split="train", tier=tier)
    calibration_items = _load_images(_pick_calibration_records(train_records, calibration_images), size)
    with torch.inference_mode():
        example = model.transform([calibration_items[0][0]])[0].tensors.clone()
        feature_names = tuple(model.backbone(example).keys())
    logger.info("exporting ONNX graphs to %s", root / "fp32")
    fp32_files = export_onnx(model, root / "fp32", example)
    int8_files: dict[str, dict[str, Path]] = {}
    if int8:
        logger.info("calibrating int8 on %d train-split images", len(calibration_items))
        calibration = calibration_inputs(model, [image for image, _ in calibration_items])
        for runtime in installed:
            folder = root / f"{runtime}-int8"
            int8_files[runtime] = {
                name: quantize_openvino(fp32_files[name], calibration[name], folder / f"{name}.xml")
                if runtime == "openvino"
                else quantize_onnxruntime(fp32_files[name], calibration[name], folder / f"{name}.onnx")
                for name in GRAPHS
            }

    weights_sha = card.get("weights", {}).get("sha256") or file_sha256(bundle / card["weights"]["file"])
    hashes = {path: file_sha256(path) for path in fp32_files.values()}
    hashes |= {path: file_sha256(path) for files in int8_files.values() for path in files.values()}

    def variant(runtime: str, precisions: dict[str, str]) -> Variant:
        files = {
            name: int8_files[runtime][name] if precisions[name] == "int8" else fp32_files[name]
            for name in GRAPHS
        }
        return Variant(
            backend=runtime,
            files={name: str(path.relative_to(bundle)) for name, path in files.items()},
            graph_precisions=dict(precisions),
            weights_sha256=weights_sha,
            file_sha256={name: hashes[path] for name, path in files.items()},
            feature_names=feature_names,
        )

    def uniform(precision: str) -> dict[str, str]:
        return dict.fromkeys(GRAPHS, precision)

    first = [variant(runtime, uniform("fp32")) for runtime in installed]
    first += [variant(runtime, uniform("int8")) for runtime in int8_files]
    if bf16:
        first.append(variant("openvino", uniform("bf16")))
    for runtime, files in int8_files.items():
        manifest = {
            "weights_sha256": weights_sha,
            "files": {n: str(p.relative_to(bundle)) for n, p in files.items()},
        }
        (root / f"{runtime}-int8" / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    _PARITY.clear()
    if not check:
        results = first
    else:
        records = load_records(data, split=check_split, tier=tier)
        items = _load_images(records[:check_limit] if check_limit is not None else records, size)
        torch_model = model.to(memory_format=torch.channels_last)  # as the torch Predictor runs it
        results = _check_round(bundle, torch_model, model, first, items, threshold, image_weight)
        if search:
            failed = [v.backend for v in results if v.precision == "int8" and not v.parity_ok]
            singles = [
                variant(runtime, uniform("fp32") | {name: "int8"}) for runtime in failed for name in GRAPHS
            ]
            singles = _check_round(bundle, torch_model, model, singles, items, threshold, image_weight)
            results += singles
            mixed = []
            for runtime in failed:
                passing = [
                    next(g for g, p in v.graph_precisions.items() if p == "int8")
                    for v in singles
                    if v.backend == runtime and v.parity_ok
                ]
                if len(passing) >= 2:
                    mixed.append(variant(runtime, uniform("fp32") | dict.fromkeys(passing, "int8")))
            results += _check_round(bundle, torch_model, model, mixed, items, threshold, image_weight)

    entries = []
    for result in results:
        entry = result.to_json()
        figures = _PARITY.get(result.name)
        entry["parity"] = {k: v for k, v in figures.items() if k != "metrics_torch"} if figures else None
        entries.append(entry)
    passing = [v for v in results if v.parity_ok]
    fastest = max(passing, key=lambda v: v.speedup_vs_torch or 0.0) if passing else None
    reference = next(iter(_PARITY.values()), None)
    section = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": f"longer side {size} px, shorter side padded to a multiple of 32 exactly as torch pads it; "
        "dynamic batch and spatial axes (OpenVINO compiles once per shape)",
        "split": {
            "runtime": "backbone + FPN, RPN head convolutions, box head fc6/fc7",
            "torch": "resize/normalise, anchors, proposal decoding + NMS, RoIAlign, class/box layer, "
            "per-class NMS, scaling to image pixels",
        },
        "calibration": {"split": "train", "n_images": len(calibration_items) if int8 else 0, "tier": tier},
        "check": {
            "split": check_split,
            "n_images": reference["n_images"],
            "criteria": PARITY_CRITERIA,
            "metrics_torch": reference["metrics_torch"],
        }
        if reference
        else None,
        "fastest_passing": fastest.name if fastest else None,
        "variants": entries,
        "machine": machine_info(),
        "software": _versions(),
        "note": "artefacts are made by `covidet export` and are not kept in git; without them the "
        "predictor runs torch",
    }
    if update_card:
        card = read_model_card(bundle)
        card["accelerated"] = section
        (bundle / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        logger.info("model card updated; fastest parity-passing variant: %s", section["fastest_passing"])
    return section
