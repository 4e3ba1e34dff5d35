"""Training driver: data, model, optimiser, the epoch loop, validation, checkpoints, bundle.

Run one process (``covidet train``) or several with
``torchrun --standalone --nproc_per_node N -m covidet.cli train``
(DDP: NCCL on GPUs, gloo on CPU). Only rank 0 validates, writes checkpoints, the metrics log and the
bundle. A checkpoint is a dict with named keys: ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``,
``config``, ``best_metric``, ``best_epoch``, ``history``, ``stale_validations``, ``rng``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, Field
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from covidet.detection.bundle import BundleError, load_weights_into, save_bundle
from covidet.detection.data import (
    DetectionDataset,
    ImageRecord,
    add_extra_boxes,
    collate_detection,
    dataset_hash,
    load_records,
)
from covidet.detection.decision import DEFAULT_THRESHOLD, rule_name
from covidet.detection.engine import (
    evaluate_detections,
    run_inference,
    summary_metrics,
    train_one_epoch,
)
from covidet.detection.model import Backbone, Norm, build_detector
from covidet.detection.transforms import Compose, ResizeLongerSide, build_train_transform
from covidet.domain import Label

__all__ = [
    "LUNG_CLASS",
    "BalancedSampler",
    "CommonScaleCache",
    "TrainConfig",
    "TrainResult",
    "cpu_supports_bf16",
    "train",
]

logger = logging.getLogger(__name__)

# task=lungs trains every box as this one class (model id 1); the bundle's card says purpose "lungs".
LUNG_CLASS = Label.COVID19

Monitor = Literal["macro_f1", "accuracy", "macro_auc", "map50", "map", "lung_map50"]


class TrainConfig(BaseModel):
    """Every training option, with its meaning. Saved in checkpoints and in the model card."""

    data: str | None = Field(
        None, description="dataset folder (manifest.csv) or COCO JSON; None reads $COVIDET_DATA"
    )
    out: Path = Field(Path("runs/train"), description="run folder: checkpoints, metrics.csv, bundle/")
    tier: str | None = Field(None, description="'tiny' trains on the tier_tiny subset (tests)")
    train_split: str = Field("train", description="split used for training")
    val_split: str = Field("val", description="split used for validation and checkpoint selection")
    backbone: Backbone = Field(
        "resnet101", description="resnet101 (paper), resnet50, resnet18, mobilenet_v3_large"
    )
    norm: Norm = Field("batch", description="backbone normalisation: batch or group")
    size: int = Field(512, ge=64, le=2048, description="longer image side in pixels, training and inference")
    epochs: int = Field(30, ge=1, description="maximum number of epochs")
    batch_size: int = Field(4, ge=1, description="images per step per process")
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate (after warm-up; cosine decay to 0)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_iterations: int = Field(100, ge=0, description="linear learning-rate warm-up steps")
    max_iterations_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (tests)")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget; training stops after it")
    val_every: int = Field(1, ge=1, description="validate every N epochs (and after the last)")
    patience: int = Field(8, ge=1, description="early stop after N validations without improvement")
    monitor: Monitor = Field("macro_f1", description="validation metric that selects the best checkpoint")
    balance: bool = Field(True, description="class-balanced sampling by image label")
    skip_boxless_disease: bool = Field(
        True,
        description="leave covid19/pneumonia images without boxes out of training: as empty targets they "
        "would teach that a diseased image has no disease region (box-less normals stay, as negatives)",
    )
    extra_boxes: Path | None = Field(
        None,
        description="boxes CSV (e.g. from `covidet propose-boxes`) for training images that have none; "
        "human boxes are never replaced and each added box takes its image's label",
    )
    extra_boxes_min_score: float = Field(0.5, ge=0, le=1, description="ignore extra boxes scoring below")
    task: Literal["assess", "lungs"] = Field(
        "assess",
        description="assess: covid19/pneumonia/normal boxes (the system's detector); lungs: a "
        "class-agnostic lung detector trained on the images with boxes only, whose bundle "
        "`covidet propose-boxes` uses (it is not an assessment model)",
    )
    augment: bool = Field(True, description="resolution/contrast/geometry augmentation")
    augment_framing: bool = Field(
        False,
        description="with augment: also change the framing at random (pad to a square, or crop up to 10% "
        "of each edge), against aspect-ratio and border shortcuts",
    )
    image_head: bool = Field(
        False,
        description="also train an image-level classification head on the FPN features (multi-task); "
        "the decision rule (version 2) then mixes its probabilities into the box evidence",
    )
    image_loss_weight: float = Field(1.0, gt=0, description="weight of the image head's loss")
    image_head_pool: Literal["image", "boxes"] = Field(
        "image",
        description="where the image head averages the features: the whole image, or inside the boxes "
        "(ground truth in training, the detector's own at inference)",
    )
    image_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="with image_head: the image head's share of the decision evidence (0: boxes only, "
        "1: image head only); fixed before training, not tuned on val",
    )
    threshold: float = Field(
        DEFAULT_THRESHOLD, ge=0, le=1, description="decision threshold of the image rule"
    )
    seed: int = Field(0, description="seed of Python, NumPy and torch")
    workers: int = Field(1, ge=0, description="data-loading worker processes")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    amp: bool = Field(
        False,
        description="mixed precision: fp16 autocast with loss scaling on CUDA; bf16 autocast on CPUs with "
        "bf16 instructions (ignored on other CPUs)",
    )
    cache_images: bool = Field(
        True,
        description="decode and resize each training image to the common scale once (kept in memory as "
        "float16, about size^2 x 2 bytes per image) instead of every epoch; augmentations still run "
        "on every access",
    )
    init_backbone: Path | None = Field(
        None,
        description="backbone.pt from `covidet pretrain` (self-supervised): the backbone body starts from "
        "it instead of from scratch; the FPN, RPN and heads still start from scratch",
    )
    init_model: Path | None = Field(
        None,
        description="model bundle whose weights start the whole detector (fine-tuning, e.g. the shipped "
        "model on a grown data set); it must be the same network (backbone, norm, classes, image head); "
        "the optimiser, schedule and epochs start afresh",
    )
    resume: Path | None = Field(None, description="checkpoint to resume from (e.g. runs/train/last.pt)")
    name: str = Field("covidet-detector", description="model name written into the bundle")
    show_progress: bool = Field(True, description="progress bars")


@dataclass
class TrainResult:
    """What a finished run produced (rank 0 only; other ranks get ``bundle=None``)."""

    bundle: Path | None
    best_epoch: int
    best_metric: float
    history: list[dict[str, Any]]
    stopped_because: str


class BalancedSampler(Sampler[int]):
    """Draws ``num_samples`` indices per epoch with probability inversely proportional to the frequency
    of each item's class (with replacement), deterministic per (seed, epoch), sharded across ranks."""

    def __init__(self, labels: Sequence[str], *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        self.weights = torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.double)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_samples = math.ceil(len(labels) / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples * self.world_size, True, generator=generator)
        return iter(draws[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples


class CommonScaleCache(Dataset):
    """A :class:`DetectionDataset` whose deterministic first step is done once per image.

    The training pipeline decodes an X-ray file (about 20 ms) and resizes it to the common scale (about
    8 ms) before its random augmentations, every epoch. This wrapper keeps the decoded, resized image
    (float16 ``[1, H, W]``, values in ``[0, 1]``) and its target, and applies only the remaining
    transforms (``dataset.transform`` minus its leading :class:`ResizeLongerSide`) on each access.
    :meth:`fill` loads everything in the calling process, so DataLoader workers forked afterwards
    share the cache copy-on-write. Items are what ``dataset[i]`` returns, except that the pixels went
    through float16 (a rounding of at most 2^-12, far below the augmentations' noise).
    """

    def __init__(self, dataset: DetectionDataset, size: int) -> None:
        self.records = dataset.records
        self._load = DetectionDataset(dataset.records, Compose([ResizeLongerSide(size)]))
        transform = dataset.transform
        steps = transform.transforms if isinstance(transform, Compose) else [transform]
        self._augment = Compose([t for t in steps if t is not None and not isinstance(t, ResizeLongerSide)])
        self._items: list[tuple[torch.Tensor, dict[str, torch.Tensor]] | None] = [None] * len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def _cached(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        item = self._items[index]
        if item is None:
            image, target = self._load[index]
            item = self._items[index] = (image[:1].to(torch.float16).contiguous(), target)
        return item

    def fill(self) -> CommonScaleCache:
        """Load every image now; returns ``self``."""
        for index in range(len(self)):
            self._cached(index)
        return self

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self._cached(index)
        image, target = self._augment(image.float(), dict(target))
        return image.expand(3, -1, -1).contiguous(), target


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); initialises the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _architecture(config: TrainConfig) -> dict[str, Any]:
    architecture: dict[str, Any] = {
        "backbone": config.backbone,
        "norm": config.norm,
        "min_size": config.size,
        "max_size": config.size,
        "num_classes": 4,
        "anchor_aspect_ratios": [0.5, 1.0, 2.0],
    }
    if config.image_head and config.task == "assess":
        architecture |= {
            "image_head": True,
            "image_loss_weight": config.image_loss_weight,
            "image_head_pool": config.image_head_pool,
        }
    return architecture


def _decision_image_weight(config: TrainConfig) -> float:
    """The decision rule's ``image_weight``: 0 unless the model has an image head."""
    return config.image_weight if config.image_head and config.task == "assess" else 0.0


def _as_lungs(record: ImageRecord) -> ImageRecord:
    """The record with its image and every box labelled as one class (model id 1), for ``task=lungs``."""
    return replace(record, label=LUNG_CLASS, box_labels=(LUNG_CLASS,) * len(record.boxes))


def _write_metrics_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def train(config: TrainConfig) -> TrainResult:
    """Train a detector as ``config`` says; returns where the bundle went and the history.

    Raises ``covidet.detection.engine.NonFiniteLossError`` on a NaN loss and
    ``covidet.detection.data.DatasetError`` on bad data.
    """
    if config.task == "lungs" and (config.monitor != "lung_map50" or config.balance):
        # One class: class balance means nothing and the image-level metrics measure nothing.
        config = config.model_copy(update={"monitor": "lung_map50", "balance": False})
    device = _resolve_device(config.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    rank, world_size = _init_distributed(device)
    is_main = rank == 0
    _seed_everything(config.seed + rank)
    out = config.out
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    train_records = load_records(config.data, split=config.train_split, tier=config.tier, seed=config.seed)
    val_records = load_records(config.data, split=config.val_split, tier=config.tier, seed=config.seed)
    if config.extra_boxes is not None:
        before = sum(1 for r in train_records if len(r.boxes))
        train_records = add_extra_boxes(
            train_records, config.extra_boxes, min_score=config.extra_boxes_min_score
        )
        logger.info(
            "extra boxes from %s: %d -> %d training images with boxes",
            config.extra_boxes,
            before,
            sum(1 for r in train_records if len(r.boxes)),
        )
    if config.task == "lungs":
        # Every box is a lung (model class 1); images without boxes say nothing about where lungs are.
        train_records = [_as_lungs(r) for r in train_records if len(r.boxes)]
        val_records = [_as_lungs(r) for r in val_records if len(r.boxes)]
        logger.info(
            "lung detector: %d train and %d val images with boxes", len(train_records), len(val_records)
        )
    elif config.skip_boxless_disease:
        kept = [r for r in train_records if len(r.boxes) or r.label is Label.NORMAL]
        logger.info(
            "training on %d of %d images (%d box-less covid19/pneumonia images left out)",
            len(kept),
            len(train_records),
            len(train_records) - len(kept),
        )
        train_records = kept
    if config.image_head and config.image_head_pool == "boxes" and config.task == "assess":
        boxless = sum(1 for r in train_records if not len(r.boxes))
        if boxless:
            # Measured (docs/training.md): such a head learned "pooled over the whole image" = normal.
            logger.warning(
                "%d of %d training images have no boxes: the box-pooled image head averages over the "
                "whole image on them in training, but inside the detector's boxes at inference wherever "
                "it finds one, and it can learn that difference instead of the lungs; give them boxes "
                "with --extra-boxes (from `covidet propose-boxes`)",
                boxless,
                len(train_records),
            )
    common_scale = Compose([ResizeLongerSide(config.size)])
    train_set: Dataset = DetectionDataset(
        train_records,
        build_train_transform(size=config.size, framing=config.augment_framing)
        if config.augment
        else common_scale,
    )
    if config.cache_images:
        began = time.monotonic()
        train_set = CommonScaleCache(train_set, config.size).fill()
        logger.info("decoded %d training images once in %.0f s", len(train_set), time.monotonic() - began)
    # Validation sees the same antialiased common scale as training and prediction; its boxes and
    # metrics are in those resized pixels (COCO AP does not depend on the scale).
    val_set = DetectionDataset(val_records, common_scale)
    if config.balance and config.task == "assess":
        sampler: Sampler[int] = BalancedSampler(
            [r.label for r in train_records], seed=config.seed, rank=rank, world_size=world_size
        )
    elif world_size > 1:
        sampler = torch.utils.data.DistributedSampler(
            train_set, num_replicas=world_size, rank=rank, seed=config.seed
        )
    else:
        sampler = torch.utils.data.RandomSampler(
            train_set, generator=torch.Generator().manual_seed(config.seed)
        )
    loader_args: dict[str, Any] = {
        "num_workers": config.workers,
        "collate_fn": collate_detection,
        "worker_init_fn": _worker_init,
        "persistent_workers": config.workers > 0,
        "pin_memory": device.type == "cuda",
    }
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, sampler=sampler, drop_last=False, **loader_args
    )
    val_loader = DataLoader(val_set, batch_size=1, shuffle=False, **loader_args)

    architecture = _architecture(config)
    model = build_detector(
        **{**architecture, "anchor_aspect_ratios": tuple(architecture["anchor_aspect_ratios"])}
    )
    if config.init_backbone is not None and config.resume is None:
        # Imported here: covidet.detection.pretrain builds on this module (seeding, worker init).
        from covidet.detection.pretrain import load_backbone_weights

        pretrained = load_backbone_weights(
            model, config.init_backbone, backbone=config.backbone, norm=config.norm
        )
        logger.info(
            "backbone body from %s (self-supervised, %d epochs, final NT-Xent loss %.3f)",
            config.init_backbone,
            len(pretrained["history"]),
            pretrained["history"][-1]["loss"] if pretrained["history"] else math.nan,
        )
    if config.init_model is not None and config.resume is None:
        if config.init_backbone is not None:
            raise BundleError("--init-model and --init-backbone exclude each other: choose one start")
        started_from = load_weights_into(model, config.init_model, architecture)
        logger.info(
            "weights from %s (%s %s)", config.init_model, started_from["name"], started_from["version"]
        )
    if device.type == "cuda" and world_size > 1 and config.norm == "batch":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    # channels_last on CPU too: oneDNN's convolutions (forward and backward) are faster in that layout
    # (benchmarks/train_step.py: MobileNetV3 at 384 px, batch 4, 0.99 -> 0.85 s per step).
    model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    iterations_per_epoch = len(train_loader)
    if config.max_iterations_per_epoch:
        iterations_per_epoch = min(iterations_per_epoch, config.max_iterations_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(config.warmup_iterations, config.epochs * iterations_per_epoch)
    )
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None
    amp_dtype = None
    if config.amp and device.type == "cpu":
        if cpu_supports_bf16():
            amp_dtype = torch.bfloat16
        else:
            logger.warning("--amp: this CPU has no bf16 instructions; training in fp32")

    start_epoch, best_metric, best_epoch, stale, history = 1, -math.inf, 0, 0, []
    if config.resume is not None:
        checkpoint = torch.load(config.resume, map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["lr_scheduler"])
        start_epoch = checkpoint["epoch"] + 1
        best_metric, best_epoch = checkpoint["best_metric"], checkpoint["best_epoch"]
        stale, history = checkpoint["stale_validations"], checkpoint["history"]
        random.setstate(checkpoint["rng"]["python"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        logger.info("resumed from %s at epoch %d", config.resume, start_epoch)

    train_model: torch.nn.Module = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if world_size > 1
        else model
    )
    if is_main:
        (out / "config.json").write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else None
    stopped_because = "max epochs"
    data_hash = dataset_hash(train_records) if is_main else ""

    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        started = time.monotonic()
        losses = train_one_epoch(
            train_model,
            optimizer,
            train_loader,
            epoch=epoch,
            device=device,
            scheduler=scheduler,
            max_iterations=config.max_iterations_per_epoch,
            scaler=scaler,
            amp_dtype=amp_dtype,
            deadline=deadline,
            show_progress=config.show_progress and is_main,
        )
        out_of_time = deadline is not None and time.monotonic() > deadline
        validate = epoch % config.val_every == 0 or epoch == config.epochs or out_of_time
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in losses.items()},
        }
        stop = torch.zeros(1, device=device)  # NCCL broadcasts CUDA tensors only
        if is_main:
            if validate:
                predictions, ground_truth, labels, _ = run_inference(
                    model, val_loader, device=device, show_progress=config.show_progress, desc="validate"
                )
                result = evaluate_detections(
                    predictions,
                    ground_truth,
                    labels,
                    threshold=config.threshold,
                    image_weight=_decision_image_weight(config),
                )
                summary = summary_metrics(result.report)
                row |= {f"val_{k}": v for k, v in summary.items()}
                value = summary[config.monitor]
                improved = not math.isnan(value) and value > best_metric
                if improved:
                    best_metric, best_epoch, stale = value, epoch, 0
                    torch.save(
                        {
                            "model": model.state_dict(),
                            "epoch": epoch,
                            "config": config.model_dump(mode="json"),
                            "report": result.report,
                        },
                        out / "best.pt",
                    )
                else:
                    stale += 1
                logger.info(
                    "epoch %d: loss %.4f val %s %.4f (best %.4f at epoch %d)",
                    epoch,
                    losses.get("loss", float("nan")),
                    config.monitor,
                    value,
                    best_metric,
                    best_epoch,
                )
                if stale >= config.patience:
                    stopped_because = f"early stop: no {config.monitor} gain in {config.patience} validations"
                    stop[0] = 1
            row["seconds"] = round(time.monotonic() - started, 1)
            history.append(row)
            _write_metrics_row(out / "metrics.csv", row)
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "config": config.model_dump(mode="json"),
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "stale_validations": stale,
                    "history": history,
                    "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
                },
                out / "last.pt",
            )
        if out_of_time:
            stopped_because = f"time budget of {config.max_minutes} min reached"
            stop[0] = 1
        if world_size > 1:
            dist.broadcast(stop, src=0)
        if stop.item():
            break

    bundle = None
    if is_main:
        bundle = _write_final_bundle(
            config, model, architecture, data_hash, len(train_records), epoch, stopped_because
        )
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(
        bundle=bundle,
        best_epoch=best_epoch,
        best_metric=best_metric,
        history=history,
        stopped_because=stopped_because,
    )


