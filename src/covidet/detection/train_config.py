"""The options of ``covidet train`` (:class:`TrainConfig`, saved in checkpoints and the model card)
and what a run returns (:class:`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from pydantic import BaseModel, Field

from covidet.detection.decision import DEFAULT_THRESHOLD
from covidet.detection.model import Backbone, Norm

__all__ = ["MetricsRow", "Monitor", "TrainConfig", "TrainResult"]

Monitor = Literal["macro_f1", "accuracy", "macro_auc", "map50", "map", "lung_map50"]
#: One epoch of ``metrics.csv`` and of the history: ``epoch``, ``lr``, ``train_*`` losses, ``val_*``
#: metrics (NaN where undefined) on validated epochs, ``seconds``.
MetricsRow: TypeAlias = dict[str, float]


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
    history: list[MetricsRow]
    stopped_because: str
