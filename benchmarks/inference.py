"""Benchmark CPU inference: torch eager against each accelerated variant, same real images, one run.

    python benchmarks/inference.py --backbone resnet101 --size 800 --repeat 5 \
        --out benchmarks/results/inference_resnet101_800.json
    python benchmarks/inference.py --backbone mobilenet_v3_large --size 512 --repeat 5 --out /tmp/i.json

What it does:

1. Weights. A trained bundle given with ``--model`` (its backbone must be ``--backbone``); else the shipped
   bundle's when its backbone is ``--backbone`` (input size set to ``--size`` in both cases); otherwise a
   *trained-like* initialisation (:func:`trained_like_detector`): from-scratch weights whose
   BatchNorm statistics are re-estimated on real train-split X-rays and whose output layers are scaled to
   give logits with a spread like a trained model's, so activations stay finite and the detector
   produces boxes (random weights can overflow to NaN, and zero-initialised heads give flat scores that
   make both timing and parity meaningless). Mean detections per image are recorded.
2. Export and check, exactly as ``covidet export`` does, into a temporary bundle: ONNX graphs, int8
   calibrated on ``--calibration-images`` train-split images, parity against torch on ``--parity-images``
   val images (``parity_ok`` and the figures).
3. Timing: the user-facing path (``Predictor.predict`` on one decoded X-ray: resize, detector, boxes back
   to image pixels), ``--images`` real val X-rays, one warm-up round, then ``--repeat`` rounds in which the
   backends take turns image by image (order rotated each round), so every backend sees the same machine
   load. Median, min and max seconds per image; speed-up = torch's median / the backend's median.
4. Peak RSS: a fresh subprocess per backend loads the bundle, runs the images twice and reports its
   peak resident memory (``VmHWM``, MB; includes torch itself, about 0.5 GB here), so each backend's
   memory is measured alone.

The JSON has ``backends``: ``torch`` (eager) and ``<runtime>-<precision>`` entries (precision
``int8[...]`` is int8 on the listed graphs, fp32 on the others), each with ``median_s``, ``min_s``, ``max_s``,
``peak_rss_mb``, ``speedup_vs_eager``, ``parity_ok`` and ``parity``; ``best`` is the fastest
parity-passing one. The load average before and after is recorded: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.resnet import BasicBlock, Bottleneck

from covidet.detection.accelerated import Variant, load_variant
from covidet.detection.bundle import (
    BundleError,
    default_bundle_path,
    load_bundle,
    read_model_card,
    save_bundle,
)
from covidet.detection.data import DetectionDataset, load_records
from covidet.detection.decision import RULE_NAME
from covidet.detection.export import export_bundle
from covidet.detection.model import build_detector
from covidet.detection.predictor import Predictor
from covidet.detection.transforms import Compose, ResizeLongerSide
from covidet.imaging import read_image

logger = logging.getLogger("benchmarks.inference")
REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("COVIDET_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cxr"


# ------------------------------------------------------------------------------------ trained-like weights


def _scale_layer_output(model: FasterRCNN, layer: nn.Module, images: list[torch.Tensor], std: float) -> None:
    """Scale ``layer``'s weight so that, on ``images``, each of its outputs varies with standard deviation
    ``std`` across positions / RoIs, and zero its bias (a from-scratch bias such as the classifier's
    background prior would otherwise dominate, giving every RoI the same flat scores)."""
    outputs: list[torch.Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        channels = output.shape[1]
        outputs.append(output.detach().transpose(0, 1).reshape(channels, -1))  # [channels, samples]

    handle = layer.register_forward_hook(record)
    with torch.no_grad():
        model.eval()
        for image in images:
            model([image])
        handle.remove()
        values = torch.cat(outputs, dim=1)
        spread = float(values.std(dim=1).mean())  # per-output spread, bias excluded by the centring
        if spread > 0:
            layer.weight.mul_(std / spread)
        if layer.bias is not None:
            layer.bias.zero_()


def trained_like_detector(backbone: str, size: int, images: list[torch.Tensor], seed: int = 0) -> FasterRCNN:
    """A from-scratch detector made to behave like a trained one, for benchmarks without trained weights.

    1. The residual branches' last norm starts at 0.25 instead of 0 (zero-init makes every block an
       identity: a network far cheaper to approximate than a trained one, which would flatter int8).
    2. BatchNorm running statistics are re-estimated on ``images`` (real X-rays, ``[3, H, W]``), so each
       normalised activation is about N(0, 1) on real data, as after training.
    3. The RPN's objectness and the box classifier are scaled to logits that vary with standard deviation
       2 from RoI to RoI, the box regressions to deltas of 0.1-0.2, biases zeroed: scores spread over
       (0, 1) and boxes move, instead of torchvision's near-zero initial outputs (flat scores around the
       class prior, nothing above the reporting threshold).
    """
    torch.manual_seed(seed)
    model = build_detector(backbone=backbone, min_size=size, max_size=size)
    for module in model.backbone.body.modules():
        if isinstance(module, Bottleneck):
            nn.init.constant_(module.bn3.weight, 0.25)
        elif isinstance(module, BasicBlock):
            nn.init.constant_(module.bn2.weight, 0.25)
    norms = [m for m in model.backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration images
    with torch.no_grad():
        model.eval()
        for norm in norms:
            norm.train()
        for image in images:
            batch = model.transform([image])[0].tensors
            model.backbone(batch)
    model.eval()
    few = images[:6]  # output spreads settle on a few images; each scaling pass runs the whole detector
    _scale_layer_output(model, model.rpn.head.cls_logits, few, 2.0)
    _scale_layer_output(model, model.rpn.head.bbox_pred, few, 0.2)
    _scale_layer_output(model, model.roi_heads.box_predictor.cls_score, few, 2.0)
    _scale_layer_output(model, model.roi_heads.box_predictor.bbox_pred, few, 0.1)
    return model.eval()


def _real_images(split: str, size: int, count: int) -> list[torch.Tensor]:
    records = load_records(_data_root(), split=split)[:count]
    dataset = DetectionDataset(records, Compose([ResizeLongerSide(size)]))
    return [dataset[i][0].expand(3, -1, -1).contiguous() for i in range(len(dataset))]


def make_bundle(
    backbone: str, size: int, out: Path, calibration: int, model_bundle: Path | None = None
) -> str:
    """Write the benchmarked bundle into ``out``; returns a description of its weights.

    ``model_bundle`` (``--model``) is a trained bundle to benchmark; its backbone must be ``backbone``.
    Without it the shipped bundle is used when its backbone is ``backbone``, else a trained-like
    initialisation.
    """
    source = model_bundle  # main() has checked that its backbone is ``backbone``
    if source is None:
        shipped = default_bundle_path()
        if shipped is not None and read_model_card(shipped)["architecture"]["backbone"] == backbone:
            source = shipped
    if source is not None:
        card = read_model_card(source)
        trained_at = card["architecture"]["max_size"]  # before the size below overwrites it
        shutil.copy2(source / card["weights"]["file"], out / card["weights"]["file"])
        card["architecture"]["min_size"] = card["architecture"]["max_size"] = size
        card.pop("accelerated", None)
        (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        kind = "trained bundle" if model_bundle is not None else "shipped bundle"
        return f"{kind} {card['name']} {card['version']} (trained at {trained_at} px)"
    images = _real_images("train", size, calibration)
    model = trained_like_detector(backbone, size, images)
    save_bundle(
        model,
        out,
        architecture={
            "backbone": backbone,
            "norm": "batch",
            "min_size": size,
            "max_size": size,
            "num_classes": 4,
            "anchor_aspect_ratios": [0.5, 1.0, 2.0],
        },
        decision={"rule": RULE_NAME, "threshold": 0.5},
        training={"note": "trained-like initialisation for benchmarks (benchmarks/inference.py)"},
        metrics={},
        name=f"benchmark-{backbone}",
        half=False,  # fp32 weights: the benchmark compares engines, not weight rounding
    )
    return f"trained-like initialisation (BatchNorm statistics from {len(images)} train X-rays, scaled heads)"


# ------------------------------------------------------------------------------------------- timing


def _predictor(bundle: Path, name: str) -> Predictor:
    model, card = load_bundle(bundle)
    if name == "torch":
        return Predictor(model, card, backend="torch")
    entry = next(v for v in card["accelerated"]["variants"] if f"{v['backend']}-{v['precision']}" == name)
    return Predictor(load_variant(model, bundle, Variant.from_json(entry)), card, backend=name)


def _rss_probe(bundle: Path, name: str, files: list[str]) -> None:
    """Subprocess mode: load one backend, run the images twice, print peak RSS in MB."""
    predictor = _predictor(bundle, name)
    xrays = [read_image(f) for f in files]
    for _ in range(2):
        for xray in xrays:
            predictor.predict([xray])
    print(json.dumps({"peak_rss_mb": _peak_rss_self_mb()}))


def _peak_rss_self_mb() -> float:
    """This process's peak RSS. ``VmHWM`` rather than ``ru_maxrss``: Linux carries ``ru_maxrss`` over
    ``fork`` + ``exec``, so a probe started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss(bundle: Path, name: str, files: list[str]) -> float | None:
    command = [sys.executable, __file__, "--rss-probe", name, "--bundle", str(bundle), "--files", *files]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("{"):
            return float(json.loads(line)["peak_rss_mb"])
    logger.warning("RSS probe of %s failed: %s", name, result.stderr[-500:])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument(
        "--model", type=Path, default=None, help="trained bundle (default: shipped or trained-like weights)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds over --images images")
    parser.add_argument("--images", type=int, default=4, help="real val X-rays timed per round")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--parity-images", type=int, default=None, help="val images checked (default: all)")
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--no-search", action="store_true", help="no graph-by-graph int8 after a failure")
    parser.add_argument("--keep", type=Path, default=None, help="keep the exported bundle in this folder")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    parser.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Root at WARNING (ONNX Runtime's quantiser logs every node at INFO on the root logger); covidet's and
    # this script's progress at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("covidet", "benchmarks"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.rss_probe:
        logging.getLogger().setLevel(logging.WARNING)
        _rss_probe(args.bundle, args.rss_probe, args.files)
        return
    if args.model is not None:
        try:  # before any work: a wrong path fails at once, with the reason
            backbone = read_model_card(args.model)["architecture"]["backbone"]
        except BundleError as error:
            sys.exit(f"--model: {error}")
        if backbone != args.backbone:
            sys.exit(f"--model {args.model} is a {backbone} bundle, not {args.backbone}")
    if not (_data_root() / "manifest.csv").is_file():
        sys.exit("set COVIDET_DATA to the chest X-ray dataset folder (real images are benchmarked)")
    load_before = os.getloadavg()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="covidet-bench-"))
    try:
        bundle = args.keep or work / "bundle"
        bundle.mkdir(parents=True, exist_ok=True)
        weights = make_bundle(args.backbone, args.size, bundle, args.calibration_images, args.model)
        logger.info("weights: %s", weights)
        section = export_bundle(
            bundle,
            data=_data_root(),
            runtimes=args.runtimes,
            int8=not args.no_int8,
            search=not args.no_search,
            calibration_images=args.calibration_images,
            check_limit=args.parity_images,
        )
        variants = {f"{v['backend']}-{v['precision']}": v for v in section["variants"]}
        names = ["torch", *variants]
        predictors = {name: _predictor(bundle, name) for name in names}
        files = [str(r.path) for r in load_records(_data_root(), split="val")[: args.images]]
        xrays = [read_image(f) for f in files]
        detections = []
        with torch.inference_mode():
            model = predictors["torch"].model
            for image in _real_images("val", args.size, args.images):
                (output,) = model([image])
                if not torch.isfinite(output["boxes"]).all() or not torch.isfinite(output["scores"]).all():
                    raise RuntimeError("non-finite detections: the weights do not make a usable benchmark")
                detections.append(int(output["boxes"].shape[0]))
        times: dict[str, list[float]] = {name: [] for name in names}
        findings: dict[str, list[int]] = {name: [] for name in names}
        for round_index in range(args.repeat + 1):  # round 0 warms up (OpenVINO compiles per shape)
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            for xray in xrays:
                for name in order:
                    began = time.perf_counter()
                    (prediction,) = predictors[name].predict([xray])
                    elapsed = time.perf_counter() - began
                    if round_index:
                        times[name].append(elapsed)
                        findings[name].append(len(prediction.findings))
            logger.info("round %d of %d done", round_index, args.repeat)
        del predictors
        eager = statistics.median(times["torch"])
        results: dict[str, dict[str, Any]] = {}
        for name in names:
            entry = variants.get(name)
            median = statistics.median(times[name])
            results[name] = {
                "backend": entry["backend"] if entry else "torch",
                "precision": entry["precision"] if entry else "fp32",
                "graph_precisions": entry["graph_precisions"] if entry else None,
                "median_s": median,
                "min_s": min(times[name]),
                "max_s": max(times[name]),
                "runs": len(times[name]),
                "peak_rss_mb": _peak_rss(bundle, name, files),
                "speedup_vs_eager": eager / median,
                "parity_ok": True if entry is None else bool(entry["parity_ok"]),
                "parity": entry["parity"] if entry else None,
                "mean_findings": statistics.fmean(findings[name]),
            }
            logger.info(
                "%-28s median %.4f s  speed-up %.2fx  parity %s",
                name,
                median,
                eager / median,
                results[name]["parity_ok"],
            )
        passing = [n for n in names if n != "torch" and results[n]["parity_ok"]]
        best = max(passing, key=lambda n: results[n]["speedup_vs_eager"]) if passing else None
        report = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]),
            "backbone": args.backbone,
            "size": args.size,
            "weights": weights,
            "mean_detections_torch": statistics.fmean(detections),
            "images": files,
            "repeat": args.repeat,
            "machine": section["machine"] | {"software": section["software"]},
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "check": section["check"],
            "calibration": section["calibration"],
            "best": best,
            "best_speedup_vs_eager": results[best]["speedup_vs_eager"] if best else None,
            "backends": results,
            "wall_s": time.monotonic() - started,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}: best {best} {report['best_speedup_vs_eager']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
