"""``covidet demo`` (the old import path): the demo lives in the wiring layer, :mod:`covidet.app`.

- :mod:`covidet.app.demo`: :func:`run_demo` (the whole system on loopback, fed by simulated devices,
  until Ctrl-C), :class:`DemoError`, :func:`default_dataset`;
- :mod:`covidet.app.demo_accounts`: :func:`register_demo` (the demo's users and devices),
  :class:`DemoAccounts` and the names it registers;
- :mod:`covidet.app.demo_announcer`: the banner, the simulator run and the "assessed" line;
- :mod:`covidet.app.broker` and :mod:`covidet.app.processes`: :func:`start_mosquitto`,
  :class:`Mosquitto`, :func:`find_mosquitto`, :func:`free_port`, :func:`wait_for_port`.

Every name this module exported before the split is re-exported here, unchanged.
"""

from __future__ import annotations

from covidet.app.broker import Mosquitto, find_mosquitto, start_mosquitto
from covidet.app.demo import DEMO_INGEST_USER, DemoError, default_dataset, run_demo
from covidet.app.demo_accounts import (
    DEMO_ADMIN,
    DEMO_MODALITY,
    DEMO_MODALITY_AE,
    DEMO_RADIOLOGIST,
    DEMO_SENSOR,
    DemoAccounts,
    register_demo,
)
from covidet.app.processes import free_port, wait_for_port

__all__ = [
    "DEMO_ADMIN",
    "DEMO_INGEST_USER",
    "DEMO_MODALITY",
    "DEMO_MODALITY_AE",
    "DEMO_RADIOLOGIST",
    "DEMO_SENSOR",
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
