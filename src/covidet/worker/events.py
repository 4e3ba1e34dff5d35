"""Events for live updates: an image was analysed, a priority changed, an alert was raised.

Publishers never block on subscribers. In one process (embedded deployment) :class:`InProcessEvents`
calls subscribers directly; across processes (Celery workers) :class:`RedisEvents` publishes JSON on
the Redis channel :data:`CHANNEL`, where the web app's server-sent-events stream listens.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = ["CHANNEL", "Event", "EventPublisher", "InProcessEvents", "RedisEvents"]

logger = logging.getLogger(__name__)

#: Redis pub/sub channel of covidet events.
CHANNEL = "covidet:events"

#: An event: JSON-serialisable, with a ``type`` key (the shapes the analysis publishes are in
#: :mod:`covidet.worker.analysis_events`).
Event = Mapping[str, object]


class EventPublisher(Protocol):
    def publish(self, event: Event) -> None:
        """Send ``event`` (JSON-serialisable, with a ``type`` key) to whoever listens; never raises."""


class InProcessEvents:
    """Subscribers are callables run on the publisher's thread; a failing one is logged and skipped."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self.published: int = 0

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Register ``callback``; returns a function that unregisters it."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
            self.published += 1
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                logger.exception("event subscriber failed on %s", event.get("type"))


class RedisEvents:
    """Publishes events as JSON on a Redis channel (at-most-once, like any pub/sub)."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)

    def publish(self, event: Event) -> None:
        try:
            self._client.publish(CHANNEL, json.dumps(event, default=str))
        except Exception:  # the database holds the truth; a lost live update is only a late refresh
            logger.exception("could not publish %s event to Redis", event.get("type"))
