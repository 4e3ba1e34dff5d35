"""What ``covidet demo`` says and does once its servers run: the banner, the simulated devices, and
the line that says every image has been assessed.

:meth:`DemoRun.simulate` runs on the demo's announcer thread: it waits until the web server listens,
prints the URL and the credentials (:meth:`DemoRun.banner`), runs the device simulator
(:func:`covidet.simulate.runner.run_simulation`: real chest X-rays over DICOM C-STORE and, with a
broker, vital signs over MQTT), prints what it sent, and then polls the database
(:func:`covidet.store.stats_queries.assessment_progress`) until every stored image is assessed. Setting
:attr:`DemoRun.stop` ends it at its next wait. Output goes to ``out`` (a terminal), line by line.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from covidet import DISCLAIMER
from covidet.app.broker import Mosquitto
from covidet.app.demo_accounts import DemoAccounts
from covidet.app.processes import wait_for_port
from covidet.config import Settings

if TYPE_CHECKING:  # imported when the demo runs (the store and the runner pull in the whole system)
    from covidet.app.runner import Services
    from covidet.store import Database

__all__ = ["DemoRun", "say"]

#: Readings each simulated bedside monitor sends per patient, and at what pace.
_VITALS_PER_PATIENT = 10
_VITALS_RATE = 20.0
_VITALS_INTERVAL_S = 60.0


def say(out: TextIO, text: str = "") -> None:
    """Write one line to ``out`` and flush it (the user watches a terminal)."""
    out.write(text + "\n")
    out.flush()


@dataclass
class DemoRun:
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
        """Print where everything is and how to sign in."""
        accounts = self.accounts
        say(self.out, f"covidet demo ({DISCLAIMER})")
        say(self.out, f"  Web app:      {self.url}")
        say(self.out, f"  Admin:        {accounts.admin} / {accounts.admin_password}")
        say(self.out, f"  Radiologist:  {accounts.radiologist} / {accounts.radiologist_password}")
        say(self.out, f"  API docs:     {self.url}docs")
        say(
            self.out,
            f"  DICOM:        {self.settings.ae_title} on 127.0.0.1:{self.dicom_port} "
            f"(modality AE title {accounts.modality_ae})",
        )
        if self.broker is not None:
            say(
                self.out,
                f"  MQTT:         Mosquitto on 127.0.0.1:{self.broker.port} "
                f"(sensor {accounts.sensor_username}, "
                f"topic covidet/devices/{accounts.sensor_device_id}/vitals)",
            )
        else:
            say(
                self.out,
                "  MQTT:         off: mosquitto is not installed, so no vital signs "
                "(install the Debian package 'mosquitto')",
            )
        kept = "deleted on exit" if self.temporary else "kept"
        say(self.out, f"  Data:         {self.home} ({kept})")

    def simulate(self, services: Services) -> None:
        """Announce, then run the simulator and report; on the announcer thread."""
        from covidet.simulate.runner import SimulationConfig, run_simulation

        if not wait_for_port(self.port, timeout=120, stop=self.stop):
            return
        self.banner()
        if self.dataset is None:
            say(
                self.out,
                "No dataset found: set COVIDET_DATA to the chest X-ray dataset (or a folder of X-rays); "
                "the servers run without simulated devices.",
            )
            say(self.out, "Press Ctrl-C to stop.")
            return
        vitals = self.broker is not None
        say(
            self.out,
            f"Simulating: {self.limit} real chest X-rays (val split of {self.dataset}) over DICOM"
            + (
                f", and {_VITALS_PER_PATIENT} vital-sign readings per patient over MQTT."
                if vitals
                else " (no vital signs)."
            ),
        )
        say(self.out, "The worklist fills as the detector assesses them. Press Ctrl-C to stop.")
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
            vitals_count=_VITALS_PER_PATIENT,
            vitals_rate=_VITALS_RATE,
            vitals_interval_s=_VITALS_INTERVAL_S,
        )
        begun = time.monotonic()
        try:
            report = run_simulation(config)
        except (OSError, ValueError) as exc:
            say(self.out, f"simulator: cannot run: {exc}")
            return
        if self.stop.is_set():
            return
        images = report.images
        line = f"simulator: {images.acknowledged} of {images.total} images stored" if images else "simulator:"
        if report.vitals is not None:
            sent = report.vitals
            line += f", {sent.acknowledged} of {sent.published} vital-sign messages acknowledged"
        say(self.out, f"{line} ({time.monotonic() - begun:.1f} s)")
        self._watch(services.runtime.db, expected=images.acknowledged if images else 0)

    def _watch(self, db: Database, *, expected: int) -> None:
        """Print one line when every stored image has been assessed (or failed)."""
        from covidet.store import ImageStatus
        from covidet.store.stats_queries import assessment_progress

        if expected <= 0:
            return
        while not self.stop.wait(1.0):
            try:
                with db.session() as session:
                    progress = assessment_progress(session)
            except Exception:  # the database is closing: the demo is stopping
                return
            analysed = progress.status(ImageStatus.ANALYSED)
            done = analysed + progress.status(ImageStatus.FAILED)
            # An image is marked analysed a moment before its triage is stored: wait for both.
            if done >= expected and progress.triaged >= analysed:
                urgent, high, routine = (progress.priority(p) for p in ("urgent", "high", "routine"))
                say(
                    self.out,
                    f"assessed: {analysed} of {progress.images} images "
                    f"({urgent} urgent, {high} high, {routine} routine) "
                    f"{time.monotonic() - self.started_at:.0f} s after start: open {self.url}worklist",
                )
                return
