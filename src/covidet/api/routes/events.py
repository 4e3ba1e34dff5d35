"""``GET /api/v1/events``: the runtime's events as a server-sent-events stream (live worklist).

Each event of the analysis runtime (``analysed``, ``priority``, ``alert``, ``failed``; see
:mod:`covidet.worker.events`) becomes one SSE message whose ``event`` field is the type and whose
``data`` is the event as JSON. A comment line is sent every :data:`HEARTBEAT_SECONDS` so that proxies
keep the connection open and the browser learns early when it is gone.

Where the events come from:

* embedded deployment (``settings.queue == "inprocess"``): the runtime's
  :class:`~covidet.worker.events.InProcessEvents`. Subscribers run on the publisher's thread (an
  analysis or MQTT thread), so the callback only hands the event to the stream's event loop with
  ``loop.call_soon_threadsafe``; it never blocks the publisher.
* Celery deployment: the Redis pub/sub channel :data:`~covidet.worker.events.CHANNEL`, read with
  ``redis.asyncio``.
* an app without a runtime (``create_app`` alone): heartbeats only.

A stream ends when the client disconnects (Starlette cancels it), after :data:`MAX_STREAM_SECONDS`
(the browser's ``EventSource`` reconnects by itself), and when the server shuts down. Uvicorn waits for
open responses before it stops, so a stream that never ended would hold ``Ctrl-C`` forever: every
stream checks, twice a second, whether uvicorn was told to exit (its signal handler is the running
server's bound ``handle_exit``) or whether :func:`close_event_streams` was called (servers run in a
thread, as in tests, have no signal handler).

The route is left out of the OpenAPI document on purpose: it never ends, which schema-driven test
tools cannot handle. It is documented in docs/web.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from covidet.api.auth import RadiologistUser, record_audit
from covidet.api.deps import DatabaseDep

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from starlette.applications import Starlette

    from covidet.worker.events import Event

__all__ = [
    "HEARTBEAT_SECONDS",
    "MAX_STREAM_SECONDS",
    "POLL_SECONDS",
    "close_event_streams",
    "format_event",
    "router",
]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["events"])

#: Seconds between heartbeat comments on an idle stream.
HEARTBEAT_SECONDS = 15.0
#: How often a waiting stream looks for a shutdown, seconds (the longest a shutdown waits for it).
POLL_SECONDS = 0.5
#: A stream ends after this long; the browser reconnects (bounds what a lost shutdown signal can hold).
MAX_STREAM_SECONDS = 30 * 60.0
#: Events waiting for a slow client; beyond it they are dropped and the client is told to resync.
QUEUE_SIZE = 1000
#: Milliseconds the browser waits before it reconnects a dropped stream.
RETRY_MS = 3000

#: An event as a stream hands it on: a JSON object with a ``type`` key.
StreamEvent = dict[str, object]


def format_event(event: Mapping[str, object], event_id: int) -> str:
    """One SSE message: ``event`` (the type), ``id`` and ``data`` (JSON on one line)."""
    kind = str(event.get("type", "message")).replace("\n", " ").replace("\r", " ")
    data = json.dumps(event, default=str, separators=(",", ":"))
    return f"event: {kind}\nid: {event_id}\ndata: {data}\n\n"


def close_event_streams(app: Starlette) -> None:
    """End every open event stream of ``app`` within :data:`POLL_SECONDS` (and refuse new ones).

    Call it before stopping a uvicorn server that does not own the signal handlers (one run in a
    thread); under ``covidet serve`` the streams notice the shutdown by themselves.
    """
    app.state.event_streams_closed = True


def _uvicorn_exiting() -> bool:
    """Whether a uvicorn server running in this process' main thread was told to exit.

    While uvicorn serves, its ``Server.handle_exit`` is the SIGINT handler (uvicorn >= 0.29 installs it
    with ``signal.signal``); the bound method leads to the server and its ``should_exit`` flag.
    """
    import uvicorn

    server = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    return isinstance(server, uvicorn.Server) and bool(server.should_exit)


def _closing(app: Starlette) -> bool:
    return bool(getattr(app.state, "event_streams_closed", False)) or _uvicorn_exiting()


class _Subscribable(Protocol):
    """What :class:`~covidet.worker.events.InProcessEvents` offers a stream."""

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]: ...


class _Source(Protocol):
    """Where a stream's events come from: ``get`` waits at most ``timeout`` seconds (``None``: no
    event came)."""

    async def start(self) -> None: ...

    async def get(self, timeout: float) -> StreamEvent | None: ...

    async def close(self) -> None: ...


class _NoEvents:
    """An app without a runtime: nothing is ever published."""

    async def start(self) -> None:
        return None

    async def get(self, timeout: float) -> StreamEvent | None:
        await asyncio.sleep(timeout)
        return None

    async def close(self) -> None:
        return None


class _InProcessSource:
    """Events of an :class:`~covidet.worker.events.InProcessEvents`, bridged from the publishing
    threads into this stream's event loop."""

    def __init__(self, events: _Subscribable) -> None:
        self._events = events
        self._queue: asyncio.Queue[StreamEvent] = asyncio.Queue(QUEUE_SIZE)
        self._unsubscribe: Callable[[], None] | None = None
        self._dropped = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def put(event: StreamEvent) -> None:  # on the event loop
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                self._dropped += 1

        def on_event(event: Event) -> None:  # on the publisher's thread: never block it
            with contextlib.suppress(RuntimeError):  # the loop is closed: the stream is gone
                loop.call_soon_threadsafe(put, dict(event))

        self._unsubscribe = self._events.subscribe(on_event)

    async def get(self, timeout: float) -> StreamEvent | None:
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            logger.warning("event stream fell behind: %d event(s) dropped, client told to resync", dropped)
            return {"type": "resync", "dropped": dropped}
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


