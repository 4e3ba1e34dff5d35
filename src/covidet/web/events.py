"""The old import path of :mod:`covidet.api.routes.events` (``GET /api/v1/events``, the live
worklist's server-sent events), which is part of the API: every name it had is importable here."""

from covidet.api.routes import events as _moved
from covidet.api.routes.events import *  # noqa: F403 (the public names of the new home)

__all__ = list(_moved.__all__)
