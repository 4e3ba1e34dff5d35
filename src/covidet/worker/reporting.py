"""The old import path of :mod:`covidet.reports.from_store` (reports built from the store rows) and
of :func:`covidet.pacs.send.send_to_pacs`: every name it had is importable here."""

from covidet.pacs.send import send_to_pacs
from covidet.reports import from_store as _moved
from covidet.reports.from_store import *  # noqa: F403 (the public names of the new home)

__all__ = [*_moved.__all__, "send_to_pacs"]
