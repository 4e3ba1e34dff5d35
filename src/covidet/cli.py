"""The ``covidet`` command (Typer).

Exit codes: 0 success; 1 some input could not be processed (e.g. one unreadable image); 2 bad usage,
bad data or bad model bundle (one-line message on standard error, no traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

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
    threshold: Annotated[float, typer.Option(help="disease-score threshold of the decision rule")] = 0.5,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    workers: Annotated[int, typer.Option(help="data-loading processes")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    amp: Annotated[bool, typer.Option(help="mixed precision on CUDA")] = False,
    resume: Annotated[
        Path | None, typer.Option(help="checkpoint to resume (e.g. runs/train/last.pt)")
    ] = None,
    name: Annotated[str, typer.Option(help="model name in the bundle")] = "covidet-detector",
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Train the Faster R-CNN detector; writes checkpoints, metrics.csv and a model bundle under OUT."""
    settings = _setup(threads=threads)
    from pydantic import ValidationError

    from covidet.detection.data import DatasetError
    from covidet.detection.engine import NonFiniteLossError
    from covidet.detection.train import TrainConfig
    from covidet.detection.train import train as run_training

    try:
        config = TrainConfig(
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
            threshold=threshold,
            seed=seed,
            workers=workers,
            device=device,
            amp=amp,
            resume=resume,
            name=name,
            show_progress=progress,
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise _fail(f"--{'-'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    try:
        result = run_training(config)
    except (DatasetError, NonFiniteLossError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    if result.bundle is not None:
        typer.echo(
            json.dumps(
                {
                    "bundle": str(result.bundle),
                    "best_epoch": result.best_epoch,
                    "best_" + config.monitor: result.best_metric,
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
) -> None:
    """Evaluate a model bundle: COCO box metrics and image-level clinical metrics; prints JSON."""
    settings = _setup()
    from covidet.detection.bundle import BundleError, default_bundle_path
    from covidet.detection.data import DatasetError
    from covidet.detection.evaluate import evaluate_bundle

    bundle = model or settings.model or default_bundle_path()
    if bundle is None:
        raise _fail("no model bundle: pass --model BUNDLE or set COVIDET_MODEL")
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
        )
    except (DatasetError, BundleError) as error:
        raise _fail(str(error)) from None
    typer.echo(json.dumps(report, indent=2))


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="DICOM, PNG or JPEG files")],
    model: ModelOption = None,
    draw: Annotated[
        Path | None, typer.Option(help="write PNGs with the boxes drawn into this folder")
    ] = None,
    min_score: Annotated[float, typer.Option(help="report findings scoring at least this")] = 0.3,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 4,
    device: DeviceOption = None,
) -> None:
    """Assess X-ray files; prints one JSON list with a record per file, in order."""
    settings = _setup()
    from covidet.detection.bundle import BundleError
    from covidet.detection.predictor import Predictor, draw_prediction
    from covidet.imaging import ImageReadError, read_image

    try:
        predictor = Predictor.from_bundle(
            model or settings.model, device=device or settings.device, min_score=min_score
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
            bar.update(min(chunk_size, len(files) - chunk_start))
    typer.echo(json.dumps(records, indent=2))
    if failures:
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
# --- mqtt-ingest command ---
# --- upload/serve command ---
# --- simulate command ---


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
