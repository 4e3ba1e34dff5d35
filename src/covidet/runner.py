"""The old import path of :mod:`covidet.app.runner` (``covidet serve``'s services in one process):
every name it had is importable here."""

from covidet.app.runner import Services, run_services, start_services

__all__ = ["Services", "run_services", "start_services"]
