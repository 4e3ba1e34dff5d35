"""Run covidet's services together in one process (``covidet serve`` and ``covidet demo``).

The web app and API run on uvicorn in the main thread; the DICOM receiver (pynetdicom threads), the
MQTT vitals subscriber (paho thread plus writer thread), the re-triage thread and the in-process
analysis threads run beside it and share one :class:`~covidet.worker.runtime.Runtime`.

Shutdown (SIGINT/SIGTERM) is bounded by ``settings.shutdown_grace_seconds`` (default 30 s) from the
signal: every way in stops accepting at once (uvicorn closes its socket, the DICOM receiver its port,
the MQTT subscriber stops taking messages); work in progress may finish within the grace (HTTP
requests, C-STOREs, the MQTT batch being stored, the analysis batch); then the process exits with
status 0 whatever is left. Nothing acknowledged is lost: an unfinished C-STORE or upload was never
answered, so its sender still has it; an unacknowledged MQTT reading is redelivered by the broker;
an image whose analysis did not finish stays ``queued`` in the database and is queued again at the
next start; waiting re-triages are dropped (the patient's next reading re-triages).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from covidet.app.signals import SignalHandler, install_handler, restore_handlers
from covidet.config import Settings

if TYPE_CHECKING:  # the parts are imported when started: a process imports only what it runs
    import uvicorn

    from covidet.detection.predictor import Predictor
    from covidet.ingest.dicom_scp import DicomReceiver
    from covidet.ingest.mqtt_subscriber import VitalsSubscriber
    from covidet.worker.retriage import RetriageQueue
    from covidet.worker.runtime import Runtime

__all__ = ["Services", "run_services", "start_services"]

logger = logging.getLogger("covidet.runner")  # the logger name its lines always had

#: Least time each part gets to stop even once the grace is spent (to stop accepting, and log).
_MIN_STOP_SECONDS = 0.5


class Services:
    """The started parts of one covidet process.

    :meth:`stop_intake` stops the ways in (reverse order of start), :meth:`stop` everything: both
    within a deadline, and both may be called more than once."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.dicom: DicomReceiver | None = None
        self.mqtt: VitalsSubscriber | None = None
        self.retriage: RetriageQueue | None = None
        self._stops: list[Callable[[float], object]] = []
        self._lock = threading.Lock()

    def stop_intake(self, deadline: float) -> None:
        """Stop the DICOM receiver, the MQTT subscriber and the re-triage thread, letting work in
        progress finish until ``deadline`` (``time.monotonic()``)."""
        # A second caller (stop() after the signal's own thread began) waits for the first to end.
        if not self._lock.acquire(timeout=_remaining(deadline)):
            return
        try:
            stops, self._stops = self._stops, []
            for stop in reversed(stops):
                try:
                    stop(_remaining(deadline))
                except Exception:
                    logger.exception("error while stopping a service")
        finally:
            self._lock.release()

    def stop(self, grace: float = 30.0, *, deadline: float | None = None) -> bool:
        """Stop everything within ``grace`` seconds (or until ``deadline``): the ways in, then the
        analysis threads (waiting jobs stay ``queued`` in the database), then the database (the audit
        writer commits what waits). True when no covidet thread is still busy."""
        deadline = deadline if deadline is not None else time.monotonic() + grace
        self.stop_intake(deadline)
        from covidet.worker.queue import InProcessQueue

        # What Runtime.close does, with the wait bounded by the deadline (it waits up to 120 s).
        if isinstance(self.runtime.queue, InProcessQueue):
            self.runtime.queue.close(timeout=_remaining(deadline))
        self.runtime.db.dispose()
        busy = sorted(
            thread.name
            for thread in threading.enumerate()
            if thread.name.startswith("covidet-") and thread.is_alive()
        )
        if busy:
            logger.warning("still busy at the end of the shutdown grace: %s", ", ".join(busy))
        return not busy


def _remaining(deadline: float) -> float:
    return max(_MIN_STOP_SECONDS, deadline - time.monotonic())


