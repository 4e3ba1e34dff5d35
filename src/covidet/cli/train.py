"""Commands that make a model: ``covidet train``, ``pretrain`` (self-supervised backbone) and
``propose-boxes`` (lung boxes for box-less training images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from covidet.cli._common import DataOption, TierOption, fail, options_model, setup

__all__ = ["pretrain", "propose_boxes", "train"]


def train(
    data: DataOption = None,
    out: Annotated[Path, typer.Option(help="run folder: checkpoints, metrics.csv, bundle/")] = Path(
        "runs/train"
    ),
    tier: TierOption = None,
    train_split: Annotated[str, typer.Option(help="split to train on")] = "train",
    val_split: Annotated[str, typer.Option(help="split that validates and selects checkpoints")] = "val",
    backbone: Annotated[
        str, typer.Option(help="resnet101 | resnet50 | resnet18 | mobilenet_v3_large")
    ] = "resnet101",
    norm: Annotated[str, typer.Option(help="batch | group")] = "batch",
    size: Annotated[int, typer.Option(help="longer image side in pixels")] = 512,
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 30,
    batch_size: Annotated[int, typer.Option(help="images per step (per process)")] = 4,
    lr: Annotated[float, typer.Option(help="peak AdamW learning rate")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay")] = 1e-4,
    warmup: Annotated[int, typer.Option(help="warm-up iterations")] = 100,
    max_iterations: Annotated[int | None, typer.Option(help="cap on iterations per epoch")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="wall-clock budget in minutes")] = None,
    val_every: Annotated[int, typer.Option(help="validate every N epochs")] = 1,
    patience: Annotated[int, typer.Option(help="early stop after N validations without gain")] = 8,
    monitor: Annotated[
        str, typer.Option(help="macro_f1 | accuracy | macro_auc | map50 | map | lung_map50")
    ] = "macro_f1",
    balance: Annotated[bool, typer.Option(help="class-balanced sampling")] = True,
    skip_boxless_disease: Annotated[
        bool, typer.Option(help="leave box-less covid19/pneumonia images out of training")
    ] = True,
    augment: Annotated[bool, typer.Option(help="augmentation against resolution/contrast shortcuts")] = True,
    augment_framing: Annotated[
        bool, typer.Option(help="also pad to a square or crop up to 10% of each edge at random (framing)")
    ] = False,
    image_head: Annotated[
        bool, typer.Option(help="also train an image-level head beside the box head (decision rule v2)")
    ] = False,
    image_loss_weight: Annotated[float, typer.Option(help="weight of the image head's loss")] = 1.0,
    image_head_pool: Annotated[
        str,
        typer.Option(
            help="image head averages over: image | boxes (ground truth / detected; give box-less "
            "training images boxes with --extra-boxes)"
        ),
    ] = "image",
    image_weight: Annotated[
        float, typer.Option(help="with --image-head: the image head's share of the decision evidence")
    ] = 0.5,
    extra_boxes: Annotated[
        Path | None,
        typer.Option(help="boxes CSV for box-less training images (from `covidet propose-boxes`)"),
    ] = None,
    extra_boxes_min_score: Annotated[float, typer.Option(help="ignore extra boxes scoring below")] = 0.5,
    task: Annotated[
        str,
        typer.Option(help="assess (the detector) | lungs (class-agnostic lung detector for propose-boxes)"),
    ] = "assess",
    threshold: Annotated[float, typer.Option(help="disease-score threshold of the decision rule")] = 0.5,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    workers: Annotated[int, typer.Option(help="data-loading processes")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    amp: Annotated[
        bool, typer.Option(help="mixed precision: fp16 on CUDA, bf16 on CPUs with bf16 instructions")
    ] = False,
    init_backbone: Annotated[
        Path | None,
        typer.Option(help="start the backbone from `covidet pretrain`'s backbone.pt (self-supervised)"),
    ] = None,
    init_model: Annotated[
        Path | None,
        typer.Option(help="fine-tune: start the whole detector from this bundle's weights (same network)"),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="checkpoint to resume (e.g. runs/train/last.pt)")
    ] = None,
    name: Annotated[str, typer.Option(help="model name in the bundle")] = "covidet-detector",
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Train the Faster R-CNN detector; writes checkpoints, metrics.csv and a model bundle under OUT."""
    settings = setup(threads=threads)
    from covidet.detection.bundle import BundleError
    from covidet.detection.data import DatasetError
    from covidet.detection.engine import NonFiniteLossError
    from covidet.detection.pretrain import BackboneFileError
    from covidet.detection.train import TrainConfig
    from covidet.detection.train import train as run_training

    config = options_model(
        TrainConfig,
        data=str(data or settings.data) if (data or settings.data) else None,
        out=out,
        tier=tier,
        train_split=train_split,
        val_split=val_split,
        backbone=backbone,
        norm=norm,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_iterations=warmup,
        max_iterations_per_epoch=max_iterations,
        max_minutes=max_minutes,
        val_every=val_every,
        patience=patience,
        monitor=monitor,
        balance=balance,
        skip_boxless_disease=skip_boxless_disease,
        augment=augment,
        augment_framing=augment_framing,
        image_head=image_head,
        image_loss_weight=image_loss_weight,
        image_head_pool=image_head_pool,
        image_weight=image_weight,
        extra_boxes=extra_boxes,
        extra_boxes_min_score=extra_boxes_min_score,
        task=task,
        threshold=threshold,
        seed=seed,
        workers=workers,
        device=device,
        amp=amp,
        init_backbone=init_backbone,
        init_model=init_model,
        resume=resume,
        name=name,
        show_progress=progress,
    )
    try:
        result = run_training(config)
    except (DatasetError, NonFiniteLossError, FileNotFoundError, BackboneFileError, BundleError) as error:
        raise fail(str(error)) from None
    if result.bundle is not None:
        typer.echo(
            json.dumps(
                {
                    "bundle": str(result.bundle),
                    "best_epoch": result.best_epoch,
                    "best_"
                    + ("lung_map50" if config.task == "lungs" else config.monitor): result.best_metric,
                    "stopped_because": result.stopped_because,
                }
            )
        )


