"""Self-supervised pretraining of the detector's backbone on the training images (SimCLR).

No pretrained weights can be downloaded here, and only about 600 labelled chest X-rays exist, so the
backbone otherwise learns its features from the detection labels alone. SimCLR (Chen et al., 2020)
learns them from the images themselves: two random views of each X-ray (crop, flip, small rotation,
resolution and contrast randomisation: the same degradations the detector trains against) are pulled
together and pushed away from the other images of the batch by the NT-Xent loss. No label is read.

``covidet pretrain`` writes ``backbone.pt``; ``covidet train --init-backbone backbone.pt`` starts the
detector's backbone body from it (the FPN, RPN and heads start from scratch as before).

``backbone.pt`` is a dict: ``format`` (``covidet-backbone/1``), ``backbone`` and ``norm`` (as in
:func:`~covidet.detection.model.build_detector`), ``state_dict`` (of ``model.backbone.body``),
``config`` (the :class:`PretrainConfig`) and ``history`` (per-epoch loss and pair accuracy).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from covidet.detection._seeding import seed_everything, worker_init
from covidet.detection.data import DatasetError, DetectionDataset, load_records
from covidet.detection.model import Backbone, Norm, build_detector
from covidet.detection.transforms import Compose, RandomContrast, RandomResolution, ResizeLongerSide

__all__ = [
    "BACKBONE_FORMAT",
    "BackboneFileError",
    "BackboneFileMeta",
    "ContrastiveViews",
    "PretrainConfig",
    "PretrainResult",
    "SimCLR",
    "load_backbone_weights",
    "nt_xent",
    "pretrain",
]

logger = logging.getLogger(__name__)

BACKBONE_FORMAT = "covidet-backbone/1"


class BackboneFileError(ValueError):
    """A ``--init-backbone`` file that cannot be used (not a covidet backbone, or another architecture)."""


class PretrainConfig(BaseModel):
    """Every pretraining option, with its meaning. Saved in ``backbone.pt``."""

    data: str | None = Field(None, description="dataset folder (manifest.csv); None reads $COVIDET_DATA")
    out: Path = Field(Path("runs/pretrain"), description="run folder: backbone.pt, metrics.csv")
    tier: str | None = Field(None, description="'tiny' uses the tier_tiny subset (tests)")
    split: str = Field("train", description="split whose images (never their labels) are used")
    backbone: Backbone = Field("mobilenet_v3_large", description="as in `covidet train --backbone`")
    norm: Norm = Field("batch", description="as in `covidet train --norm`")
    size: int = Field(224, ge=32, le=1024, description="side of the square views, pixels")
    cache_size: int = Field(
        320, ge=32, le=2048, description="longer side each image is decoded to once, before the crops"
    )
    min_crop: float = Field(0.35, gt=0, le=1, description="smallest crop, as a fraction of the image area")
    epochs: int = Field(100, ge=1, description="epochs over the images")
    batch_size: int = Field(64, ge=2, description="images per step (2 views each; the others are negatives)")
    lr: float = Field(2e-3, gt=0, description="peak AdamW learning rate (warm-up, then cosine decay to 0)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(5, ge=0, description="linear warm-up, in epochs")
    temperature: float = Field(0.2, gt=0, description="NT-Xent temperature")
    projection_dim: int = Field(128, ge=8, description="output size of the projection head")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget; stops after the epoch")
    max_iterations_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (tests)")
    seed: int = Field(0, description="seed of Python, NumPy and torch")
    workers: int = Field(1, ge=0, description="data-loading worker processes")
    show_progress: bool = Field(True, description="progress bar per epoch")


class BackboneFileMeta(TypedDict):
    """What ``backbone.pt`` holds besides the ``state_dict`` (:func:`load_backbone_weights` returns it):
    its format tag, the backbone and norm it was pretrained for, the run's options and per-epoch
    history (``epoch``, ``loss``, ``pair_accuracy``, ``lr``, ``seconds``)."""

    format: str
    backbone: str
    norm: str
    config: dict[str, object]
    history: list[dict[str, float]]


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` produced: the weights file, epochs run, last epoch's loss and pair accuracy."""

    weights: Path
    epochs: int
    final_loss: float
    final_pair_accuracy: float
    stopped_because: str


