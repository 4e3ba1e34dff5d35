"""``covidet demo``: the whole system on one machine, fed by simulated devices, in one command.

What it does, in order:

1. makes an embedded deployment in a fresh temporary folder (deleted on exit; ``--home DIR`` keeps
   it): SQLite database, image store, in-process analysis worker, the shipped model (or
   ``COVIDET_MODEL``);
2. creates two users with random passwords, ``demo-admin`` (admin) and ``demo-radiologist``
   (radiologist), and registers a modality (calling AE title ``COVIDET-SIM``, the simulator's) and a
   bedside sensor;
3. starts a private Mosquitto on a free loopback port, with a password file and ACL generated from the
   device table (:func:`covidet.ingest.mqtt.write_mosquitto_files`), with
   :func:`covidet.app.broker.start_mosquitto`, when ``mosquitto`` is installed;
   without it, vital signs are skipped (the message says how to get them);
4. starts the web app and API, the DICOM receiver and the MQTT subscriber on 127.0.0.1
   (:func:`covidet.runner.run_services`);
5. once the web server listens, prints the URL and the credentials, and runs the device simulator in
   a background thread: a dozen real chest X-rays of the dataset's val split over DICOM C-STORE and ten
   vital-sign readings per patient over MQTT (:func:`covidet.simulate.runner.run_simulation`); then
   prints a line when every image has been assessed.

``Ctrl-C`` (or SIGTERM) stops the web server, the receivers, the worker and the broker, and removes
the temporary folder. :func:`register_demo` and :func:`start_mosquitto` (re-exported from
:mod:`covidet.app.broker`) are reusable (the browser tests start their deployment with them).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import covidet
from covidet import DISCLAIMER
from covidet.app.broker import BrokerError, Mosquitto, find_mosquitto, start_mosquitto
from covidet.app.processes import free_port, port_is_free, wait_for_port
from covidet.config import Settings

if TYPE_CHECKING:  # imported when the demo runs (the store and the runner pull in the whole system)
    from sqlalchemy.orm import Session

    from covidet.runner import Services
    from covidet.store import Database

__all__ = [
    "DEMO_ADMIN",
    "DEMO_MODALITY_AE",
    "DEMO_RADIOLOGIST",
    "DemoAccounts",
    "DemoError",
    "Mosquitto",
    "default_dataset",
    "find_mosquitto",
    "free_port",
    "register_demo",
    "run_demo",
    "start_mosquitto",
    "wait_for_port",
]

logger = logging.getLogger(__name__)

DEMO_ADMIN = "demo-admin"
DEMO_RADIOLOGIST = "demo-radiologist"
#: The simulator's calling AE title (``covidet simulate --calling-ae``), registered as the modality.
DEMO_MODALITY_AE = "COVIDET-SIM"
DEMO_MODALITY = "demo-modality"
DEMO_SENSOR = "demo-bedside-monitor"
#: MQTT user of the covidet vitals subscriber in the private broker.
DEMO_INGEST_USER = "covidet-ingest"


class DemoError(RuntimeError):
    """The demo cannot start; the message says why and what to do."""


# ------------------------------------------------------------------------------------ accounts


@dataclass(frozen=True)
class DemoAccounts:
    """Who and what the demo registered: the two users' passwords, and the devices' credentials."""

    admin: str
    admin_password: str
    radiologist: str
    radiologist_password: str
    modality_ae: str
    sensor_device_id: int
    sensor_username: str | None
    sensor_password: str | None


def _set_user(session: Session, username: str, role: str, password: str) -> None:
    from covidet.api.auth import hash_password
    from covidet.store import review_queries as rq

    user = rq.user_by_username(session, username)
    if user is None:
        user = rq.create_user(session, username, password_hash=hash_password(password), role=role)
        action = "user.create"
    else:  # a kept --home: the demo's users get this run's passwords
        rq.update_user(session, user.id, active=True, role=role, password_hash=hash_password(password))
        action = "user.update"
    rq.add_audit_event(
        session, action, object_type="user", object_id=user.id, details={"username": username, "via": "demo"}
    )


def register_demo(
    db: Database,
    *,
    admin: str = DEMO_ADMIN,
    radiologist: str = DEMO_RADIOLOGIST,
    admin_password: str | None = None,
    radiologist_password: str | None = None,
    modality_ae: str = DEMO_MODALITY_AE,
) -> DemoAccounts:
    """Create (or, in a kept folder, reset) the demo's users and register its modality and a new
    sensor. Passwords default to random ones (shown once, by the caller)."""
    from covidet.store import queries

    admin_password = admin_password or secrets.token_urlsafe(12)
    radiologist_password = radiologist_password or secrets.token_urlsafe(12)
    with db.session(write=True) as session:
        _set_user(session, admin, "admin", admin_password)
        _set_user(session, radiologist, "radiologist", radiologist_password)
        if not any(d.ae_title == modality_ae for d in queries.list_devices(session)):
            queries.create_device(session, DEMO_MODALITY, "modality", ae_title=modality_ae)
        # A sensor's MQTT password is shown once and only its hash kept, so each run registers its
        # own sensor (in a kept folder, earlier ones stay in the device table).
        taken = {d.name for d in queries.list_devices(session)}
        name = DEMO_SENSOR
        suffix = 1
        while name in taken:
            suffix += 1
            name = f"{DEMO_SENSOR}-{suffix}"
        sensor = queries.create_device(session, name, "sensor")
    return DemoAccounts(
        admin=admin,
        admin_password=admin_password,
        radiologist=radiologist,
        radiologist_password=radiologist_password,
        modality_ae=modality_ae,
        sensor_device_id=sensor.device_id,
        sensor_username=sensor.mqtt_username,
        sensor_password=sensor.mqtt_password,
    )


def default_dataset(settings: Settings | None = None) -> Path | None:
    """The chest X-ray dataset: ``settings.data`` (``COVIDET_DATA``), else ``../shared/data/cxr``
    beside a source checkout. ``None`` when neither exists."""
    candidates = []
    if settings is not None and getattr(settings, "data", None):
        candidates.append(Path(settings.data).expanduser())
    elif os.environ.get("COVIDET_DATA"):
        candidates.append(Path(os.environ["COVIDET_DATA"]).expanduser())
    repo = Path(covidet.__file__).resolve().parents[2]
    candidates.append(repo.parent / "shared" / "data" / "cxr")
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


# ------------------------------------------------------------------------------------------- run


def _say(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


def _assessment_counts(db: Database) -> dict[str, int]:
    from sqlalchemy import func, select

    from covidet.store.models import Image

    with db.session() as session:
        statuses = dict(session.execute(select(Image.status, func.count()).group_by(Image.status)).all())
        priorities = dict(
            session.execute(
                select(Image.priority, func.count())
                .where(Image.priority.is_not(None))
                .group_by(Image.priority)
            ).all()
        )
    return {
        "images": sum(statuses.values()),
        **statuses,
        **{f"priority_{k}": v for k, v in priorities.items()},
    }


@dataclass
class _DemoRun:
    """State shared by the main thread and the announcer/simulator thread."""

    settings: Settings
    port: int
    dicom_port: int
    accounts: DemoAccounts
    broker: Mosquitto | None
    dataset: Path | None
    limit: int
    home: Path
    temporary: bool
    out: TextIO
    stop: threading.Event = field(default_factory=threading.Event)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def banner(self) -> None:
        accounts = self.accounts
        _say(self.out, f"covidet demo ({DISCLAIMER})")
        _say(self.out, f"  Web app:      {self.url}")
        _say(self.out, f"  Admin:        {accounts.admin} / {accounts.admin_password}")
        _say(self.out, f"  Radiologist:  {accounts.radiologist} / {accounts.radiologist_password}")
        _say(self.out, f"  API docs:     {self.url}docs")
        _say(
            self.out,
            f"  DICOM:        {self.settings.ae_title} on 127.0.0.1:{self.dicom_port} "
            f"(modality AE title {accounts.modality_ae})",
        )
        if self.broker is not None:
            _say(
                self.out,
                f"  MQTT:         Mosquitto on 127.0.0.1:{self.broker.port} "
                f"(sensor {accounts.sensor_username}, "
                f"topic covidet/devices/{accounts.sensor_device_id}/vitals)",
            )
        else:
            _say(
                self.out,
                "  MQTT:         off: mosquitto is not installed, so no vital signs "
                "(install the Debian package 'mosquitto')",
            )
        kept = "deleted on exit" if self.temporary else "kept"
        _say(self.out, f"  Data:         {self.home} ({kept})")

    def simulate(self, services: Services) -> None:
        """Announce, then run the simulator and report; on the announcer thread."""
        from covidet.simulate.runner import SimulationConfig, run_simulation

        if not wait_for_port(self.port, timeout=120, stop=self.stop):
            return
        self.banner()
        if self.dataset is None:
            _say(
                self.out,
                "No dataset found: set COVIDET_DATA to the chest X-ray dataset (or a folder of X-rays); "
                "the servers run without simulated devices.",
            )
            _say(self.out, "Press Ctrl-C to stop.")
            return
        vitals = self.broker is not None
        _say(
            self.out,
            f"Simulating: {self.limit} real chest X-rays (val split of {self.dataset}) over DICOM"
            + (", and 10 vital-sign readings per patient over MQTT." if vitals else " (no vital signs)."),
        )
        _say(self.out, "The worklist fills as the detector assesses them. Press Ctrl-C to stop.")
        if vitals and services.mqtt is not None:
            services.mqtt.wait_ready(15)
        config = SimulationConfig(
            source=self.dataset,
            split="val",
            limit=self.limit,
            vitals=vitals,
            dicom_host="127.0.0.1",
            dicom_port=self.dicom_port,
            called_ae=self.settings.ae_title,
            calling_ae=self.accounts.modality_ae,
            broker_host="127.0.0.1",
            broker_port=self.broker.port if self.broker else 1883,
            mqtt_username=self.accounts.sensor_username,
            mqtt_password=self.accounts.sensor_password,
            sensor_device_id=self.accounts.sensor_device_id,
            vitals_count=10,
            vitals_rate=20.0,
            vitals_interval_s=60.0,
        )
        begun = time.monotonic()
        try:
            report = run_simulation(config)
        except (OSError, ValueError) as exc:
            _say(self.out, f"simulator: cannot run: {exc}")
            return
        if self.stop.is_set():
            return
        images = report.images
        line = f"simulator: {images.acknowledged} of {images.total} images stored" if images else "simulator:"
        if report.vitals is not None:
            sent = report.vitals
            line += f", {sent.acknowledged} of {sent.published} vital-sign messages acknowledged"
        _say(self.out, f"{line} ({time.monotonic() - begun:.1f} s)")
        self._watch(services.runtime.db, expected=images.acknowledged if images else 0)

    def _watch(self, db: Database, *, expected: int) -> None:
        """Print one line when every stored image has been assessed (or failed)."""
        if expected <= 0:
            return
        while not self.stop.wait(1.0):
            try:
                counts = _assessment_counts(db)
            except Exception:  # the database is closing: the demo is stopping
                return
            done = counts.get("analysed", 0) + counts.get("failed", 0)
            urgent, high, routine = (counts.get(f"priority_{p}", 0) for p in ("urgent", "high", "routine"))
            # An image is marked analysed a moment before its triage is stored: wait for both.
            if done >= expected and urgent + high + routine >= counts.get("analysed", 0):
                _say(
                    self.out,
                    f"assessed: {counts.get('analysed', 0)} of {counts['images']} images "
                    f"({urgent} urgent, {high} high, {routine} routine) "
                    f"{time.monotonic() - self.started_at:.0f} s after start: open {self.url}worklist",
                )
                return


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
    from covidet.ingest.mqtt import write_mosquitto_files
    from covidet.runner import run_services
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
    run: _DemoRun | None = None
    announcer: threading.Thread | None = None
    previous: dict[int, Any] = {}
    serving = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        # While uvicorn serves, its own handler runs instead of this one; uvicorn re-raises the signal
        # to this handler after it stopped, which then has nothing left to do.
        if run is not None:
            run.stop.set()
        if not serving.is_set():
            raise KeyboardInterrupt

    try:
        ingest_password = secrets.token_urlsafe(18)
        demo_settings = settings.model_copy(
            update={
                "home": home_dir,
                "database_url": f"sqlite:///{home_dir / 'covidet.db'}",
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
        db = Database.from_settings(demo_settings)
        try:
            accounts = register_demo(db)
            binary = find_mosquitto()
            if binary is not None:

                def write_files(directory: Path) -> None:
                    with db.session() as session:
                        write_mosquitto_files(
                            session,
                            directory,
                            ingest_username=DEMO_INGEST_USER,
                            ingest_password=ingest_password,
                        )

                try:
                    broker = start_mosquitto(write_files, binary=binary, timeout=20.0)
                except BrokerError as exc:
                    raise DemoError(str(exc)) from None
                demo_settings = demo_settings.model_copy(update={"mqtt_broker_port": broker.port})
            else:
                logger.warning("mosquitto is not installed: the demo runs without vital signs")
        finally:
            db.dispose()
        dicom_port = free_port()
        run = _DemoRun(
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

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
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
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if temporary:
            shutil.rmtree(home_dir, ignore_errors=True)
        _say(out, "covidet demo stopped.")
