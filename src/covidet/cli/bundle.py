"""Commands that use a trained model bundle: ``covidet evaluate``, ``calibrate``, ``export`` and
``predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from tqdm import tqdm

from covidet.cli._common import DataOption, DeviceOption, ModelOption, TierOption, bundle_path, fail, setup

if TYPE_CHECKING:  # imported by predict when it runs
    from covidet.imaging import XRayImage

__all__ = ["calibrate", "evaluate", "export", "predict"]


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
    settings = setup()
    from covidet.detection.bundle import BundleError, read_model_card, write_model_card
    from covidet.detection.data import DatasetError
    from covidet.detection.evaluate import evaluate_bundle
    from covidet.detection.shortcuts import format_shortcut_guards

    bundle = bundle_path(model, settings)
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
        raise fail(str(error)) from None
    typer.echo(format_shortcut_guards(report), err=True)
    if write_card:
        card = read_model_card(bundle)
        card.setdefault("metrics", {})[split] = report
        write_model_card(bundle, card)
    typer.echo(json.dumps(report, indent=2))


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
    settings = setup()
    from covidet.detection.bundle import BundleError
    from covidet.detection.predictor import Predictor, draw_prediction, draw_saliency
    from covidet.imaging import ImageReadError, read_image

    if saliency and draw is None:
        raise fail("--saliency needs --draw FOLDER (the maps are written there)")
    try:
        predictor = Predictor.from_bundle(
            model or settings.model,
            device=device or settings.device,
            min_score=min_score,
            # Grad-CAM needs gradients, which only torch gives; parity makes the findings the same.
            backend="torch" if saliency else None,
        )
    except BundleError as error:
        raise fail(str(error)) from None
    records: list[dict[str, object]] = [{"file": str(f)} for f in files]
    failures = 0
    # Files are read and assessed in chunks so that memory stays bounded however many are given
    # (a decoded 16-bit radiograph takes ~16 MB as float32); the bar shows on a terminal only.
    chunk_size = max(1, batch_size) * 4
    with tqdm(total=len(files), desc="predict", unit="image", disable=None, file=sys.stderr) as bar:
        for chunk_start in range(0, len(files), chunk_size):
            readable: list[tuple[int, XRayImage]] = []
            for index in range(chunk_start, min(chunk_start + chunk_size, len(files))):
                try:
                    readable.append((index, read_image(files[index])))
                except ImageReadError as error:
                    typer.echo(f"error: {error}", err=True)
                    records[index]["error"] = str(error)
                    failures += 1
            predictions = predictor.predict([xray for _, xray in readable], batch_size=batch_size)
            for (index, xray), prediction in zip(readable, predictions, strict=True):
                assessed = prediction.to_json(model_name=predictor.name, model_version=predictor.version)
                # Plain dicts for the findings: with --saliency each gets a "saliency" key here.
                findings: list[dict[str, object]] = [dict(finding) for finding in assessed["findings"]]
                records[index] |= assessed
                records[index]["findings"] = findings
                if draw is not None:
                    draw_prediction(xray, prediction, draw / f"{index:04d}_{files[index].stem}.png")
                if saliency and draw is not None:
                    maps = predictor.explain(xray, prediction)
                    for number, (finding, heatmap) in enumerate(zip(prediction.findings, maps, strict=True)):
                        record = findings[number]
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
    settings = setup()
    from covidet.detection.bundle import BundleError
    from covidet.detection.calibrate import calibrate_bundle
    from covidet.detection.data import DatasetError

    bundle = bundle_path(model, settings)
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
        raise fail(str(error)) from None
    typer.echo(json.dumps(decision, indent=2))


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
    settings = setup()
    from covidet.detection.bundle import BundleError
    from covidet.detection.data import DatasetError
    from covidet.detection.export import ExportError, export_bundle

    bundle = bundle_path(model, settings)
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
        raise fail(str(error)) from None
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
