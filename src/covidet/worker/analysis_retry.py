"""The in-process queue's retry policy around :meth:`covidet.worker.analysis.Analyzer.analyse_many`.

Contract: the first attempt at every image of a batch is one ``analyse_many`` call (one detector call);
each image whose attempt failed in a retryable way is then retried alone, after
``settings.analysis_retry_seconds`` doubled at each try, up to ``settings.analysis_max_attempts``
attempts in all; an image given up on is marked ``failed`` (:meth:`Analyzer.mark_failed`). The Celery
path has its own (``covidet.worker.celery_app``) with the same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from covidet.worker.analysis_types import AnalysisError, Sleep

if TYPE_CHECKING:
    from covidet.worker.analysis import Analyzer

__all__ = ["analyse_batch_with_retries", "analyse_with_retries"]

# The job's log lines keep the logger name they had before the split (operators filter on it).
logger = logging.getLogger("covidet.worker.analysis")


def analyse_with_retries(analyzer: Analyzer, image_id: int, *, sleep: Sleep = time.sleep) -> int | None:
    """Run :meth:`Analyzer.analyse` with bounded exponential backoff (the in-process queue's policy)."""
    return analyse_batch_with_retries(analyzer, [image_id], sleep=sleep)[image_id]


def analyse_batch_with_retries(
    analyzer: Analyzer, image_ids: Sequence[int], *, sleep: Sleep = time.sleep
) -> dict[int, int | None]:
    """The first attempt at every image in one :meth:`Analyzer.analyse_many` call, then each image that
    failed in a retryable way alone, with bounded exponential backoff (the in-process queue's policy).

    Returns, per image id, the inference id, or ``None`` when the image does not exist or was given up
    on (then marked failed, its reason kept on the inference).
    """
    results: dict[int, int | None] = {}
    for image_id, outcome in analyzer.analyse_many(image_ids).items():
        results[image_id] = (
            _retry(analyzer, image_id, outcome, sleep) if isinstance(outcome, AnalysisError) else outcome
        )
    return results


def _retry(analyzer: Analyzer, image_id: int, error: AnalysisError, sleep: Sleep) -> int | None:
    """Retry ``image_id`` after its first attempt failed with ``error``."""
    settings = analyzer.settings
    delay = float(settings.analysis_retry_seconds)
    attempt = 1
    while error.retryable and attempt < settings.analysis_max_attempts:
        logger.info("retrying image %d in %.1f s (attempt %d failed)", image_id, delay, attempt)
        sleep(delay)
        delay *= 2
        attempt += 1
        try:
            return analyzer.analyse(image_id)
        except AnalysisError as exc:
            error = exc
    analyzer.mark_failed(image_id, str(error))
    return None
