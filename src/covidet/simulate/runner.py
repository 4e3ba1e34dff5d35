"""One simulation run: a modality sending X-rays and bedside sensors publishing the same patients'
vital signs, side by side (two threads, as independent devices would), summarised in one report.
This is what ``covidet simulate`` runs.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from covidet.simulate.modality import ModalityReport, ModalitySimulator, XRayCase, load_cases
from covidet.simulate.records import PatientJson, SimulationJson
from covidet.simulate.sensors import SensorSimulator, SimulatedPatient, VitalsReport, vital_messages

__all__ = ["SimulationConfig", "SimulationReport", "patients_of", "run_simulation"]

logger = logging.getLogger(__name__)


@dataclass
class SimulationConfig:
    """Everything a run needs; the defaults are those of ``covidet simulate``.

    ``source`` is a dataset folder (with manifest.csv), a folder of images, or a list of files.
    ``vitals_count`` readings per patient, ``vitals_interval_s`` seconds of simulated time apart
    (the last one now), published at ``vitals_rate`` messages per second (``None``: unthrottled).
    ``sensor_device_id`` names the topic and is required when ``vitals`` is on.
    """

    source: Path | list[Path]
    split: str | None = "val"
    limit: int | None = 10
    images: bool = True
    vitals: bool = True
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    called_ae: str = "COVIDET"
    calling_ae: str = "COVIDET-SIM"
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls_ca: Path | None = None
    sensor_device_id: int | None = None
    vitals_count: int = 10
    vitals_rate: float | None = 20.0
    vitals_interval_s: float = 60.0
    vitals_end: datetime | None = None
    seed: int = 0
    timeout: float = 30.0
    progress: bool = False


@dataclass
class SimulationReport:
    """The outcome of a run; ``images`` / ``vitals`` are ``None`` when that device was switched off."""

    patients: list[PatientJson] = field(default_factory=list)
    images: ModalityReport | None = None
    vitals: VitalsReport | None = None

    @property
    def ok(self) -> bool:
        """True when every image and every vitals message was acknowledged."""
        return not (self.images and self.images.failed) and not (self.vitals and self.vitals.failed)

    def to_json(self) -> SimulationJson:
        return {
            "ok": self.ok,
            "patients": self.patients,
            "images": self.images.to_json() if self.images else None,
            "vitals": self.vitals.to_json() if self.vitals else None,
        }


def patients_of(cases: list[XRayCase]) -> list[SimulatedPatient]:
    """The distinct patients of ``cases`` in order of first appearance, with their first label."""
    seen: dict[str, SimulatedPatient] = {}
    for case in cases:
        seen.setdefault(case.patient_key, SimulatedPatient(case.patient_key, case.label))
    return list(seen.values())


def run_simulation(config: SimulationConfig) -> SimulationReport:
    """Send the images and publish the vitals of ``config``; never raises for peer or network errors.

    Raises:
        FileNotFoundError, ValueError: no images to take the patients from, or vitals without a
            ``sensor_device_id``.
    """
    if config.vitals and config.sensor_device_id is None:
        raise ValueError("vitals need the sensor device id (--sensor-device-id), or switch them off")
    cases = load_cases(config.source, split=config.split, limit=config.limit)
    patients = patients_of(cases)
    images_per_patient = Counter(case.patient_key for case in cases)
    report = SimulationReport(
        patients=[
            {"patient_id": p.key, "label": p.label, "images": images_per_patient[p.key]} for p in patients
        ]
    )
    logger.info("simulating %d image(s) of %d patient(s)", len(cases), len(patients))

    def send_images() -> ModalityReport:
        modality = ModalitySimulator(
            config.dicom_host,
            config.dicom_port,
            called_ae=config.called_ae,
            calling_ae=config.calling_ae,
            timeout=config.timeout,
        )
        return modality.send(cases, progress=config.progress, bar_position=0)

    def publish_vitals() -> VitalsReport:
        assert config.sensor_device_id is not None
        sensors = SensorSimulator(
            config.broker_host,
            config.broker_port,
            device_id=config.sensor_device_id,
            username=config.mqtt_username,
            password=config.mqtt_password,
            tls_ca=config.mqtt_tls_ca,
            timeout=config.timeout,
        )
        messages = vital_messages(
            patients,
            count=config.vitals_count,
            seed=config.seed,
            end=config.vitals_end,
            interval_s=config.vitals_interval_s,
        )
        return sensors.publish(
            messages,
            rate=config.vitals_rate,
            progress=config.progress,
            bar_position=1 if config.images else 0,
        )

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="covidet-sim") as pool:
        images = pool.submit(send_images) if config.images else None
        vitals = pool.submit(publish_vitals) if config.vitals else None
        report.images = images.result() if images else None
        report.vitals = vitals.result() if vitals else None
    return report
