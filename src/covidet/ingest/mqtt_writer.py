"""The MQTT subscriber's writer thread: batch the received messages, store them, then acknowledge.

:class:`BatchWriter` takes the messages paho's network thread hands over (:meth:`BatchWriter.put`),
passes up to ``batch_size`` at a time (waiting at most ``batch_delay_s`` for more) to
:class:`~covidet.ingest.mqtt_store.VitalsStore` in one transaction, and only after the commit calls
``ack`` with the batch, in the order received, then ``on_stored`` with the patients whose vital signs
it stored. A database that is unavailable is retried (never skipped: an unacknowledged batch would hold
the broker's in-flight window); a reading the database refuses is stored one by one so it does not hold
up the others. When stopping, what is queued is stored and acknowledged; what cannot be stored is left
unacknowledged for the broker to redeliver. It knows nothing of the MQTT connection itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from covidet.ingest.mqtt_store import ReceivedMessage, StoreResult, VitalsStore, is_transient

__all__ = ["BatchWriter", "IngestStats", "WriterCounts"]

# The subscriber's logger name, as before the writer had a module of its own: log filters name it.
logger = logging.getLogger("covidet.ingest.mqtt_subscriber")

#: The counters a :class:`BatchWriter` keeps, by name (:class:`IngestStats` reports them).
WriterCounts = dict[str, int]


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counters of a :class:`~covidet.ingest.mqtt_subscriber.VitalsSubscriber` since it started.

    ``received`` messages handed over by the broker; ``stored`` new vital-sign rows; ``duplicates``
    valid readings already stored (redeliveries); ``rejected`` rows written to ``rejected_messages``;
    ``batches`` committed transactions; ``pending`` received and not yet stored; ``connected``
    subscribed to the broker; ``last_commit_at`` wall-clock time (Unix seconds) of the last commit.
    """

    received: int
    stored: int
    duplicates: int
    rejected: int
    batches: int
    pending: int
    connected: bool
    last_commit_at: float | None


class BatchWriter:
    """One writer thread between the network thread's queue and the database (see the module docstring).

    ``ack(batch)`` is called after each commit with the messages to acknowledge; ``stopping`` is the
    owner's stop signal: once set, the thread stores what is queued and ends. Use :meth:`start` once,
    and :meth:`join` after setting ``stopping``.
    """

    def __init__(
        self,
        store: VitalsStore,
        ack: Callable[[Sequence[ReceivedMessage]], None],
        *,
        stopping: threading.Event,
        batch_size: int,
        batch_delay_s: float,
    ) -> None:
        self._store = store
        self._ack = ack
        self._stopping = stopping
        self.batch_size = batch_size
        self.batch_delay_s = batch_delay_s
        self._queue: queue.Queue[ReceivedMessage] = queue.Queue()
        self._thread: threading.Thread | None = None
        #: received, stored, duplicates, rejected, batches (see ``IngestStats``).
        self.counts: WriterCounts = {"received": 0, "stored": 0, "duplicates": 0, "rejected": 0, "batches": 0}
        #: Wall-clock time (Unix seconds) of the last commit, ``None`` before the first.
        self.last_commit_at: float | None = None
        #: Called on the writer thread with the database ids of the patients whose vital signs a
        #: batch stored (after commit and ack); ``covidet serve`` re-triages their images with it.
        self.on_stored: Callable[[set[int]], None] | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def pending(self) -> int:
        """Messages received and not yet stored."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self._thread is not None:
            raise RuntimeError("writer already started")
        self._thread = threading.Thread(target=self._write_loop, name="covidet-mqtt-writer", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end (set ``stopping`` first); true if it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self, *, connected: bool) -> IngestStats:
        """A snapshot of the counters; ``connected``: the owner's connection state."""
        return IngestStats(
            **self.counts, pending=self.pending, connected=connected, last_commit_at=self.last_commit_at
        )

    def put(self, message: ReceivedMessage) -> None:
        """Queue a received message (called on the network thread; counts it as received)."""
        self.counts["received"] += 1
        self._queue.put(message)

    def _next_batch(self) -> list[ReceivedMessage] | None:
        """Up to ``batch_size`` messages; [] when idle; None when stopping and everything is stored."""
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return None if self._stopping.is_set() else []
        batch = [first]
        deadline = time.monotonic() + self.batch_delay_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            delay = 1.0
            while batch:
                try:
                    self._commit_and_ack(batch)
                    break
                except Exception:
                    # Unexpected (a bug, a full disk): skipping the batch would leave it unacknowledged
                    # until the next reconnect and hold the broker's in-flight window, so retry it.
                    logger.exception(
                        "MQTT writer failed on a batch of %d messages; retrying in %.0f s", len(batch), delay
                    )
                    if self._stopping.wait(delay):
                        return  # unacknowledged: the broker redelivers them on the next connect
                    delay = min(delay * 2, 60.0)

    def _commit_and_ack(self, batch: list[ReceivedMessage]) -> None:
        delay = 0.5
        while True:
            try:
                result: StoreResult = self._store.store(batch)
                break
            except SQLAlchemyError as error:
                if not is_transient(error):
                    # One reading the database refuses must not hold up the others: store one by one.
                    self._store.forget_patients()
                    result = self._store.store_one_by_one(batch)
                    break
                if self._stopping.is_set():
                    logger.error(
                        "database unavailable while stopping (%s); %d messages left unacknowledged for the "
                        "broker to redeliver",
                        error.__class__.__name__,
                        len(batch),
                    )
                    return
                logger.error(
                    "database unavailable (%s); retrying in %.1f s", str(error).splitlines()[0], delay
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        self.last_commit_at = time.time()
        self._ack(batch)
        touched = self._store.take_touched_patients()
        if self.on_stored is not None and touched:
            # After the ack: re-triage is the consumer's work and must not delay the broker.
            try:
                self.on_stored(touched)
            except Exception:
                logger.exception("on_stored callback failed for %d patient(s)", len(touched))
        self.counts["stored"] += result.stored
        self.counts["duplicates"] += result.duplicates
        self.counts["rejected"] += len(result.rejected)
        self.counts["batches"] += 1
        for item, reason in result.rejected:
            logger.warning("rejected MQTT message on %s: %s", item.topic, reason)
