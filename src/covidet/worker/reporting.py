"""The old import path of :mod:`covidet.reports.from_store` (reports built from the store rows) and
of :func:`covidet.pacs.send.send_to_pacs`: every name it had is importable here."""

from covidet.pacs.send import send_to_pacs
from covidet.reports.from_store import (
    ReportNotAvailable,
    build_report,
    forward_report,
    report_context,
    resolve_image_id,
    write_image_report,
)

__all__ = [
    "ReportNotAvailable",
    "build_report",
    "forward_report",
    "report_context",
    "resolve_image_id",
    "send_to_pacs",
    "write_image_report",
]