def _write_final_bundle(
    config: TrainConfig,
    model: torch.nn.Module,
    architecture: dict[str, Any],
    data_hash: str,
    n_train: int,
    last_epoch: int,
    stopped_because: str,
) -> Path:
    """Bundle the best validated checkpoint (or the last weights when none was validated)."""
    best_path = config.out / "best.pt"
    report: dict[str, Any] = {}
    best_epoch = last_epoch
    if best_path.exists():
        best = torch.load(best_path, map_location="cpu", weights_only=False)
        model.load_state_dict(best["model"])
        report, best_epoch = best["report"], best["epoch"]
    model.to("cpu")
    return save_bundle(
        model,
        config.out / "bundle",
        architecture=architecture,
        decision={
            "rule": rule_name(_decision_image_weight(config)),
            "threshold": config.threshold,
            "image_weight": _decision_image_weight(config),
            "description": "see covidet.detection.decision",
        },
        training={
            "data_hash_sha256": data_hash,
            "n_train_images": n_train,
            "split": config.train_split,
            "tier": config.tier,
            "epochs_run": last_epoch,
            "selected_epoch": best_epoch,
            "selected_by": f"{config.val_split} {config.monitor}",
            "stopped_because": stopped_because,
            "config": json.loads(config.model_dump_json()),
        },
        metrics={config.val_split: report} if report else {},
        name=config.name,
        purpose=config.task,
    )
