"""The analysis job as a Celery task over Redis: the scale-out path (``COVIDET_QUEUE=celery``).

Delivery guarantees: ``acks_late`` with ``task_reject_on_worker_lost`` means a job is acknowledged
only after it finished, so the job of a killed worker is delivered again (Redis' visibility timeout,
:data:`VISIBILITY_TIMEOUT_S`). The job is idempotent per (image, model version), so a redelivery of
a finished job does nothing. ``prefetch_multiplier=1``: a worker holds one job at a time, so a slow
image does not hide others behind it.

Each worker process builds its :class:`~covidet.worker.analysis.Analyzer` once (model loaded once).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from celery import Celery, Task

if TYPE_CHECKING:
    from covidet.worker.analysis import Analyzer

__all__ = ["VISIBILITY_TIMEOUT_S", "CeleryQueue", "analyse_image_task", "make_celery"]

logger = logging.getLogger(__name__)

#: Default seconds after which Redis hands an unacknowledged job to another worker (a killed worker's
#: job); ``settings.celery_visibility_timeout``. It must exceed the longest analysis.
VISIBILITY_TIMEOUT_S = 300
TASK_NAME = "covidet.analyse_image"

_analyzer: Analyzer | None = None
_analyzer_lock = threading.Lock()


def make_celery(redis_url: str, *, visibility_timeout: int = VISIBILITY_TIMEOUT_S) -> Celery:
    """A Celery app on ``redis_url`` with covidet's reliability settings."""
    app = Celery("covidet", broker=redis_url, backend=None)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="covidet-analysis",
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            # kombu scans for expired unacknowledged jobs on every 10th call of this interval; tie
            # it to the timeout so a dead worker's job is redelivered within about two timeouts.
            "unacked_restore_interval": max(1, visibility_timeout // 10),
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK_NAME, bind=True, max_retries=None)(_analyse_image)
    return app


def _get_analyzer() -> Analyzer:
    """The worker process' analyzer, built from settings on first use."""
    global _analyzer
    with _analyzer_lock:
        if _analyzer is None:
            from covidet.config import get_settings
            from covidet.store.db import Database
            from covidet.store.files import ImageStore
            from covidet.worker.analysis import Analyzer
            from covidet.worker.events import RedisEvents

            settings = get_settings()
            _analyzer = Analyzer(
                settings,
                Database.from_settings(settings),
                ImageStore(settings.image_store_dir),
                events=RedisEvents(settings.redis_url),
            )
        return _analyzer


def _analyse_image(task: Task, image_id: int) -> int | None:
    from covidet.worker.analysis import AnalysisError

    analyzer = _get_analyzer()
    try:
        return analyzer.analyse(image_id)
    except AnalysisError as exc:
        attempts = task.request.retries + 1
        if exc.retryable and attempts < analyzer.settings.analysis_max_attempts:
            countdown = analyzer.settings.analysis_retry_seconds * 2 ** (attempts - 1)
            raise task.retry(exc=exc, countdown=countdown) from exc
        analyzer.mark_failed(image_id, str(exc))
        return None


def analyse_image_task(app: Celery) -> Task:
    """The analysis task registered on ``app`` by :func:`make_celery`."""
    return app.tasks[TASK_NAME]


class CeleryQueue:
    """The :class:`~covidet.worker.queue.AnalysisQueue` that sends jobs to ``covidet worker`` processes."""

    def __init__(self, redis_url: str, *, visibility_timeout: int = VISIBILITY_TIMEOUT_S) -> None:
        self.app = make_celery(redis_url, visibility_timeout=visibility_timeout)
        self.enqueued = 0

    def enqueue(self, image_id: int) -> None:
        self.app.send_task(TASK_NAME, args=[image_id])
        self.enqueued += 1
