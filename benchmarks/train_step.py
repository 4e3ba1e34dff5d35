"""Training step time before and after the CPU speed-ups, in the same run, as a ratio.

    python benchmarks/train_step.py --backbone mobilenet_v3_large --size 384 --batch 4 --steps 6 \
        --out benchmarks/results/train_step.json

Each configuration trains its own from-scratch detector (same seed) with covidet's real training loop
(``engine.train_one_epoch``: forward, backward, gradient clipping, AdamW, learning-rate schedule) on
real train-split X-rays through the real data pipeline (``DetectionDataset`` with the training
augmentations, class-balanced sampler, ``DataLoader``), exactly as ``covidet train`` wires them. A step
is timed from the request of its batch to the end of the optimiser step, so data loading that is on
the critical path counts.

Configurations (``--configs``; default ``before after``):

* ``before``: the training path as it was: NCHW tensors, fp32, images decoded and resized every epoch.
* ``channels_last``: ``before`` + channels-last memory format (oneDNN's faster convolution layout).
* ``cache``: ``before`` + :class:`covidet.detection.train.CommonScaleCache` (each image decoded and
  resized to the common scale once, then augmented from memory).
* ``bf16``: ``before`` + bf16 autocast on CPU (``covidet train --amp``; CPUs with bf16 instructions).
* ``roi_align``: ``before`` + :class:`covidet.detection.roi_align.FastMultiScaleRoIAlign` (RoIAlign as
  one vectorised gather; ``before`` runs torchvision's ``MultiScaleRoIAlign``, whose CPU backward
  scatters one value at a time on one thread).
* ``after``: what ``covidet train`` does now by default (channels_last + cache + roi_align).
* ``after_bf16``: ``after`` + ``--amp``.
* ``after_compile``: ``after`` + ``torch.compile`` of the backbone and FPN (the static-shaped part;
  the RPN and RoI heads are data-dependent). Its compilations, and the recompilation when a new input
  shape arrives, fall in its warm-up block or in timed steps, as they would in a real run.

The configurations take turns in blocks of ``--block`` steps (A B A B ...), so each sees the same
machine load; the first block of each is a warm-up and is not timed. Medians; ratio = median step of
``before`` / median step of each. The load average is recorded: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.ops import MultiScaleRoIAlign

from _report import write_report  # benchmarks/ is on sys.path when a script runs
from covidet.detection.data import DetectionDataset, collate_detection, load_records
from covidet.detection.engine import train_one_epoch
from covidet.detection.export import machine_info
from covidet.detection.model import build_detector
from covidet.detection.train import BalancedSampler, CommonScaleCache, _worker_init, cpu_supports_bf16
from covidet.detection.transforms import build_train_transform
from covidet.domain import Label

REPO = Path(__file__).resolve().parents[1]
_OFF = {"channels_last": False, "cache": False, "bf16": False, "compile": False, "roi_align": False}
CONFIGS: dict[str, dict[str, bool]] = {
    "before": _OFF,
    "channels_last": _OFF | {"channels_last": True},
    "cache": _OFF | {"cache": True},
    "bf16": _OFF | {"bf16": True},
    "roi_align": _OFF | {"roi_align": True},
    "after": _OFF | {"channels_last": True, "cache": True, "roi_align": True},
    "after_bf16": _OFF | {"channels_last": True, "cache": True, "roi_align": True, "bf16": True},
    "after_compile": _OFF | {"channels_last": True, "cache": True, "roi_align": True, "compile": True},
}


def _data_root() -> Path:
    env = os.environ.get("COVIDET_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cxr"


class _Run:
    """One configuration: its model, optimiser and loader (an endless iterator over epochs)."""

    def __init__(self, name: str, options: dict[str, bool], args: argparse.Namespace) -> None:
        self.name, self.options = name, options
        torch.manual_seed(args.seed)
        records = [
            r for r in load_records(_data_root(), split="train") if len(r.boxes) or r.label is Label.NORMAL
        ]
        dataset = DetectionDataset(records, build_train_transform(size=args.size))
        if options["cache"]:
            dataset = CommonScaleCache(dataset, args.size)
        self.loader = DataLoader(
            dataset,
            batch_size=args.batch,
            sampler=BalancedSampler([r.label for r in records], seed=args.seed),
            num_workers=args.workers,
            collate_fn=collate_detection,
            worker_init_fn=_worker_init,
            persistent_workers=args.workers > 0,
        )
        self.model = build_detector(backbone=args.backbone, min_size=args.size, max_size=args.size)
        if not options["roi_align"]:  # torchvision's own pooler, as covidet used before
            self.model.roi_heads.box_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        if options["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        if options["compile"]:
            self.model.backbone = torch.compile(self.model.backbone)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=1e-4)
        self.times: list[float] = []
        self.losses: list[float] = []
        self.epoch = 0
        self._iterator: Any = None

    def block(self, steps: int, timed: bool) -> None:
        """Run ``steps`` training steps through ``train_one_epoch`` on the next batches."""
        stamps: list[float] = []
        batches = _Take(self, steps)
        began = time.perf_counter()
        train_one_epoch(
            self.model,
            self.optimizer,
            batches,
            epoch=self.epoch,
            device=torch.device("cpu"),
            amp_dtype=torch.bfloat16 if self.options["bf16"] else None,
            on_iteration=lambda _i, values: (
                stamps.append(time.perf_counter()),
                self.losses.append(values["loss"]),
            ),
            show_progress=False,
        )
        if timed:
            previous = began
            for stamp in stamps:
                self.times.append(stamp - previous)
                previous = stamp

    def next_batch(self) -> tuple[list, list]:
        while True:
            if self._iterator is None:
                self.epoch += 1
                self.loader.sampler.set_epoch(self.epoch)
                self._iterator = iter(self.loader)
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None


class _Take:
    """``steps`` batches of a run's endless loader, as an iterable for ``train_one_epoch``."""

    def __init__(self, run: _Run, steps: int) -> None:
        self.run, self.steps = run, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.run.next_batch()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    parser.add_argument("--block", type=int, default=2, help="steps per turn")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (covidet train's default)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", default=["before", "after"], choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step.json"))
    args = parser.parse_args()
    if not (_data_root() / "manifest.csv").is_file():
        sys.exit("set COVIDET_DATA to the chest X-ray dataset folder (real images are trained on)")
    if any(CONFIGS[c]["bf16"] for c in args.configs) and not cpu_supports_bf16():
        sys.exit("a bf16 configuration was asked for, but this CPU has no bf16 instructions")
    load_before = os.getloadavg()
    runs = [_Run(name, CONFIGS[name], args) for name in args.configs]
    for run in runs:  # warm-up: allocations, oneDNN kernel selection, loader workers start
        run.block(args.block, timed=False)
    while min(len(run.times) for run in runs) < args.steps:
        for run in runs:
            if len(run.times) < args.steps:
                run.block(args.block, timed=True)
        print({run.name: len(run.times) for run in runs}, flush=True)
    baseline = statistics.median(runs[0].times)
    results = {}
    for run in runs:
        median = statistics.median(run.times)
        results[run.name] = {
            **run.options,
            "median_s": median,
            "min_s": min(run.times),
            "max_s": max(run.times),
            "steps": len(run.times),
            "images_per_s": args.batch / median,
            "speedup_vs_before": baseline / median,
            "losses_finite": all(v == v and abs(v) != float("inf") for v in run.losses),
            "last_loss": run.losses[-1],
        }
        print(f"{run.name:14s} median {median:.3f} s/step  x{baseline / median:.2f}", flush=True)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "backbone": args.backbone,
        "size": args.size,
        "batch": args.batch,
        "workers": args.workers,
        "machine": machine_info() | {"torch": torch.__version__, "bf16": cpu_supports_bf16()},
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "results": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
