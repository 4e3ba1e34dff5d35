"""The ``covidet`` command (Typer).

Exit codes: 0 success; 1 some input could not be processed (e.g. one unreadable image); 2 bad usage,
bad data or bad model bundle (one-line message on standard error, no traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from tqdm import tqdm

from covidet import DISCLAIMER, __version__
from covidet.config import get_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="covidet",
    help=f"Early assessment of Covid-19 from chest X-rays ({DISCLAIMER}).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
logger = logging.getLogger("covidet")


def _setup(log_level: str | None = None, threads: int | None = None) -> Any:
    settings = get_settings(log_level=log_level, threads=threads)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Migrations run at every start; their step-by-step INFO lines are noise for users.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    return settings


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


T = TypeVar("T")


def _options_model(model: type[T], **options: Any) -> T:
    """``model(**options)`` (a pydantic config), or exit with the first invalid option as a one-line error."""
    from pydantic import ValidationError

    try:
        return model(**options)
    except ValidationError as error:
        first = error.errors()[0]
        raise _fail(f"--{'-'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _bundle_path(model: Path | None, settings: Any) -> Path:
    """The bundle to use: ``--model``, else ``COVIDET_MODEL``, else the shipped one."""
    from covidet.detection.bundle import default_bundle_path

    bundle = model or settings.model or default_bundle_path()
    if bundle is None:
        raise _fail("no model bundle: pass --model BUNDLE or set COVIDET_MODEL")
    return Path(bundle)


DataOption = Annotated[
    Path | None, typer.Option("--data", help="dataset folder or COCO JSON [env COVIDET_DATA]")
]
ModelOption = Annotated[
    Path | None,
    typer.Option("--model", help="model bundle folder [env COVIDET_MODEL; default: the shipped bundle]"),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda or cuda:N [env COVIDET_DEVICE]")
]
TierOption = Annotated[str | None, typer.Option("--tier", help="'tiny' uses the tier_tiny subset")]


@app.command()
def version() -> None:
    """Print covidet's version."""
    typer.echo(__version__)


