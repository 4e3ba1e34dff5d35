"""Run covidet's services together in one process (``covidet serve`` and ``covidet demo``).

The web app and API run on uvicorn in the main thread; the DICOM receiver (pynetdicom threads), the
MQTT vitals subscriber (paho thread plus writer thread) and the in-process analysis threads run
beside it and share one :class:`~covidet.worker.runtime.Runtime`. SIGINT/SIGTERM stop uvicorn, and
then the others in reverse order of start.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Services", "run_services", "start_services"]

logger = logging.getLogger(__name__)


class Services:
    """The started parts of one covidet process. ``stop()`` stops them in reverse order."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.dicom: Any = None
        self.mqtt: Any = None
        self._stops: list[Callable[[], None]] = []

    def stop(self) -> None:
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception:
                logger.exception("error while stopping a service")
        self._stops.clear()
        self.runtime.close()


def start_services(
    settings: Any,
    *,
    host: str = "127.0.0.1",
    dicom_port: int | None = None,
    mqtt: bool = False,
    predictor: Any | None = None,
) -> Services:
    """Build the runtime and start the DICOM receiver and the MQTT subscriber as asked."""
    from covidet.worker.runtime import build_runtime

    runtime = build_runtime(settings, predictor=predictor)
    services = Services(runtime)
    try:
        if dicom_port is not None:
            from covidet.ingest.dicom_scp import DicomReceiver

            receiver = DicomReceiver.from_settings(
                settings, runtime.db, runtime.ingest, host=host, port=dicom_port
            )
            receiver.start()
            services.dicom = receiver
            services._stops.append(receiver.stop)
            logger.info("DICOM receiver %s listening on %s:%d", settings.ae_title, host, receiver.port)
        if mqtt:
            from covidet.ingest.mqtt import VitalsSubscriber

            subscriber = VitalsSubscriber.from_settings(runtime.db, settings)
            if hasattr(subscriber, "on_stored"):
                analyzer = runtime.analyzer

                def retriage(patient_ids: set[int]) -> None:
                    for patient_id in patient_ids:
                        analyzer.retriage_patient(patient_id)

                subscriber.on_stored = retriage
            subscriber.start()
            services.mqtt = subscriber
            services._stops.append(subscriber.stop)
            logger.info(
                "MQTT vitals subscriber on %s:%d", settings.mqtt_broker_host, settings.mqtt_broker_port
            )
    except BaseException:
        services.stop()
        raise
    return services


def run_services(
    settings: Any,
    *,
    host: str,
    port: int,
    dicom_port: int | None = None,
    mqtt: bool = False,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    predictor: Any | None = None,
    on_started: Callable[[Services], None] | None = None,
) -> None:
    """Start everything and serve HTTP(S) until SIGINT/SIGTERM."""
    import uvicorn

    from covidet.api.app import create_app

    services = start_services(settings, host=host, dicom_port=dicom_port, mqtt=mqtt, predictor=predictor)
    try:
        app = create_app(settings, db=services.runtime.db, ingest=services.runtime.ingest)
        app.state.runtime = services.runtime
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # keep covidet's logging set-up
            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        )
        server = uvicorn.Server(config)
        scheme = "https" if ssl_certfile else "http"
        logger.info("web app and API on %s://%s:%d (not for clinical use)", scheme, host, port)
        if on_started is not None:
            on_started(services)
        previous = _quiet_signals()
        try:
            server.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        services.stop()


def _quiet_signals() -> dict[int, Any]:
    """While uvicorn serves, its own SIGINT/SIGTERM handlers stop it gracefully; afterwards it raises
    the signal again to the handler it found. Install one that does nothing, so the services are then
    stopped by ``run_services`` instead of the process dying (SIGTERM) or a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def after_uvicorn(signum: int, _frame: Any) -> None:
        logger.info("%s: stopping covidet", signal.Signals(signum).name)

    return {signum: signal.signal(signum, after_uvicorn) for signum in (signal.SIGINT, signal.SIGTERM)}