def start_services(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    dicom_port: int | None = None,
    mqtt: bool = False,
    predictor: Predictor | None = None,
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
            services._stops.append(lambda timeout: receiver.stop(timeout=timeout))
            logger.info("DICOM receiver %s listening on %s:%d", settings.ae_title, host, receiver.port)
        if mqtt:
            from covidet.ingest.mqtt import VitalsSubscriber
            from covidet.worker.retriage import RetriageQueue

            subscriber = VitalsSubscriber.from_settings(runtime.db, settings)
            analyzer = runtime.analyzer
            # Re-triage on its own thread, coalesced per patient: the MQTT writer only hands the
            # patients over, so storing and acknowledging readings never waits on it.
            retriage = RetriageQueue(lambda patient_id: analyzer.retriage_patient(patient_id))
            services.retriage = retriage
            services._stops.append(lambda timeout: retriage.close(timeout=timeout))
            subscriber.on_stored = retriage.submit
            subscriber.start()
            services.mqtt = subscriber
            services._stops.append(lambda timeout: subscriber.stop(timeout=timeout))
            logger.info(
                "MQTT vitals subscriber on %s:%d", settings.mqtt_broker_host, settings.mqtt_broker_port
            )
    except BaseException:
        services.stop()
        raise
    return services


def run_services(
    settings: Settings,
    *,
    host: str,
    port: int,
    dicom_port: int | None = None,
    mqtt: bool = False,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    predictor: Predictor | None = None,
    on_started: Callable[[Services], None] | None = None,
) -> None:
    """Start everything and serve HTTP(S) until SIGINT/SIGTERM, then stop within
    ``settings.shutdown_grace_seconds`` (see the module docstring)."""
    import uvicorn

    from covidet.app.server import create_app

    grace = float(getattr(settings, "shutdown_grace_seconds", 30.0))
    services = start_services(settings, host=host, dicom_port=dicom_port, mqtt=mqtt, predictor=predictor)
    server: _StoppingServer | None = None
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
            # Requests still running when the grace is over are cancelled (their clients get no
            # answer, so they still have what they sent): a slow upload cannot hold the stop.
            # (uvicorn annotates it int; at run time it is asyncio's timeout, which takes the float)
            timeout_graceful_shutdown=grace,  # type: ignore[arg-type]
        )
        server = _server(config, services, grace)
        scheme = "https" if ssl_certfile else "http"
        logger.info("web app and API on %s://%s:%d (not for clinical use)", scheme, host, port)
        if on_started is not None:
            on_started(services)
        previous = _quiet_signals()
        try:
            server.run()
        finally:
            restore_handlers(previous)
    finally:
        deadline = server.deadline if server is not None and server.deadline else time.monotonic() + grace
        clean = services.stop(deadline=deadline)
        if server is not None and server.deadline:
            logger.info("covidet stopped %.1f s after the signal", time.monotonic() - server.signalled_at)
        if not clean and threading.current_thread() is threading.main_thread():
            _exit_when_done()


class _StoppingServer(Protocol):
    """What :func:`run_services` uses of the server :func:`_server` makes."""

    #: ``time.monotonic()`` at the first SIGINT/SIGTERM, and the end of the grace from then (``None``
    #: until a signal came).
    signalled_at: float
    deadline: float | None

    def run(self) -> None: ...


def _server(config: uvicorn.Config, services: Services, grace: float) -> _StoppingServer:
    """uvicorn's server, plus: at the first SIGINT/SIGTERM the other ways in start stopping at once
    (on their own thread), and the shutdown deadline (``deadline``) is set from that moment."""
    import uvicorn

    class Server(uvicorn.Server):
        signalled_at = 0.0
        deadline: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.deadline is None:
                self.signalled_at = time.monotonic()
                self.deadline = self.signalled_at + grace
                logger.info(
                    "%s: stopping covidet (work in progress gets up to %.0f s)",
                    signal.Signals(sig).name,
                    grace,
                )
                logging.getLogger("uvicorn.error").addFilter(_cancelled_at_shutdown)
                threading.Thread(
                    target=services.stop_intake, args=(self.deadline,), name="stopping", daemon=True
                ).start()
            super().handle_exit(sig, frame)

    return Server(config)


def _cancelled_at_shutdown(record: logging.LogRecord) -> bool:
    """uvicorn logs each request it cancels at the end of the grace as "Exception in ASGI
    application" with the CancelledError's traceback: expected, so one line instead."""
    if record.exc_info and record.exc_info[0] is asyncio.CancelledError:
        logger.warning(
            "a request still running at the end of the grace was cancelled (its client got no answer)"
        )
        return False
    return True


def _exit_when_done() -> None:
    """Some thread was still busy when the grace ended (an analysis in the middle of a detector
    call, a commit waiting for a lock). End the process with status 0 once the caller is done,
    without running the interpreter's finalisation under it (a thread stopped inside torch at
    interpreter exit aborts the process)."""

    def exit_now() -> None:
        logging.shutdown()
        os._exit(0)

    atexit.register(exit_now)


def _quiet_signals() -> dict[int, SignalHandler]:
    """While uvicorn serves, its own SIGINT/SIGTERM handlers stop it gracefully; afterwards it raises
    the signal again to the handler it found. Install one that does nothing, so the services are then
    stopped by ``run_services`` instead of the process dying (SIGTERM) or a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def after_uvicorn(signum: int, _frame: FrameType | None) -> None:
        logger.debug("%s: covidet is stopping", signal.Signals(signum).name)

    return install_handler(after_uvicorn)
