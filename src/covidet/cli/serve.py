"""Commands that run covidet's processes: ``covidet serve`` (all in one), ``dicom-scp``,
``mqtt-ingest``, ``worker`` (Celery) and ``demo``. Each wires the services from settings and runs
until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from covidet.cli._common import fail, logger, open_database, setup, stop_on_signals
from covidet.config import Settings

if TYPE_CHECKING:  # imported by the commands that use them: each process imports what it runs
    from covidet.store import Database
    from covidet.worker.retriage import RetriageQueue

__all__ = ["demo", "dicom_scp", "mqtt_ingest", "serve", "worker"]


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
    from covidet.ingest.dicom_scp import DicomReceiver
    from covidet.worker.runtime import build_runtime

    settings = setup()
    overrides = {"dicom_max_associations": max_associations, "dicom_tls_cert": tls_cert}
    overrides |= {"dicom_tls_key": tls_key, "dicom_tls_ca": tls_ca}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if settings.log_level.upper() != "DEBUG":
        # pynetdicom logs every association and request at INFO: noise, and it costs throughput.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Analysis runs in this process (COVIDET_QUEUE=inprocess, the default) or in `covidet worker`
    # processes (celery); images accepted earlier and not yet analysed are queued again.
    runtime = build_runtime(settings, db=open_database(settings))
    db, ingest, store = runtime.db, runtime.ingest, runtime.store
    try:
        receiver = DicomReceiver.from_settings(settings, db, ingest, host=host, port=port, ae_title=ae_title)
        receiver.start()
    except ValueError as exc:
        raise fail(str(exc)) from exc
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    stop = stop_on_signals("the DICOM receiver")
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


def _retriager(settings: Settings, db: Database) -> RetriageQueue:
    """A :class:`~covidet.worker.retriage.RetriageQueue` that re-triages the analysed images of patients
    whose vital signs just arrived, on its own thread, so the MQTT writer never waits on triage (as
    ``covidet serve`` does).

    Triage only reads the database (no detector is loaded here); its events go to Redis when the
    deployment uses Celery, so the web app hears about new alerts.
    """
    from covidet.ingest.storage import ImageStore
    from covidet.worker.analysis import Analyzer
    from covidet.worker.events import InProcessEvents, RedisEvents

    events = RedisEvents(settings.redis_url) if settings.queue == "celery" else InProcessEvents()
    analyzer = Analyzer(settings, db, ImageStore(settings.image_store_dir), events=events)

    from covidet.worker.retriage import RetriageQueue

    return RetriageQueue(analyzer.retriage_patient)


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
    from covidet.ingest.mqtt import VitalsSubscriber

    settings = setup()
    if (settings.mqtt_username is None) != (settings.mqtt_password is None):
        raise fail("set both COVIDET_MQTT_USERNAME and COVIDET_MQTT_PASSWORD, or neither")
    if settings.mqtt_tls_ca is not None and not settings.mqtt_tls_ca.expanduser().is_file():
        raise fail(f"COVIDET_MQTT_TLS_CA: no such file {str(settings.mqtt_tls_ca)!r}")
    db = open_database(settings)
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
        raise fail(str(exc)) from exc
    retriage = _retriager(settings, db)
    subscriber.on_stored = retriage.submit
    stop = stop_on_signals("the MQTT subscriber")
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
        retriage.close()
        db.dispose()


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
    from covidet.app.runner import run_services

    settings = setup(log_level=log_level)
    if mqtt is None:
        mqtt = "mqtt_broker_host" in settings.model_fields_set
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise fail("--ssl-certfile and --ssl-keyfile go together")
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
        raise fail(f"cannot start: {exc}") from exc


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
    from covidet.app.demo import DemoError, run_demo

    settings = setup(log_level=log_level or "WARNING")
    try:
        run_demo(settings, port=port, home=home, data=data, limit=limit)
    except DemoError as exc:
        raise fail(str(exc)) from exc
    except OSError as exc:
        raise fail(f"cannot start: {exc}") from exc


def worker(
    concurrency: Annotated[int, typer.Option(help="worker processes (each loads the model once)")] = 1,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = None,
) -> None:
    """Run a Celery analysis worker over Redis (COVIDET_REDIS_URL); for COVIDET_QUEUE=celery deployments."""
    from covidet.worker.celery_app import make_celery

    settings = setup(log_level=log_level)
    open_database(settings).dispose()  # migrate and fail early if the database is unreachable
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
