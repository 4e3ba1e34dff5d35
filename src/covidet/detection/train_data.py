"""The data side of training: which records are trained on (task, extra boxes, box-less images),
class-balanced sampling, the common-scale image cache, and the DataLoaders."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from covidet.detection._seeding import worker_init
from covidet.detection.data import (
    DetectionDataset,
    ImageRecord,
    add_extra_boxes,
    collate_detection,
    load_records,
)
from covidet.detection.train_config import TrainConfig
from covidet.detection.transforms import Compose, ResizeLongerSide, build_train_transform
from covidet.domain import Label

__all__ = [
    "LUNG_CLASS",
    "BalancedSampler",
    "CommonScaleCache",
    "as_lungs",
    "build_loaders",
    "training_records",
]

# Records of the run go to the driver's logger, as they did before training was split into modules.
logger = logging.getLogger("covidet.detection.train")

# task=lungs trains every box as this one class (model id 1); the bundle's card says purpose "lungs".
LUNG_CLASS = Label.COVID19


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


def as_lungs(record: ImageRecord) -> ImageRecord:
    """The record with its image and every box labelled as one class (model id 1), for ``task=lungs``."""
    return replace(record, label=LUNG_CLASS, box_labels=(LUNG_CLASS,) * len(record.boxes))


def training_records(config: TrainConfig) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The (train, val) records of ``config``: split, extra boxes added, and for ``task=lungs`` only the
    images with boxes, as one class; with ``skip_boxless_disease`` the box-less diseased images left
    out of training. Logs what was left out and why."""
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
        train_records = [as_lungs(r) for r in train_records if len(r.boxes)]
        val_records = [as_lungs(r) for r in val_records if len(r.boxes)]
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
    return train_records, val_records


def build_loaders(
    config: TrainConfig,
    train_records: Sequence[ImageRecord],
    val_records: Sequence[ImageRecord],
    *,
    rank: int,
    world_size: int,
    device: torch.device,
) -> tuple[Sampler[int], DataLoader, DataLoader]:
    """The training sampler (class-balanced, distributed or seeded random) and the train and val
    DataLoaders; training images are decoded to the common scale once when ``config.cache_images``."""
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
    # The options both loaders share.
    loader = partial(
        DataLoader,
        num_workers=config.workers,
        collate_fn=collate_detection,
        worker_init_fn=worker_init,
        persistent_workers=config.workers > 0,
        pin_memory=device.type == "cuda",
    )
    train_loader = loader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=False)
    val_loader = loader(val_set, batch_size=1, shuffle=False)
    return sampler, train_loader, val_loader
