"""``covidet export``'s driver: export, quantise, parity-check and record the variants of a bundle
(:func:`export_bundle`; what it writes: :mod:`covidet.detection.export`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

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
from covidet.detection.card import AcceleratedSection, VariantEntry
from covidet.detection.data import load_records
from covidet.detection.decision import DEFAULT_THRESHOLD, image_weight_of
from covidet.detection.export.errors import ExportError
from covidet.detection.export.onnx import export_onnx
from covidet.detection.export.parity import PARITY_CRITERIA, ParityFigures, check_parity, load_images
from covidet.detection.export.quantize import (
    calibration_inputs,
    pick_calibration_records,
    quantize_onnxruntime,
    quantize_openvino,
)

__all__ = ["MachineInfo", "export_bundle", "machine_info"]

logger = logging.getLogger(__name__)


class MachineInfo(TypedDict):
    """:func:`machine_info`: processor, CPU model name (``None`` when unknown), CPUs, torch's threads, the
    instruction sets that matter for int8/bf16 inference, and the load average (``None`` off POSIX)."""

    processor: str
    cpu_model: str | None
    cpus: int | None
    threads: int
    cpu_flags: list[str]
    load_average: list[float] | None


def _bf16_supported() -> bool:
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no OpenVINO, or a CPU plugin that cannot say
        return False


def machine_info() -> MachineInfo:
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
_PARITY: dict[str, ParityFigures] = {}


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
) -> AcceleratedSection:
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
    calibration_items = load_images(pick_calibration_records(train_records, calibration_images), size)
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
        items = load_images(records[:check_limit] if check_limit is not None else records, size)
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

    entries: list[VariantEntry] = []
    for result in results:
        entry = result.to_json()
        figures = _PARITY.get(result.name)
        entry["parity"] = {k: v for k, v in figures.items() if k != "metrics_torch"} if figures else None
        entries.append(entry)
    passing = [v for v in results if v.parity_ok]
    fastest = max(passing, key=lambda v: v.speedup_vs_torch or 0.0) if passing else None
    reference = next(iter(_PARITY.values()), None)
    section: AcceleratedSection = {
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
