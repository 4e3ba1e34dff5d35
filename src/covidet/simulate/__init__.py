"""Device simulator: an X-ray modality (DICOM C-STORE) and bedside sensors (MQTT) that replay real
chest X-rays and plausible vital-sign series of the same patients. Torch-free."""

from covidet.simulate.modality import ModalityReport, ModalitySimulator, XRayCase, load_cases
from covidet.simulate.runner import SimulationConfig, SimulationReport, run_simulation
from covidet.simulate.sensors import (
    VITAL_FIELDS,
    VITAL_RANGES,
    SensorSimulator,
    SimulatedPatient,
    VitalsMessage,
    VitalsReport,
    vital_messages,
    vital_series,
)

__all__ = [
    "VITAL_FIELDS",
    "VITAL_RANGES",
    "ModalityReport",
    "ModalitySimulator",
    "SensorSimulator",
    "SimulatedPatient",
    "SimulationConfig",
    "SimulationReport",
    "VitalsMessage",
    "VitalsReport",
    "XRayCase",
    "load_cases",
    "run_simulation",
    "vital_messages",
    "vital_series",
]
