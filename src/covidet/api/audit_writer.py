"""Group commit of audit events: many concurrent reads, one write transaction.

Every read of patient data is audited, and a read is answered only after its event is committed
(:func:`covidet.api.auth.record_audit`). Written one transaction each, 50 concurrent readers queued for
SQLite's single write lock with the DICOM and MQTT ingest, and writers timed out (docs/load.md,
finding 2). Here one thread per database writes the events: it takes every event waiting, writes them
in one transaction, commits, and only then releases the requests that sent them. While one
transaction commits, the next events gather, so under load the number of audit transactions follows
the commit rate, not the request rate; an idle server commits each event at once (no added delay).

Contract of :meth:`AuditWriter.write`: it returns only once the event is committed (durable: SQLite
``synchronous=FULL``, or PostgreSQL's commit); it raises when the event could not be committed, and
the caller then serves nothing. A request waiting here holds no database connection.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from starlette.requests import Request

from covidet.api.deps import client_label
from covidet.store import review_queries as rq
from covidet.store.db import Database, database_unavailable
from covidet.store.models import utcnow

__all__ = [
    "Actor",
    "AuditDetails",
    "AuditEventIn",
    "AuditUnavailable",
    "AuditWriter",
    "audit_writer_for",
    "record_audit",
]

logger = logging.getLogger(__name__)

#: Most events one transaction carries.
MAX_BATCH = 1000
#: Seconds a request waits for its event's commit before it is refused (the SQLite busy timeout, 30 s,
#: plus a margin): a writer stuck longer than that is an outage, answered 503.
WAIT_SECONDS = 45.0

#: The ``details`` of an audit event: JSON-serialisable values by name (stored as JSON).
AuditDetails = dict[str, object]


class Actor(Protocol):
    """Who acted, as the audit log names them (:class:`covidet.api.auth.AuthenticatedUser` is one;
    a protocol, because :mod:`covidet.api.auth` imports this module)."""

    @property
    def id(self) -> int: ...

    @property
    def username(self) -> str: ...


class AuditUnavailable(RuntimeError):
    """The audit event was not committed (database busy or failing): the read must not be served.
    ``reason`` is one line for the client and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class AuditEventIn:
    """One audit event as :func:`covidet.store.review_queries.add_audit_event` takes it; ``at`` is
    the time of the request, not of the commit."""

    action: str
    actor_user_id: int | None = None
    actor_username: str | None = None
    object_type: str | None = None
    object_id: str | int | None = None
    ip: str | None = None
    details: AuditDetails | None = None
    at: datetime = field(default_factory=utcnow)
    done: Future[None] = field(default_factory=Future, repr=False)


class AuditWriter:
    """The audit writer thread of one :class:`Database` (see the module docstring).

    Started on the first :meth:`write`; :meth:`close` commits what is waiting and stops the thread
    (called by ``Database.dispose``)."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[AuditEventIn | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="covidet-audit-writer", daemon=True)
        self._started = False
        self._closed = False
        self._lock = threading.Lock()
        #: Committed transactions and events since start (what the tests and the load report read).
        self.transactions = 0
        self.events = 0

    def write(self, event: AuditEventIn, *, timeout: float = WAIT_SECONDS) -> None:
        """Queue ``event`` and wait until it is committed.

        Raises:
            AuditUnavailable: not committed (database busy or failing, writer closed, or no commit
                within ``timeout`` seconds).
        """
        with self._lock:
            if self._closed:
                raise AuditUnavailable("server stopping: audit log closed, try again later")
            if not self._started:
                self._thread.start()
                self._started = True
            self._queue.put(event)
        try:
            event.done.result(timeout)
        except FutureTimeout:
            raise AuditUnavailable(
                f"audit log not written within {timeout:.0f} s (database busy), try again later"
            ) from None

    def pending(self) -> int:
        """Events queued and not yet taken into a transaction."""
        return self._queue.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Commit the events waiting, then stop the thread (at most ``timeout`` seconds)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
            self._queue.put(None)
        if started:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("audit writer still committing after %.0f s", timeout)

    # --- writer thread ------------------------------------------------------------------------------

    def _take(self) -> tuple[list[AuditEventIn], bool]:
        """Every event waiting (blocking for the first) and whether the stop marker was seen."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch, stop = [first], False
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()  # nothing is queued after the stop marker (see close)
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[AuditEventIn]) -> None:
        try:
            self._insert(batch)
        except Exception as exc:
            reason = database_unavailable(exc)
            if reason is not None or len(batch) == 1:
                logger.error("audit log: %d event(s) not written: %s", len(batch), reason or f"{exc!r}")
                failure = AuditUnavailable(reason or "audit log not written, try again later")
                for event in batch:
                    event.done.set_exception(failure)
                return
            # One event the database refuses must not fail the others' requests.
            for event in batch:
                self._commit([event])
            return
        self.transactions += 1
        self.events += len(batch)
        for event in batch:
            event.done.set_result(None)

    def _insert(self, batch: list[AuditEventIn]) -> None:
        with self.db.session(write=True) as session:
            for event in batch:
                rq.add_audit_event(
                    session,
                    event.action,
                    actor_user_id=event.actor_user_id,
                    actor_username=event.actor_username,
                    object_type=event.object_type,
                    object_id=event.object_id,
                    ip=event.ip,
                    details=event.details,
                    at=event.at,
                )


_writers: weakref.WeakKeyDictionary[Database, AuditWriter] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def audit_writer_for(db: Database) -> AuditWriter:
    """The audit writer of ``db`` (made on first use, closed and forgotten by ``db.dispose()``)."""
    with _writers_lock:
        writer = _writers.get(db)
        if writer is None:
            writer = AuditWriter(db)
            _writers[db] = writer

            def close(db_ref: weakref.ref[Database] = weakref.ref(db), made: AuditWriter = writer) -> None:
                made.close()
                with _writers_lock:
                    owner = db_ref()
                    if owner is not None and _writers.get(owner) is made:
                        del _writers[owner]

            db.on_dispose(close)
        return writer


def record_audit(
    db: Database,
    request: Request,
    action: str,
    *,
    user: Actor | None = None,
    username: str | None = None,
    object_type: str | None = None,
    object_id: str | int | None = None,
    details: AuditDetails | None = None,
) -> None:
    """Append an audit event for this request and return once it is committed: a read is answered
    only after its event is durable; if the audit log cannot be written, the data is not served
    (:class:`AuditUnavailable`, answered 503 with Retry-After). ``user`` is the
    :class:`~covidet.api.auth.AuthenticatedUser` (else ``username``, e.g. a failed login). Concurrent
    events share one transaction (see the module docstring); the caller holds no connection while
    it waits."""
    actor = user.username if user is not None else username
    audit_writer_for(db).write(
        AuditEventIn(
            action,
            actor_user_id=user.id if user is not None else None,
            actor_username=actor,
            object_type=object_type,
            object_id=object_id,
            ip=request.client.host if request.client else None,
            details=details,
        )
    )
    logger.debug("audit %s %s %s by %s (%s)", action, object_type, object_id, actor, client_label(request))