@app.command()
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
    settings = _setup(threads=threads)
    from covidet.detection.bundle import BundleError
    from covidet.detection.data import DatasetError
    from covidet.detection.engine import NonFiniteLossError
    from covidet.detection.pretrain import BackboneFileError
    from covidet.detection.train import TrainConfig
    from covidet.detection.train import train as run_training

    config = _options_model(
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
        raise _fail(str(error)) from None
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


@app.command()
def evaluate(
    model: ModelOption = None,
    data: DataOption = None,
    split: Annotated[str, typer.Option(help="split to evaluate: val (default), train, test")] = "val",
    tier: TierOption = None,
    out: Annotated[Path | None, typer.Option(help="folder for report.json and PNG plots")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="override the model card's decision threshold")
    ] = None,
    device: DeviceOption = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    stability_side: Annotated[
        int, typer.Option(help="also re-run with images down-sampled to this many px and back (0: skip)")
    ] = 224,
    shape_probes: Annotated[
        bool,
        typer.Option(help="also re-run with images padded to a square and with 8% of each edge cropped"),
    ] = True,
    baseline_split: Annotated[
        str,
        typer.Option(
            help="split on which the width/height/aspect baseline is fitted before it is scored on SPLIT "
            "('' skips it)"
        ),
    ] = "train",
    saliency: Annotated[
        bool,
        typer.Option(
            help="also measure how much of each disease finding's Grad-CAM lies on the annotated lungs "
            "(a few seconds per finding)"
        ),
    ] = False,
    write_card: Annotated[
        bool,
        typer.Option(help="record the report in the model card under metrics.SPLIT (what the card shows)"),
    ] = False,
) -> None:
    """Evaluate a model bundle: COCO box metrics, image-level clinical metrics and the shortcut guards
    (per source, version-1 rows, within-source, stability probes, geometry baseline); prints JSON, and a
    summary of the shortcut guards on standard error."""
    settings = _setup()
    from covidet.detection.bundle import BundleError, read_model_card, write_model_card
    from covidet.detection.data import DatasetError
    from covidet.detection.evaluate import evaluate_bundle
    from covidet.detection.shortcuts import format_shortcut_guards

    bundle = _bundle_path(model, settings)
    try:
        report = evaluate_bundle(
            bundle,
            data=data or settings.data,
            split=split,
            tier=tier,
            out_dir=out,
            threshold=threshold,
            device=device or settings.device,
            show_progress=progress,
            stability_side=stability_side or None,
            shape_probes=shape_probes,
            baseline_split=baseline_split or None,
            saliency=saliency,
        )
    except (DatasetError, BundleError) as error:
        raise _fail(str(error)) from None
    typer.echo(format_shortcut_guards(report), err=True)
    if write_card:
        card = read_model_card(bundle)
        card.setdefault("metrics", {})[split] = report
        write_model_card(bundle, card)
    typer.echo(json.dumps(report, indent=2))


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="DICOM, PNG or JPEG files")],
    model: ModelOption = None,
    draw: Annotated[
        Path | None, typer.Option(help="write PNGs with the boxes drawn into this folder")
    ] = None,
    saliency: Annotated[
        bool,
        typer.Option(
            help="with --draw, also write a Grad-CAM map of each finding "
            "(NNNN_<file>_gradcam<K>.png; runs the torch backend)"
        ),
    ] = False,
    min_score: Annotated[float, typer.Option(help="report findings scoring at least this")] = 0.3,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 4,
    device: DeviceOption = None,
) -> None:
    """Assess X-ray files; prints one JSON list with a record per file, in order."""
    settings = _setup()
    from covidet.detection.bundle import BundleError
    from covidet.detection.predictor import Predictor, draw_prediction, draw_saliency
    from covidet.imaging import ImageReadError, read_image

    if saliency and draw is None:
        raise _fail("--saliency needs --draw FOLDER (the maps are written there)")
    try:
        predictor = Predictor.from_bundle(
            model or settings.model,
            device=device or settings.device,
            min_score=min_score,
            # Grad-CAM needs gradients, which only torch gives; parity makes the findings the same.
            backend="torch" if saliency else None,
        )
    except BundleError as error:
        raise _fail(str(error)) from None
    records: list[dict[str, Any]] = [{"file": str(f)} for f in files]
    failures = 0
    # Files are read and assessed in chunks so that memory stays bounded however many are given
    # (a decoded 16-bit radiograph takes ~16 MB as float32); the bar shows on a terminal only.
    chunk_size = max(1, batch_size) * 4
    with tqdm(total=len(files), desc="predict", unit="image", disable=None, file=sys.stderr) as bar:
        for chunk_start in range(0, len(files), chunk_size):
            readable: list[tuple[int, Any]] = []
            for index in range(chunk_start, min(chunk_start + chunk_size, len(files))):
                try:
                    readable.append((index, read_image(files[index])))
                except ImageReadError as error:
                    typer.echo(f"error: {error}", err=True)
                    records[index]["error"] = str(error)
                    failures += 1
            predictions = predictor.predict([xray for _, xray in readable], batch_size=batch_size)
            for (index, xray), prediction in zip(readable, predictions, strict=True):
                records[index] |= prediction.to_json(
                    model_name=predictor.name, model_version=predictor.version
                )
                if draw is not None:
                    draw_prediction(xray, prediction, draw / f"{index:04d}_{files[index].stem}.png")
                if saliency and draw is not None:
                    maps = predictor.explain(xray, prediction)
                    for number, (finding, heatmap) in enumerate(zip(prediction.findings, maps, strict=True)):
                        record = records[index]["findings"][number]
                        if heatmap is None:  # the detection was not reproduced with gradients on
                            record["saliency"] = None
                            continue
                        path = draw / f"{index:04d}_{files[index].stem}_gradcam{number}.png"
                        draw_saliency(xray, finding, heatmap, path, model_version=predictor.version)
                        record["saliency"] = str(path)
            bar.update(min(chunk_size, len(files) - chunk_start))
    typer.echo(json.dumps(records, indent=2))
    if failures:
        raise typer.Exit(1)


def _retriager(settings: Any, db: Any) -> Any:
    """A callback that re-triages the analysed images of patients whose vital signs just arrived.

    Triage only reads the database (no detector is loaded here); its events go to Redis when the
    deployment uses Celery, so the web app hears about new alerts.
    """
    from covidet.ingest.storage import ImageStore
    from covidet.worker.analysis import Analyzer
    from covidet.worker.events import InProcessEvents, RedisEvents

    events = RedisEvents(settings.redis_url) if settings.queue == "celery" else InProcessEvents()
    analyzer = Analyzer(settings, db, ImageStore(settings.image_store_dir), events=events)

    def retriage(patient_ids: set[int]) -> None:
        for patient_id in patient_ids:
            analyzer.retriage_patient(patient_id)

    return retriage


