"""``covidet simulate``: a modality and bedside sensors replaying real X-rays and vital signs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from covidet.cli._common import fail, setup

__all__ = ["simulate"]


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

    settings = setup()
    if settings.log_level.upper() != "DEBUG":
        # pynetdicom logs every association and request at INFO: noise between the progress bars.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if not images and not vitals:
        raise fail("--no-images and --no-vitals: nothing to simulate")
    source: Path | list[Path] | None = list(files) if files else (data or settings.data)
    if source is None:
        raise fail("no images: pass --data PATH or files, or set COVIDET_DATA")
    if vitals and sensor_device_id is None:
        match = re.fullmatch(r"device-(\d+)", mqtt_username or "")
        if match is None:
            raise fail("vitals need --sensor-device-id (or --mqtt-username device-N), or pass --no-vitals")
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
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(report.to_json(), indent=2))
    if not report.ok:
        raise typer.Exit(1)
