"""Train ResNet-101 Faster R-CNN on a CUDA GPU for a fixed number of minutes, with AMP.

    python benchmarks/gpu_train.py --data ../shared/data/cxr --minutes 8 --size 640 --out runs/gpu

Prepared for a lent GPU machine (one command, bounded time). Reports images/s of training, the
validation metrics of the best checkpoint, and writes ``gpu_train.json`` next to the run. On a machine
without CUDA it refuses to start (it is not a CPU benchmark). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from covidet.detection.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="dataset folder (manifest.csv + boxes.csv)")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=640, help="longer side in pixels (>= 512)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40, help="schedule length; the time budget may end it")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_train"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    if args.size < 512:
        sys.exit("--size must be at least 512")
    config = TrainConfig(
        data=args.data,
        out=args.out,
        backbone=args.backbone,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_iterations=200,
        max_minutes=args.minutes,
        workers=args.workers,
        device="cuda",
        amp=True,
        patience=100,
        show_progress=False,
    )
    started = time.monotonic()
    result = train(config)
    seconds = time.monotonic() - started
    train_seconds = sum(row["seconds"] for row in result.history)
    n_train = json.loads((result.bundle / "model_card.json").read_text())["training"]["n_train_images"]
    images = n_train * len(result.history)
    report = {
        "device": torch.cuda.get_device_name(0),
        "backbone": args.backbone,
        "size": args.size,
        "batch_size": args.batch_size,
        "amp": True,
        "minutes_budget": args.minutes,
        "wall_s": round(seconds, 1),
        "epochs_run": len(result.history),
        "train_images_per_s_incl_validation": round(images / max(train_seconds, 1e-9), 2),
        "best_epoch": result.best_epoch,
        "stopped_because": result.stopped_because,
        "history": result.history,
        "val_metrics_of_best": json.loads((result.bundle / "model_card.json").read_text())["metrics"],
    }
    out = args.out / "gpu_train.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("history", "val_metrics_of_best")}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