class ContrastiveViews(Dataset):
    """Two independently augmented views of each image: item ``i`` is ``(view_a, view_b)``, each float32
    ``[3, size, size]`` in ``[0, 1]`` (grayscale replicated). Images are decoded and resized (longer
    side ``cache_size``) once and kept as float16; labels and boxes are never read."""

    def __init__(self, dataset: DetectionDataset, *, size: int, cache_size: int, min_crop: float) -> None:
        load = DetectionDataset(dataset.records, Compose([ResizeLongerSide(cache_size)]))
        self._images = [
            load[index][0][:1].to(torch.float16).contiguous()
            for index in tqdm(range(len(load)), desc="decode", leave=False, disable=None)
        ]
        self._crop = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(min_crop, 1.0), ratio=(0.75, 1.333), antialias=True),
                v2.RandomHorizontalFlip(p=0.5),
                v2.RandomAffine(degrees=10.0),
            ]
        )
        # Down-sampling to as little as 40% of the view and contrast randomisation: the features must
        # not tell images apart by sharpness or grey levels, the shortcuts the data README warns of.
        self._degrade = Compose(
            [RandomResolution(min_side=max(16, int(0.4 * size)), p=0.5), RandomContrast(equalize_p=0.3)]
        )

    def __len__(self) -> int:
        return len(self._images)

    def _view(self, image: torch.Tensor) -> torch.Tensor:
        view = self._crop(image.float())
        view, _ = self._degrade(view, {})
        return view.expand(3, -1, -1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._images[index]
        return self._view(image), self._view(image)


class SimCLR(nn.Module):
    """The detector's backbone body with a projection head.

    ``forward(images)`` takes float ``[B, 3, H, W]`` already normalised and returns L2-normalised
    embeddings ``[B, projection_dim]``: the body's last feature map, averaged over space, through a
    two-layer MLP. Only ``body`` is kept after pretraining.
    """

    def __init__(self, *, backbone: Backbone, norm: Norm, projection_dim: int = 128) -> None:
        super().__init__()
        detector = build_detector(backbone=backbone, norm=norm)
        self.body = detector.backbone.body
        self.image_mean = torch.tensor(detector.transform.image_mean).view(1, -1, 1, 1)
        self.image_std = torch.tensor(detector.transform.image_std).view(1, -1, 1, 1)
        self.body.eval()  # the probe below must not move BatchNorm's running statistics
        with torch.no_grad():
            channels = list(self.body(torch.zeros(1, 3, 64, 64)).values())[-1].shape[1]
        self.body.train()
        self.projection = nn.Sequential(
            nn.Linear(channels, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, projection_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        normalised = (images - self.image_mean.to(images)) / self.image_std.to(images)
        features = list(self.body(normalised).values())[-1]
        return F.normalize(self.projection(features.mean(dim=(2, 3))), dim=1)


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent loss for L2-normalised embeddings ``z_a``, ``z_b`` ``[B, D]`` (row ``i`` of each
    is a view of image ``i``). Returns ``(loss, pair_accuracy)``: the mean cross-entropy of picking each
    view's partner among the other ``2B - 1`` views, and the fraction of views whose nearest other view
    is their partner (chance: ``1 / (2B - 1)``)."""
    batch = z_a.shape[0]
    z = torch.cat([z_a, z_b])
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    loss = F.cross_entropy(similarity, partner)
    accuracy = (similarity.argmax(dim=1) == partner).float().mean()
    return loss, accuracy


def load_backbone_weights(model: nn.Module, path: Path, *, backbone: str, norm: str) -> BackboneFileMeta:
    """Load ``backbone.pt`` (from :func:`pretrain`) into ``model.backbone.body``.

    Raises :class:`BackboneFileError` (a message for the user) when the file is not a covidet backbone
    file or was pretrained for another backbone or norm, ``FileNotFoundError`` when it is missing. Returns the
    file's metadata (everything except ``state_dict``)."""
    if not path.is_file():
        raise FileNotFoundError(f"--init-backbone: {path} does not exist (make it with `covidet pretrain`)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # any unreadable file gets the same clear message
        raise BackboneFileError(f"--init-backbone: {path} is not a readable torch file ({error})") from None
    if not isinstance(saved, dict) or saved.get("format") != BACKBONE_FORMAT:
        raise BackboneFileError(f"--init-backbone: {path} is not a covidet backbone file ({BACKBONE_FORMAT})")
    if (saved["backbone"], saved["norm"]) != (backbone, norm):
        raise BackboneFileError(
            f"--init-backbone: {path} holds a {saved['backbone']} ({saved['norm']} norm) backbone, "
            f"but this model is {backbone} ({norm} norm)"
        )
    model.backbone.body.load_state_dict(saved["state_dict"])
    return cast(BackboneFileMeta, {key: value for key, value in saved.items() if key != "state_dict"})


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Run SimCLR on the images of ``config.split`` and write ``config.out / "backbone.pt"`` (and
    ``metrics.csv``: epoch, loss, pair_accuracy, lr, seconds). CPU only: this is the small-data,
    no-GPU path; the backbone is small enough (MobileNetV3) for a few hundred epochs in an hour."""
    seed_everything(config.seed)
    records = load_records(config.data, split=config.split, tier=config.tier, seed=config.seed)
    if len(records) < 2:
        raise DatasetError(
            f"pretraining needs at least 2 images in split {config.split!r}, found {len(records)}"
        )
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    views = ContrastiveViews(
        DetectionDataset(records), size=config.size, cache_size=config.cache_size, min_crop=config.min_crop
    )
    logger.info(
        "pretraining on %d images (labels unused), decoded in %.0f s", len(views), time.monotonic() - began
    )
    loader = DataLoader(
        views,
        batch_size=min(config.batch_size, len(views)),
        shuffle=True,
        drop_last=True,  # NT-Xent needs full batches: a batch of 1 has no negatives
        num_workers=config.workers,
        worker_init_fn=worker_init,
        persistent_workers=config.workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    model = SimCLR(backbone=config.backbone, norm=config.norm, projection_dim=config.projection_dim)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(loader)
    if config.max_iterations_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_iterations_per_epoch)
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    metrics_path = out / "metrics.csv"
    metrics_path.unlink(missing_ok=True)
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else None
    history: list[dict[str, float]] = []
    stopped_because = "max epochs"
    model.train()
    for epoch in range(1, config.epochs + 1):
        started = time.monotonic()
        losses, accuracies = [], []
        bar = tqdm(
            loader,
            total=steps_per_epoch,
            desc=f"pretrain {epoch}/{config.epochs}",
            disable=not config.show_progress,
        )
        for step, (view_a, view_b) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            images = torch.cat([view_a, view_b]).contiguous(memory_format=torch.channels_last)
            z_a, z_b = model(images).chunk(2)
            loss, accuracy = nt_xent(z_a, z_b, config.temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretraining loss is {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            accuracies.append(accuracy.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", pair_acc=f"{accuracy.item():.2f}")
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "pair_accuracy": float(np.mean(accuracies)),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.monotonic() - started,
        }
        history.append(row)
        with metrics_path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if epoch == 1:
                writer.writeheader()
            writer.writerow(row)
        logger.info(
            "pretrain epoch %d: loss %.4f, pair accuracy %.3f, %.0f s",
            epoch,
            row["loss"],
            row["pair_accuracy"],
            row["seconds"],
        )
        if deadline is not None and time.monotonic() > deadline:
            stopped_because = "max minutes"
            break
    weights = out / "backbone.pt"
    torch.save(
        {
            "format": BACKBONE_FORMAT,
            "backbone": config.backbone,
            "norm": config.norm,
            "state_dict": model.body.state_dict(),
            "config": config.model_dump(mode="json"),
            "history": history,
        },
        weights,
    )
    return PretrainResult(
        weights=weights,
        epochs=len(history),
        final_loss=history[-1]["loss"],
        final_pair_accuracy=history[-1]["pair_accuracy"],
        stopped_because=stopped_because,
    )
