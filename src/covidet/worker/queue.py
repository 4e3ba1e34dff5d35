"""The analysis queue between ingest and the detector.

The database is the source of truth: an accepted image is recorded with status ``queued`` *before*
it is enqueued, so a lost in-memory queue (crash, restart) loses no work: :func:`requeue_pending`
puts every still-queued image back at start-up.

The default queue runs jobs on threads inside the receiving process (embedded deployment), handing
each thread the images that wait, a batch at a time (:class:`InProcessQueue`). A queue made with
``handler=None`` (tests, the API-only process) only counts, leaving images ``queued`` in the database.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from covidet.domain import AnalysisQueue
from covidet.store.analysis_queries import queued_image_ids
from covidet.store.db import Database

__all__ = ["AnalysisQueue", "InProcessQueue", "requeue_pending"]

logger = logging.getLogger(__name__)


class InProcessQueue:
    """A thread-safe FIFO drained by ``workers`` daemon threads calling ``handler(image_ids)``.

    A thread blocks for one id, then takes whatever else is already waiting, up to ``max_batch`` ids in
    all, and hands them over in arrival order: an idle queue analyses each image as it comes (no wait to
    fill a batch), a backlog is worked through in batches. ``handler=None`` keeps the ids (``enqueued``
    counts them) for a consumer that is not there yet. A handler that raises is logged; the job's own
    retry policy belongs to the handler.
    """

    def __init__(
        self,
        handler: Callable[[list[int]], None] | None = None,
        *,
        workers: int = 1,
        max_batch: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._handler = handler
        self._max_batch = max_batch
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.enqueued = 0
        self.processed = 0
        #: Sizes of the batches handed to the handler, in order (what a backlog turned into).
        self.batch_sizes: list[int] = []
        if handler is not None:
            for index in range(workers):
                thread = threading.Thread(target=self._run, name=f"covidet-analysis-{index}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def enqueue(self, image_id: int) -> None:
        with self._lock:
            self.enqueued += 1
        self._queue.put(image_id)
        logger.debug("image %d enqueued for analysis", image_id)

    def pending(self) -> int:
        """Jobs waiting (not yet taken by a worker thread)."""
        return self._queue.qsize()

    def _take(self) -> list[int] | None:
        """The next batch, or ``None`` when the queue is closing."""
        first = self._queue.get()
        if first is None or self._closing.is_set():
            return None
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:  # a stop marker meant for this or another thread: leave it for them
                self._queue.put(None)
                break
            batch.append(more)
        return batch

    def _run(self) -> None:
        assert self._handler is not None
        while not self._closing.is_set():
            batch = self._take()
            if batch is None:
                return
            with self._lock:
                self.batch_sizes.append(len(batch))
            try:
                self._handler(batch)
            except Exception:
                logger.exception("analysis of image(s) %s failed", ", ".join(map(str, batch)))
            finally:
                with self._lock:
                    self.processed += len(batch)

    def close(self, timeout: float = 120.0) -> None:
        """Stop the worker threads: jobs in progress finish (up to ``timeout`` seconds); jobs still
        waiting are dropped here, because they are ``queued`` in the database and
        :func:`requeue_pending` puts them back at the next start. Stopping a thread in the middle of
        a torch computation at interpreter exit aborts the process, hence the wait."""
        self._closing.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("analysis thread %s still busy after %.0f s", thread.name, timeout)


def requeue_pending(db: Database, target: AnalysisQueue) -> int:
    """Enqueue every image the database still marks ``queued``; returns how many."""
    with db.session() as session:
        ids = queued_image_ids(session)
    for image_id in ids:
        target.enqueue(image_id)
    if ids:
        logger.info("re-queued %d image(s) accepted earlier and not yet analysed", len(ids))
    return len(ids)