# --- calibrate command ---
@app.command()
def calibrate(
    model: ModelOption = None,
    data: DataOption = None,
    split: Annotated[str, typer.Option(help="split to fit on (val; never test)")] = "val",
    covid_sensitivity: Annotated[
        float, typer.Option(min=0.01, max=1, help="Covid-19 sensitivity the threshold must reach on SPLIT")
    ] = 0.975,
    folds: Annotated[int, typer.Option(min=2, help="patient folds of the cross-fitted estimate")] = 5,
    write: Annotated[bool, typer.Option("--write/--dry-run", help="write into the model card")] = True,
    tier: TierOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Fit the decision threshold (for a stated Covid-19 sensitivity) and the probability temperature
    on the val split and write them into the model card; prints the new decision as JSON."""
    settings = _setup()
    from covidet.detection.bundle import BundleError
    from covidet.detection.calibrate import calibrate_bundle
    from covidet.detection.data import DatasetError

    bundle = _bundle_path(model, settings)
    try:
        decision = calibrate_bundle(
            bundle,
            data=data or settings.data,
            split=split,
            target_covid_sensitivity=covid_sensitivity,
            folds=folds,
            tier=tier,
            device=settings.device,
            show_progress=progress,
            write=write,
        )
    except (DatasetError, BundleError, ValueError) as error:
        raise _fail(str(error)) from None
    typer.echo(json.dumps(decision, indent=2))


@app.command()
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
    settings = _setup(threads=threads)
    from covidet.detection.data import DatasetError
    from covidet.detection.pretrain import PretrainConfig
    from covidet.detection.pretrain import pretrain as run_pretraining

    config = _options_model(
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
        raise _fail(str(error)) from None
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


# --- propose-boxes command ---
@app.command("propose-boxes")
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
    settings = _setup()
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
            raise _fail(f"{model} is not a lung detector (train one with `covidet train --task lungs`)")
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
        raise _fail(str(error)) from None
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


# --- export command ---
@app.command()
def export(
    model: ModelOption = None,
    data: DataOption = None,
    runtime: Annotated[
        list[str] | None,
        typer.Option("--runtime", help="onnxruntime and/or openvino (repeat the option); default: both"),
    ] = None,
    int8: Annotated[
        bool, typer.Option("--int8/--no-int8", help="also int8, calibrated on train-split images")
    ] = True,
    bf16: Annotated[
        bool | None,
        typer.Option("--bf16/--no-bf16", help="also OpenVINO bf16 [default: where the CPU has bf16]"),
    ] = None,
    search: Annotated[
        bool,
        typer.Option("--search/--no-search", help="if all-int8 fails the check, try int8 graph by graph"),
    ] = True,
    calibration_images: Annotated[
        int, typer.Option("--calibration-images", min=1, help="train-split images that calibrate int8")
    ] = 64,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="parity check against torch (needed for 'auto')")
    ] = True,
    split: Annotated[str, typer.Option(help="split of the parity check")] = "val",
    limit: Annotated[int | None, typer.Option(help="check on the first N images of the split only")] = None,
    tier: TierOption = None,
) -> None:
    """Write ONNX Runtime / OpenVINO artefacts (fp32, int8) into the model bundle, check them against
    torch on the val split and record the figures in the model card; prints a JSON summary.

    Exit 1 when the check ran and no variant passed it. See docs/inference.md.
    """
    settings = _setup()
    from covidet.detection.bundle import BundleError
    from covidet.detection.data import DatasetError
    from covidet.detection.export import ExportError, export_bundle

    bundle = _bundle_path(model, settings)
    try:
        section = export_bundle(
            bundle,
            data=data or settings.data,
            runtimes=runtime or ("onnxruntime", "openvino"),
            int8=int8,
            bf16=bf16,
            search=search,
            calibration_images=calibration_images,
            check=check,
            check_split=split,
            check_limit=limit,
            tier=tier,
        )
    except (ExportError, DatasetError, BundleError) as error:
        raise _fail(str(error)) from None
    summary = {
        "bundle": str(bundle),
        "fastest_passing": section["fastest_passing"],
        "check": {k: section["check"][k] for k in ("split", "n_images")} if section["check"] else None,
        "variants": [
            {
                "name": f"{v['backend']}-{v['precision']}",
                "parity_ok": v["parity_ok"],
                "speedup_vs_torch": v["speedup_vs_torch"],
                "seconds_per_image": v["seconds_per_image"],
                "label_agreement": (v["parity"] or {}).get("label_agreement"),
                "share_pairs_iou_ge_0.9": (v["parity"] or {}).get("share_pairs_iou_ge_0.9"),
                "max_abs_metric_delta": (v["parity"] or {}).get("max_abs_metric_delta"),
            }
            for v in section["variants"]
        ],
    }
    typer.echo(json.dumps(summary, indent=2))
    if check and section["fastest_passing"] is None:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------ store and devices

devices_app = typer.Typer(help="Register and list the devices that may send data.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")


def _database(settings: Any) -> Any:
    """The database of ``settings``, migrated to the newest schema; a clear error if unreachable."""
    from sqlalchemy.exc import SQLAlchemyError

    from covidet.store import Database

    try:
        return Database.from_settings(settings)
    except SQLAlchemyError as exc:
        raise _fail(
            f"cannot open the database {settings.resolved_database_url!r}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc


@devices_app.command("add")
def devices_add(
    name: Annotated[str, typer.Argument(help="unique device name")],
    kind: Annotated[str, typer.Option("--kind", help="modality | sensor | uploader")],
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="calling AE title of a modality (default: NAME)")
    ] = None,
) -> None:
    """Create a device and print its id and credentials as JSON (shown once; only hashes are kept)."""
    from covidet.store import DeviceKind, queries

    settings = _setup()
    if kind not in {k.value for k in DeviceKind}:
        raise _fail(f"--kind must be one of {', '.join(k.value for k in DeviceKind)}, not {kind!r}")
    db = _database(settings)
    try:
        with db.session(write=True) as session:
            credentials = queries.create_device(session, name, kind, ae_title=ae_title)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    # --- devices add: broker files (mqtt) ---
    if credentials.mqtt_username is not None:
        # A new sensor may connect only once the broker's password file and ACL name it.
        _write_broker_files(settings, db)
    typer.echo(json.dumps(credentials.to_json(), indent=2))


@devices_app.command("list")
def devices_list() -> None:
    """List registered devices as JSON (no secrets)."""
    from covidet.store import queries

    settings = _setup()
    db = _database(settings)
    with db.session() as session:
        rows = [
            {
                "device_id": d.id,
                "name": d.name,
                "kind": d.kind,
                "ae_title": d.ae_title,
                "mqtt_username": d.mqtt_username,
                "active": d.active,
                "created_at": d.created_at.isoformat(),
            }
            for d in queries.list_devices(session)
        ]
    typer.echo(json.dumps(rows, indent=2))


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (the stable, scriptable form)")] = False,
) -> None:
    """Counts of what covidet holds: images, studies, patients, vitals, rejected messages, devices."""
    from covidet.store import queries

    settings = _setup()
    db = _database(settings)
    with db.session() as session:
        counts = queries.counts(session)
    if as_json:
        typer.echo(json.dumps(counts))
    else:
        for key, value in counts.items():
            typer.echo(f"{key:>18}: {value}")


# ------------------------------------------------------------------------------------ ingest services
# --- dicom-scp command ---
@app.command("dicom-scp")
def dicom_scp(
    host: Annotated[
        str, typer.Option("--host", help="address to listen on; 0.0.0.0 accepts modalities on the network")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port)")
    ] = 11112,
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="called AE title [env COVIDET_AE_TITLE; default COVIDET]")
    ] = None,
    max_associations: Annotated[
        int | None, typer.Option("--max-associations", min=1, help="[env COVIDET_DICOM_MAX_ASSOCIATIONS; 32]")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="DICOM TLS certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="its private key (PEM)")] = None,
    tls_ca: Annotated[
        Path | None, typer.Option("--tls-ca", help="require client certificates signed by this CA (PEM)")
    ] = None,
) -> None:
    """Receive chest X-rays over DICOM C-STORE (and answer C-ECHO) until SIGINT or SIGTERM.

    Only registered modalities (`covidet devices add NAME --kind modality --ae-title AE`) may send.
    TLS and the other dicom_* settings: docs/dicom.md.
    """
    import signal
    import threading

    from covidet.ingest.dicom_scp import DicomReceiver
    from covidet.worker.runtime import build_runtime

    settings = _setup()
    overrides = {"dicom_max_associations": max_associations, "dicom_tls_cert": tls_cert}
    overrides |= {"dicom_tls_key": tls_key, "dicom_tls_ca": tls_ca}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if settings.log_level.upper() != "DEBUG":
        # pynetdicom logs every association and request at INFO: noise, and it costs throughput.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Analysis runs in this process (COVIDET_QUEUE=inprocess, the default) or in `covidet worker`
    # processes (celery); images accepted earlier and not yet analysed are queued again.
    runtime = build_runtime(settings, db=_database(settings))
    db, ingest, store = runtime.db, runtime.ingest, runtime.store
    try:
        receiver = DicomReceiver.from_settings(settings, db, ingest, host=host, port=port, ae_title=ae_title)
        receiver.start()
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        logger.info("%s received: stopping the DICOM receiver", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    logger.info(
        "dicom-scp: AE %s on %s:%d, images in %s; stop with Ctrl-C or SIGTERM",
        receiver.ae_title,
        host,
        receiver.port,
        store.root,
    )
    try:
        while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
            pass
    finally:
        receiver.stop()
        runtime.close()


# --- mqtt-ingest command ---
def _write_broker_files(settings: Any, db: Any, directory: Path | None = None) -> Any:
    """Rewrite Mosquitto's password file and ACL from the device table; logs (stderr), never prints.

    Returns the :class:`~covidet.ingest.mqtt.MosquittoFiles`, or ``None`` when they could not be written
    (the error is logged: a device already created must still get its credentials printed).
    """
    from covidet.ingest.mqtt import write_mosquitto_files

    directory = directory or settings.resolved_mosquitto_dir
    try:
        with db.session() as session:
            return write_mosquitto_files(
                session,
                directory,
                ingest_username=settings.mqtt_username,
                ingest_password=settings.mqtt_password,
                max_payload_bytes=settings.mqtt_max_payload_bytes,
            )
    except (OSError, ValueError) as exc:
        logger.error("could not write Mosquitto's files into %s: %s", directory, exc)
        return None


@app.command("mqtt-ingest")
def mqtt_ingest(
    broker_host: Annotated[
        str | None,
        typer.Option("--broker-host", help="MQTT broker [env COVIDET_MQTT_BROKER_HOST; default 127.0.0.1]"),
    ] = None,
    broker_port: Annotated[
        int | None,
        typer.Option(
            "--broker-port", min=1, max=65535, help="broker port [env COVIDET_MQTT_BROKER_PORT; default 1883]"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="messages per transaction")] = 500,
    batch_ms: Annotated[
        float, typer.Option("--batch-ms", min=0, help="longest wait for a batch to fill, milliseconds")
    ] = 20.0,
    log_every: Annotated[
        float, typer.Option("--log-every", min=1, help="seconds between counter log lines")
    ] = 60.0,
) -> None:
    """Store the vital signs that bedside sensors publish over MQTT, until SIGINT or SIGTERM.

    Subscribes with QoS 1 to covidet/devices/+/vitals as COVIDET_MQTT_USERNAME / COVIDET_MQTT_PASSWORD,
    over TLS when COVIDET_MQTT_TLS_CA names the broker's CA file. Messages are acknowledged only once
    stored; invalid ones go to rejected_messages. See docs/mqtt.md.
    """
    import signal
    import threading

    from covidet.ingest.mqtt import VitalsSubscriber

    settings = _setup()
    if (settings.mqtt_username is None) != (settings.mqtt_password is None):
        raise _fail("set both COVIDET_MQTT_USERNAME and COVIDET_MQTT_PASSWORD, or neither")
    if settings.mqtt_tls_ca is not None and not settings.mqtt_tls_ca.expanduser().is_file():
        raise _fail(f"COVIDET_MQTT_TLS_CA: no such file {str(settings.mqtt_tls_ca)!r}")
    db = _database(settings)
    try:
        subscriber = VitalsSubscriber.from_settings(
            db,
            settings,
            host=broker_host,
            port=broker_port,
            tls_ca=settings.mqtt_tls_ca.expanduser() if settings.mqtt_tls_ca else None,
            batch_size=batch_size,
            batch_delay_s=batch_ms / 1000,
        )
    except (ValueError, OSError) as exc:  # e.g. an unreadable CA file
        raise _fail(str(exc)) from exc
    subscriber.on_stored = _retriager(settings, db)
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        logger.info("%s received: stopping the MQTT subscriber", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    subscriber.start()
    try:
        while not stop.wait(log_every):
            stats = subscriber.stats()
            logger.info(
                "mqtt-ingest: %d received, %d stored, %d duplicates, %d rejected, %d pending, connected: %s",
                stats.received,
                stats.stored,
                stats.duplicates,
                stats.rejected,
                stats.pending,
                stats.connected,
            )
    finally:
        subscriber.stop()
        db.dispose()


@app.command("mqtt-broker-files")
def mqtt_broker_files(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="output folder [env COVIDET_MOSQUITTO_DIR; default <home>/mosquitto]"),
    ] = None,
) -> None:
    """Rewrite Mosquitto's password file and ACL from the device table; prints their paths as JSON.

    `covidet devices add` does this by itself; use this after changing the COVIDET_MQTT_* user or
    deactivating a device, then reload Mosquitto (SIGHUP).
    """
    settings = _setup()
    db = _database(settings)
    files = _write_broker_files(settings, db, directory)
    if files is None:
        raise _fail("could not write Mosquitto's files (see the log above)")
    typer.echo(
        json.dumps(
            {
                "password_file": str(files.password_file),
                "acl_file": str(files.acl_file),
                "example_config": str(files.example_config),
                "devices": files.devices,
                "ingest_user": files.ingest_user,
            },
            indent=2,
        )
    )


# --- upload/serve command ---


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address of the web app and API")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the web app and API")] = 8000,
    dicom_port: Annotated[
        int | None, typer.Option("--dicom-port", help="also run the DICOM receiver on this port")
    ] = None,
    mqtt: Annotated[
        bool | None,
        typer.Option(
            "--mqtt/--no-mqtt",
            help="run the MQTT vitals subscriber [default: when COVIDET_MQTT_BROKER_HOST is set]",
        ),
    ] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="private key of --ssl-certfile (PEM)")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = None,
) -> None:
    """Run covidet in one process: web app and API, analysis, plus the DICOM receiver when a DICOM
    port is given and the MQTT vitals subscriber when a broker is configured."""
    from covidet.runner import run_services

    settings = _setup(log_level=log_level)
    if mqtt is None:
        mqtt = "mqtt_broker_host" in settings.model_fields_set
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise _fail("--ssl-certfile and --ssl-keyfile go together")
    try:
        run_services(
            settings,
            host=host,
            port=port,
            dicom_port=dicom_port,
            mqtt=mqtt,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
    except OSError as exc:
        raise _fail(f"cannot start: {exc}") from exc


# --- simulate command ---
@app.command()
def simulate(
    files: Annotated[
        list[Path] | None, typer.Argument(help="image files to send (instead of --data)", show_default=False)
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="dataset folder with manifest.csv, or a folder of images [env COVIDET_DATA]"
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="send at most N images (0: all)")] = 10,
    split: Annotated[
        str, typer.Option("--split", help="manifest split to send: val, train, test or all")
    ] = "val",
    dicom_host: Annotated[str, typer.Option("--dicom-host", help="covidet's DICOM receiver")] = "127.0.0.1",
    dicom_port: Annotated[int, typer.Option("--dicom-port", min=1, max=65535, help="its port")] = 11112,
    called_ae: Annotated[
        str | None,
        typer.Option("--called-ae", help="receiver's AE title [env COVIDET_AE_TITLE; default COVIDET]"),
    ] = None,
    calling_ae: Annotated[
        str, typer.Option("--calling-ae", help="the modality's AE title, as registered with `devices add`")
    ] = "COVIDET-SIM",
    broker_host: Annotated[
        str | None,
        typer.Option("--broker-host", help="MQTT broker [env COVIDET_MQTT_BROKER_HOST; default 127.0.0.1]"),
    ] = None,
    broker_port: Annotated[
        int | None,
        typer.Option("--broker-port", min=1, max=65535, help="[env COVIDET_MQTT_BROKER_PORT; default 1883]"),
    ] = None,
    mqtt_username: Annotated[
        str | None, typer.Option("--mqtt-username", help="the sensor device's MQTT user (device-N)")
    ] = None,
    mqtt_password: Annotated[
        str | None,
        typer.Option("--mqtt-password", envvar="COVIDET_SIM_MQTT_PASSWORD", help="its MQTT password"),
    ] = None,
    mqtt_tls_ca: Annotated[
        Path | None, typer.Option("--mqtt-tls-ca", help="CA file: connect to the broker over TLS")
    ] = None,
    sensor_device_id: Annotated[
        int | None,
        typer.Option(
            "--sensor-device-id",
            help="sensor device id (topic covidet/devices/ID/vitals); default: N of --mqtt-username device-N",
        ),
    ] = None,
    vitals_count: Annotated[int, typer.Option("--vitals-count", min=1, help="readings per patient")] = 10,
    vitals_rate: Annotated[
        float, typer.Option("--vitals-rate", min=0, help="vitals messages per second (0: unthrottled)")
    ] = 20.0,
    vitals_interval: Annotated[
        float, typer.Option("--vitals-interval", min=1, help="simulated seconds between a patient's readings")
    ] = 60.0,
    images: Annotated[bool, typer.Option("--images/--no-images", help="send the X-rays")] = True,
    vitals: Annotated[bool, typer.Option("--vitals/--no-vitals", help="publish vital signs")] = True,
    seed: Annotated[int, typer.Option("--seed", help="seed of the vital-sign series")] = 0,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="network timeout, seconds")] = 30.0,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="progress bars on stderr")
    ] = True,
) -> None:
    """Simulate devices: a modality sending real X-rays over DICOM C-STORE and bedside sensors
    publishing the same patients' vital signs over MQTT. Prints a JSON summary; exit 1 if anything
    was not acknowledged. See docs/simulator.md."""
    import re

    from covidet.simulate.runner import SimulationConfig, run_simulation

    settings = _setup()
    if settings.log_level.upper() != "DEBUG":
        # pynetdicom logs every association and request at INFO: noise between the progress bars.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if not images and not vitals:
        raise _fail("--no-images and --no-vitals: nothing to simulate")
    source: Path | list[Path] | None = list(files) if files else (data or settings.data)
    if source is None:
        raise _fail("no images: pass --data PATH or files, or set COVIDET_DATA")
    if vitals and sensor_device_id is None:
        match = re.fullmatch(r"device-(\d+)", mqtt_username or "")
        if match is None:
            raise _fail("vitals need --sensor-device-id (or --mqtt-username device-N), or pass --no-vitals")
        sensor_device_id = int(match.group(1))
    config = SimulationConfig(
        source=source,
        split=None if split == "all" else split,
        limit=limit or None,
        images=images,
        vitals=vitals,
        dicom_host=dicom_host,
        dicom_port=dicom_port,
        called_ae=called_ae or settings.ae_title,
        calling_ae=calling_ae,
        broker_host=broker_host or settings.mqtt_broker_host,
        broker_port=broker_port or settings.mqtt_broker_port,
        mqtt_username=mqtt_username,
        mqtt_password=mqtt_password,
        mqtt_tls_ca=mqtt_tls_ca,
        sensor_device_id=sensor_device_id,
        vitals_count=vitals_count,
        vitals_rate=vitals_rate or None,
        vitals_interval_s=vitals_interval,
        seed=seed,
        timeout=timeout,
        progress=progress,
    )
    try:
        report = run_simulation(config)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(report.to_json(), indent=2))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def report(
    image_or_study: Annotated[
        str, typer.Argument(help="image id (digits) or Study Instance UID (its newest analysed image)")
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="fhir (R4B DiagnosticReport JSON), dicom (Secondary Capture), sr (TID 1500 DICOM SR of "
            "the AI result) or sr-review (the newest signed review as an SR)",
        ),
    ] = "fhir",
    out: Annotated[Path, typer.Option("--out", help="file to write")] = Path("report.json"),
    forward: Annotated[
        bool, typer.Option("--forward", help="also send the DICOM report to the PACS in settings (C-STORE)")
    ] = False,
) -> None:
    """Write the report of an analysed image: FHIR DiagnosticReport, DICOM Secondary Capture or SR."""
    from covidet.ingest.storage import ImageStore
    from covidet.worker.reporting import (
        ReportNotAvailable,
        forward_report,
        resolve_image_id,
        write_image_report,
    )

    settings = _setup()
    if fmt not in {"fhir", "dicom", "sr", "sr-review"}:
        raise _fail(f"--format must be fhir, dicom, sr or sr-review, not {fmt!r}")
    db = _database(settings)
    store = ImageStore(settings.image_store_dir)
    try:
        image_id = resolve_image_id(db, image_or_study)
        path = write_image_report(db, store, image_id, fmt, out)
        if forward:
            if not settings.pacs_host:
                raise _fail("--forward needs COVIDET_PACS_HOST, COVIDET_PACS_PORT and COVIDET_PACS_AE_TITLE")
            forward_report(db, store, image_id, settings)
    except ReportNotAvailable as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__ == "ForwardError":
            raise _fail(str(exc)) from exc
        raise
    typer.echo(json.dumps({"image_id": image_id, "format": fmt, "path": str(path), "disclaimer": DISCLAIMER}))


# --- users and api-token commands ---
users_app = typer.Typer(
    help="Create and list the people who sign in (admins, radiologists).", no_args_is_help=True
)
app.add_typer(users_app, name="users")
api_token_app = typer.Typer(help="Bearer tokens of users, for scripts.", no_args_is_help=True)
app.add_typer(api_token_app, name="api-token")


def _read_password() -> str:
    """The password from standard input: typed twice without echo on a terminal, else the first line
    (``echo "$PW" | covidet users add ...``), so it never appears in the process list or history."""
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        first = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != first:
            raise _fail("the two passwords differ")
        return first
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.rstrip("\r\n")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="username: letters, digits and . _ @ -")],
    role: Annotated[str, typer.Option("--role", help="admin | radiologist")],
) -> None:
    """Create a user; the password (at least 12 characters, not a common one) is read from standard
    input. Prints JSON."""
    from covidet.api.auth import hash_password
    from covidet.api.passwords import WeakPassword, check_password
    from covidet.store import review_queries as rq

    settings = _setup()
    if role not in ("admin", "radiologist"):
        raise _fail(f"--role must be admin or radiologist, not {role!r}")
    password = _read_password()
    try:
        check_password(password)  # the API's policy (docs/security-web.md)
    except WeakPassword as exc:
        raise _fail(str(exc)) from None
    db = _database(settings)
    try:
        with db.session(write=True) as session:
            user = rq.create_user(session, name, password_hash=hash_password(password), role=role)
            rq.add_audit_event(
                session,
                "user.create",
                object_type="user",
                object_id=user.id,
                details={"username": user.username, "role": user.role, "via": "cli"},
            )
            result = {"id": user.id, "username": user.username, "role": user.role, "active": user.active}
    except rq.QueryError as exc:
        raise _fail(str(exc)) from exc
    finally:
        db.dispose()
    typer.echo(json.dumps(result))


@users_app.command("list")
def users_list() -> None:
    """List users as JSON (no password hashes)."""
    from covidet.store import review_queries as rq

    settings = _setup()
    db = _database(settings)
    with db.session() as session:
        users, _total = rq.list_users(session, limit=1_000_000)
        rows = [
            {
                "id": u.id,
                "username": u.username,
                "role": u.role,
                "active": u.active,
                "created_at": u.created_at.isoformat(),
            }
            for u in users
        ]
    db.dispose()
    typer.echo(json.dumps(rows, indent=2))


@api_token_app.command("create")
def api_token_create(
    username: Annotated[str, typer.Argument(help="the user the token acts as")],
    name: Annotated[str, typer.Option("--name", help="what the token is for")] = "cli",
    days: Annotated[
        int | None, typer.Option("--days", min=1, max=3650, help="lifetime [default: COVIDET_TOKEN_DAYS]")
    ] = None,
) -> None:
    """Create a bearer token for a user and print it as JSON (shown once; only its hash is kept)."""
    from datetime import timedelta

    from covidet.store import review_queries as rq
    from covidet.store.models import utcnow

    settings = _setup()
    db = _database(settings)
    try:
        with db.session(write=True) as session:
            user = rq.user_by_username(session, username)
            if user is None or not user.active:
                raise _fail(f"no active user named {username!r}")
            expires_at = utcnow() + timedelta(days=days or settings.token_days)
            row, token = rq.create_api_token(session, user.id, name=name, expires_at=expires_at)
            rq.add_audit_event(
                session,
                "token.create",
                object_type="api_token",
                object_id=row.id,
                details={"user": user.username, "name": row.name, "via": "cli"},
            )
            result = {
                "token_id": row.id,
                "username": user.username,
                "name": row.name,
                "access_token": token,
                "token_type": "bearer",
                "expires_at": expires_at.isoformat(),
            }
    finally:
        db.dispose()
    typer.echo(json.dumps(result, indent=2))


# --- demo command ---
@app.command()
def demo(
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="port of the web app on 127.0.0.1")
    ] = 8000,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="keep the demo's database and images here (default: a temporary folder, deleted on exit)",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="X-rays to simulate (env COVIDET_DATA; default ../shared/data/cxr)"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="X-rays the simulated modality sends")] = 12,
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR (default WARNING)")
    ] = None,
) -> None:
    """See the whole system work on this machine: web app, DICOM receiver, MQTT ingest (private
    Mosquitto, if installed), in-process worker with the shipped model, and simulated devices sending
    real X-rays and vital signs. Prints the URL and the demo users' passwords; Ctrl-C stops it. See
    docs/web.md."""
    from covidet.demo import DemoError, run_demo

    settings = _setup(log_level=log_level or "WARNING")
    try:
        run_demo(settings, port=port, home=home, data=data, limit=limit)
    except DemoError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(f"cannot start: {exc}") from exc


# ------------------------------------------------------------------------------------ analysis worker


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="worker processes (each loads the model once)")] = 1,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = None,
) -> None:
    """Run a Celery analysis worker over Redis (COVIDET_REDIS_URL); for COVIDET_QUEUE=celery deployments."""
    from covidet.worker.celery_app import make_celery

    settings = _setup(log_level=log_level)
    _database(settings).dispose()  # migrate and fail early if the database is unreachable
    celery = make_celery(settings.redis_url, visibility_timeout=settings.celery_visibility_timeout)
    logger.info("covidet worker: %d process(es), broker %s", concurrency, settings.redis_url)
    celery.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--loglevel={settings.log_level.upper()}",
            "--pool=prefork" if concurrency > 1 else "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--queues=covidet-analysis",
        ]
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
