"""The old import path of :mod:`covidet.api.routes.events` (``GET /api/v1/events``, the live
worklist's server-sent events), which is part of the API: every name it had is importable here."""

from covidet.api.routes.events import (
    HEARTBEAT_SECONDS,
    MAX_STREAM_SECONDS,
    POLL_SECONDS,
    close_event_streams,
    format_event,
    router,
)

__all__ = [
    "HEARTBEAT_SECONDS",
    "MAX_STREAM_SECONDS",
    "POLL_SECONDS",
    "close_event_streams",
    "format_event",
    "router",
]