class _RedisSource:
    """Events published by Celery workers on the Redis channel ``covidet:events``."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        from covidet.worker.events import CHANNEL

        self._client = aioredis.Redis.from_url(self._url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(CHANNEL)

    async def get(self, timeout: float) -> StreamEvent | None:
        if self._pubsub is None:
            raise RuntimeError("the Redis event source is not started")
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is None or message.get("type") != "message":
            return None
        try:
            event = json.loads(message["data"])
        except (TypeError, ValueError):
            logger.warning("ignored a malformed message on the events channel")
            return None
        return event if isinstance(event, dict) else None

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the connection may be gone already
            if self._pubsub is not None:
                await self._pubsub.aclose()
            if self._client is not None:
                await self._client.aclose()


def _source_of(app: Starlette) -> _Source:
    """Where this app's events come from (see the module docstring)."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is None:
        return _NoEvents()
    from covidet.worker.events import InProcessEvents, RedisEvents

    events = runtime.events
    if isinstance(events, InProcessEvents) or hasattr(events, "subscribe"):
        return _InProcessSource(events)
    if isinstance(events, RedisEvents):
        return _RedisSource(runtime.settings.redis_url)
    logger.warning("no live events from a %s: heartbeats only", type(events).__name__)
    return _NoEvents()


async def _stream(app: Starlette, source: _Source, user: str) -> AsyncIterator[str]:
    started = last_sent = time.monotonic()
    sent = 0
    try:
        await source.start()
        # The comment flushes the headers at once, so the client knows the stream is open (and is
        # subscribed: events published from now on reach it).
        yield f"retry: {RETRY_MS}\n: connected\n\n"
        while not _closing(app):
            now = time.monotonic()
            if now - started > MAX_STREAM_SECONDS:
                break
            event = await source.get(POLL_SECONDS)
            if event is not None:
                sent += 1
                last_sent = time.monotonic()
                yield format_event(event, sent)
            elif time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                last_sent = time.monotonic()
                yield ": heartbeat\n\n"
    except Exception:
        logger.exception("event stream of %s failed", user)
    finally:
        await source.close()
        logger.debug("event stream of %s closed after %d event(s)", user, sent)


@router.get("/events", include_in_schema=False, response_class=StreamingResponse)
async def stream_events(request: Request, user: RadiologistUser, db: DatabaseDep) -> StreamingResponse:
    """Server-sent events: ``analysed``, ``priority``, ``alert``, ``failed`` (and ``resync`` when the
    client fell behind). Radiologists and admins; audited once per stream as ``read.events``."""
    await run_in_threadpool(record_audit, db, request, "read.events", user=user)
    if _closing(request.app):
        # Shutting down: an empty stream that ends at once (the browser retries later).
        return StreamingResponse(iter(()), media_type="text/event-stream")
    return StreamingResponse(
        _stream(request.app, _source_of(request.app), user.username),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
