"""``covidet demo``: the whole system on one machine, fed by simulated devices, in one command.

What it does, in order:

1. makes an embedded deployment in a fresh temporary folder (deleted on exit; ``--home DIR`` keeps
   it): SQLite database, image store, in-process analysis worker, the shipped model (or
   ``COVIDET_MODEL``);
2. creates two users with random passwords, ``demo-admin`` (admin) and ``demo-radiologist``
   (radiologist), and registers a modality (calling AE title ``COVIDET-SIM``, the simulator's) and a
   bedside sensor (:func:`covidet.app.demo_accounts.register_demo`);
3. starts a private Mosquitto on a free loopback port, with a password file and ACL generated from the
   device table (:func:`covidet.ingest.mqtt.write_mosquitto_files`), with
   :func:`covidet.app.broker.start_mosquitto`, when ``mosquitto`` is installed;
   without it, vital signs are skipped (the message says how to get them);
4. starts the web app and API, the DICOM receiver and the MQTT subscriber on 127.0.0.1
   (:func:`covidet.app.runner.run_services`);
5. once the web server listens, prints the URL and the credentials, and runs the device simulator in
   a background thread (:class:`covidet.app.demo_announcer.DemoRun`): a dozen real chest X-rays of the
   dataset's val split over DICOM C-STORE and ten vital-sign readings per patient over MQTT; then
   prints a line when every image has been assessed.

``Ctrl-C`` (or SIGTERM) stops the web server, the receivers, the worker and the broker, and removes
the temporary folder. The old import path :mod:`covidet.demo` re-exports these names.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import covidet
from covidet.app.broker import BrokerError, Mosquitto, find_mosquitto, start_mosquitto
from covidet.app.demo_accounts import register_demo
from covidet.app.demo_announcer import DemoRun, say
from covidet.app.processes import free_port, port_is_free
from covidet.app.signals import SignalHandler, install_handler, restore_handlers
from covidet.config import Settings

if TYPE_CHECKING:  # imported when the demo runs (the store and the runner pull in the whole system)
    from covidet.app.runner import Services
    from covidet.store import Database

__all__ = ["DEMO_INGEST_USER", "DemoError", "default_dataset", "run_demo"]

logger = logging.getLogger(__name__)

#: MQTT user of the covidet vitals subscriber in the private broker.
DEMO_INGEST_USER = "covidet-ingest"


class DemoError(RuntimeError):
    """The demo cannot start; the message says why and what to do."""


def default_dataset(settings: Settings | None = None) -> Path | None:
    """The chest X-ray dataset: ``settings.data`` (``COVIDET_DATA``), else ``../shared/data/cxr``
    beside a source checkout. ``None`` when neither exists."""
    candidates = []
    if settings is not None and settings.data:
        candidates.append(Path(settings.data).expanduser())
    elif os.environ.get("COVIDET_DATA"):
        candidates.append(Path(os.environ["COVIDET_DATA"]).expanduser())
    repo = Path(covidet.__file__).resolve().parents[2]
    candidates.append(repo.parent / "shared" / "data" / "cxr")
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


def _demo_settings(settings: Settings, home: Path, ingest_password: str) -> Settings:
    """The caller's settings (model, device, threads, log level) with the demo's own deployment:
    ``home``, a SQLite database in it, the in-process queue, the private broker's user, no PACS."""
    return settings.model_copy(
        update={
            "home": home,
            "database_url": f"sqlite:///{home / 'covidet.db'}",
            "queue": "inprocess",
            "environment": "development",
            "mqtt_broker_host": "127.0.0.1",
            "mqtt_username": DEMO_INGEST_USER,
            "mqtt_password": ingest_password,
            "mqtt_tls_ca": None,
            "mqtt_client_id": f"covidet-demo-{os.getpid()}",
            "mosquitto_dir": None,
            "pacs_host": None,
        }
    )


def _start_broker(db: Database, ingest_password: str) -> Mosquitto | None:
    """The private Mosquitto, its password file and ACL from the device table; ``None`` (logged) when
    ``mosquitto`` is not installed.

    Raises:
        DemoError: the broker is installed but did not start.
    """
    from covidet.ingest.mqtt import write_mosquitto_files

    binary = find_mosquitto()
    if binary is None:
        logger.warning("mosquitto is not installed: the demo runs without vital signs")
        return None

    def write_files(directory: Path) -> None:
        with db.session() as session:
            write_mosquitto_files(
                session, directory, ingest_username=DEMO_INGEST_USER, ingest_password=ingest_password
            )

    try:
        return start_mosquitto(write_files, binary=binary, timeout=20.0)
    except BrokerError as exc:
        raise DemoError(str(exc)) from None


def run_demo(
    settings: Settings,
    *,
    port: int = 8000,
    home: Path | None = None,
    data: Path | None = None,
    limit: int = 12,
    out: TextIO | None = None,
) -> None:
    """Run the demo until SIGINT or SIGTERM (see the module docstring).

    ``settings`` are the caller's (model, device, threads, log level are kept); the deployment's own
    (home, SQLite database, in-process queue, MQTT) are set here.

    Raises:
        DemoError: the port is taken, or a part could not start.
    """
    from covidet.app.runner import run_services
    from covidet.store import Database

    out = out or sys.stdout
    if not port_is_free(port):
        raise DemoError(f"port {port} on 127.0.0.1 is in use: pass another one with --port")
    temporary = home is None
    home_dir = (
        Path(tempfile.mkdtemp(prefix="covidet-demo-")) if home is None else home.expanduser().absolute()
    )
    home_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # owner only: it holds patient data
    broker: Mosquitto | None = None
    run: DemoRun | None = None
    announcer: threading.Thread | None = None
    previous: dict[int, SignalHandler] = {}
    serving = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        # While uvicorn serves, its own handler runs instead of this one; uvicorn re-raises the signal
        # to this handler after it stopped, which then has nothing left to do.
        if run is not None:
            run.stop.set()
        if not serving.is_set():
            raise KeyboardInterrupt

    try:
        ingest_password = secrets.token_urlsafe(18)
        demo_settings = _demo_settings(settings, home_dir, ingest_password)
        db = Database.from_settings(demo_settings)
        try:
            accounts = register_demo(db)
            broker = _start_broker(db, ingest_password)
            if broker is not None:
                demo_settings = demo_settings.model_copy(update={"mqtt_broker_port": broker.port})
        finally:
            db.dispose()
        dicom_port = free_port()
        run = DemoRun(
            settings=demo_settings,
            port=port,
            dicom_port=dicom_port,
            accounts=accounts,
            broker=broker,
            dataset=data.expanduser() if data is not None else default_dataset(settings),
            limit=limit,
            home=home_dir,
            temporary=temporary,
            out=out,
        )
        current = run

        def on_started(services: Services) -> None:
            nonlocal announcer
            serving.set()
            announcer = threading.Thread(
                target=current.simulate, args=(services,), name="covidet-demo-simulator", daemon=True
            )
            announcer.start()

        previous = install_handler(request_stop)
        run_services(
            demo_settings,
            host="127.0.0.1",
            port=port,
            dicom_port=dicom_port,
            mqtt=broker is not None,
            on_started=on_started,
        )
    except KeyboardInterrupt:
        logger.info("interrupted before the servers started")
    finally:
        if run is not None:
            run.stop.set()
        if announcer is not None:
            announcer.join(10)
        if broker is not None:
            broker.stop()
        restore_handlers(previous)
        if temporary:
            shutil.rmtree(home_dir, ignore_errors=True)
        say(out, "covidet demo stopped.")
