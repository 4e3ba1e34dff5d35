"""The error of ``covidet export`` (shared by the export's modules)."""

from __future__ import annotations

__all__ = ["ExportError"]


class ExportError(RuntimeError):
    """The export could not be done (missing runtime, data or a failed conversion); says why."""