def pretrain(
    data: DataOption = None,
    out: Annotated[Path, typer.Option(help="run folder: backbone.pt, metrics.csv")] = Path("runs/pretrain"),
    tier: TierOption = None,
    split: Annotated[str, typer.Option(help="split whose images (not labels) are used")] = "train",
    backbone: Annotated[
        str, typer.Option(help="resnet101 | resnet50 | resnet18 | mobilenet_v3_large")
    ] = "mobilenet_v3_large",
    norm: Annotated[str, typer.Option(help="batch | group")] = "batch",
    size: Annotated[int, typer.Option(help="side of the square views, pixels")] = 224,
    cache_size: Annotated[int, typer.Option(help="longer side images are decoded to, before cropping")] = 320,
    epochs: Annotated[int, typer.Option(help="epochs over the images")] = 100,
    batch_size: Annotated[int, typer.Option(help="images per step (two views each)")] = 64,
    lr: Annotated[float, typer.Option(help="peak AdamW learning rate")] = 2e-3,
    temperature: Annotated[float, typer.Option(help="NT-Xent temperature")] = 0.2,
    max_minutes: Annotated[float | None, typer.Option(help="wall-clock budget in minutes")] = None,
    max_iterations: Annotated[int | None, typer.Option(help="cap on steps per epoch")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    workers: Annotated[int, typer.Option(help="data-loading processes")] = 1,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Self-supervised (SimCLR) pretraining of the backbone on the images of SPLIT; writes OUT/backbone.pt
    for `covidet train --init-backbone`. Labels are not read."""
    settings = setup(threads=threads)
    from covidet.detection.data import DatasetError
    from covidet.detection.pretrain import PretrainConfig
    from covidet.detection.pretrain import pretrain as run_pretraining

    config = options_model(
        PretrainConfig,
        data=str(data or settings.data) if (data or settings.data) else None,
        out=out,
        tier=tier,
        split=split,
        backbone=backbone,
        norm=norm,
        size=size,
        cache_size=cache_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        temperature=temperature,
        max_minutes=max_minutes,
        max_iterations_per_epoch=max_iterations,
        seed=seed,
        workers=workers,
        show_progress=progress,
    )
    try:
        result = run_pretraining(config)
    except (DatasetError, FloatingPointError) as error:
        raise fail(str(error)) from None
    typer.echo(
        json.dumps(
            {
                "weights": str(result.weights),
                "epochs": result.epochs,
                "final_loss": result.final_loss,
                "final_pair_accuracy": result.final_pair_accuracy,
                "stopped_because": result.stopped_because,
            }
        )
    )


def propose_boxes(
    model: Annotated[
        Path, typer.Option("--model", help="a lung-detector bundle (`covidet train --task lungs`)")
    ],
    out: Annotated[Path, typer.Option(help="boxes CSV to write (for `covidet train --extra-boxes`)")],
    data: DataOption = None,
    split: Annotated[str, typer.Option(help="split whose box-less images get boxes")] = "train",
    min_score: Annotated[float, typer.Option(min=0, max=1, help="lowest score of a proposed box")] = 0.5,
    check_split: Annotated[
        str | None,
        typer.Option(help="split whose human boxes check the proposals (not trained on); '' skips"),
    ] = "val",
    sheet: Annotated[Path | None, typer.Option(help="PNG contact sheet of the proposals")] = None,
    tier: TierOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Propose lung boxes for the images of SPLIT that have only an image label; prints a JSON summary.

    Each box takes its image's label and is marked box_source=model_proposed with its score; human
    boxes are never touched. The check runs the same proposals on images with human boxes (val).
    """
    settings = setup()
    from covidet.detection.bundle import BundleError, load_bundle
    from covidet.detection.data import DatasetError, load_records
    from covidet.detection.pseudo_boxes import (
        check_proposals,
        contact_sheet,
        proposal_counts,
        propose_lung_boxes,
        write_boxes_csv,
    )

    try:
        network, card = load_bundle(model)
        if card.get("purpose") != "lungs":
            raise fail(f"{model} is not a lung detector (train one with `covidet train --task lungs`)")
        size = int(card["architecture"]["max_size"])
        records = load_records(data or settings.data, split=split, tier=tier)
        boxless = [r for r in records if not len(r.boxes)]
        proposals = propose_lung_boxes(
            network, boxless, size=size, min_score=min_score, show_progress=progress
        )
        write_boxes_csv(proposals, out)
        check = None
        if check_split:
            check = check_proposals(
                network,
                load_records(data or settings.data, split=check_split, tier=tier),
                size=size,
                min_score=min_score,
                show_progress=progress,
            )
        if sheet is not None:
            contact_sheet(boxless, proposals, sheet)
    except (DatasetError, BundleError) as error:
        raise fail(str(error)) from None
    summary = {
        "model": {"name": card.get("name"), "version": card.get("version"), "bundle": str(model)},
        "split": split,
        "images": len(records),
        "images_without_boxes": len(boxless),
        "boxes_proposed": len(proposals),
        "per_label": proposal_counts(boxless, proposals),
        "check": {"split": check_split, **check} if check else None,
        "out": str(out),
        "sheet": str(sheet) if sheet else None,
    }
    typer.echo(json.dumps(summary, indent=2))
