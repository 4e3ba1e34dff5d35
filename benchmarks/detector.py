"""Benchmark the detector on this machine: inference latency and one training step per backbone and size.

    python benchmarks/detector.py --out benchmarks/results/detector.json
    python benchmarks/detector.py --backbones mobilenet_v3_large --sizes 512 --repeat 5 --out /tmp/d.json

Inference: median/min/max over ``--repeat`` runs after ``--warmup`` runs, one real chest X-ray (from
``$COVIDET_DATA`` val split) per forward pass, eval mode, ``torch.inference_mode``. Training step:
forward + backward + AdamW step on a batch of real images with their boxes, median over
``--train-repeat`` steps after one warm-up step. Weights are the shipped bundle's where the backbone
matches it (so the detections are real), else a fresh from-scratch initialisation; the number of
detections is recorded so a run that produces NaN or nothing is visible. Results go to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from _report import write_report  # benchmarks/ is on sys.path when a script runs
from covidet.detection.bundle import default_bundle_path, load_bundle
from covidet.detection.data import DetectionDataset, load_records
from covidet.detection.model import build_detector
from covidet.detection.transforms import Compose, ResizeLongerSide


def _real_batch(size: int, count: int, with_boxes: bool) -> tuple[list[torch.Tensor], list[dict]]:
    records = load_records(None, split="val")
    if with_boxes:
        records = [r for r in records if len(r.boxes)]
    dataset = DetectionDataset(records[:count], Compose([ResizeLongerSide(size)]))
    items = [dataset[i] for i in range(len(dataset))]
    images = [image for image, _ in items]
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in items]
    return images, targets


def _model(backbone: str, size: int) -> tuple[torch.nn.Module, str]:
    bundle = default_bundle_path()
    if bundle is not None:
        model, card = load_bundle(bundle)
        if card["architecture"]["backbone"] == backbone:
            model.transform.min_size = (size,)
            model.transform.max_size = size
            return model, f"shipped bundle {card['name']} {card['version']}"
    return build_detector(backbone=backbone, min_size=size, max_size=size), "from-scratch initialisation"


def bench_inference(backbone: str, size: int, warmup: int, repeat: int) -> dict:
    model, weights = _model(backbone, size)
    model.eval()
    images, _ = _real_batch(size, max(repeat, 1), with_boxes=False)
    times, detections = [], []
    with torch.inference_mode():
        for i in range(warmup):
            model([images[i % len(images)]])
        for i in range(repeat):
            start = time.perf_counter()
            (output,) = model([images[i % len(images)]])
            times.append(time.perf_counter() - start)
            detections.append(int(output["boxes"].shape[0]))
            if not torch.isfinite(output["boxes"]).all():
                raise RuntimeError(f"non-finite boxes from {backbone} at {size}px")
    return {
        "weights": weights,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": repeat,
        "mean_detections": statistics.mean(detections),
    }


def bench_train_step(backbone: str, size: int, batch: int, repeat: int) -> dict:
    torch.manual_seed(0)
    model = build_detector(backbone=backbone, min_size=size, max_size=size)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, targets = _real_batch(size, batch, with_boxes=True)
    times, losses = [], []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    times = times[1:]  # the first step allocates and is slower
    return {
        "batch": batch,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "steps": repeat,
        "images_per_s": batch / statistics.median(times),
        "final_loss": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["resnet101", "mobilenet_v3_large"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 800])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-repeat", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/detector.json"))
    args = parser.parse_args()
    if not os.environ.get("COVIDET_DATA"):
        sys.exit("set COVIDET_DATA to the chest X-ray dataset folder (real images are benchmarked)")
    results = []
    for backbone in args.backbones:
        for size in args.sizes:
            entry = {
                "backbone": backbone,
                "size": size,
                "inference": bench_inference(backbone, size, args.warmup, args.repeat),
            }
            if not args.skip_train:
                entry["train_step"] = bench_train_step(backbone, size, args.train_batch, args.train_repeat)
            results.append(entry)
            print(json.dumps(entry), flush=True)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "command": " ".join(sys.argv),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
