"""Re-triage after new vital signs, off the MQTT writer thread, coalesced per patient.

The MQTT writer stores a batch of readings, acknowledges it, and reports the patients it touched. The
re-triage of their images (:meth:`covidet.worker.analysis.Analyzer.retriage_patient`) takes a few
queries per image, about a second per patient on a loaded machine: run on the writer thread, it held
the next batch back, so storing fell far behind the broker and a stop waited for it (docs/load.md,
findings 3 and 4). :class:`RetriageQueue` takes the patients and returns at once; one thread re-triages
them. A patient reported again while waiting is queued once: the re-triage reads every reading in the
window when it runs, so one pass covers every batch that arrived before it started.

Nothing here is a promise to a sender: the readings are stored and acknowledged before they get here.
Re-triages still waiting at a stop are dropped (logged); the patient's next reading re-triages again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

__all__ = ["RetriageQueue"]

logger = logging.getLogger(__name__)


class RetriageQueue:
    """Patients waiting for re-triage, in the order first reported, each at most once, and one daemon
    thread calling ``retriage(patient_id)`` for each. Calling the queue (or :meth:`submit`) never
    blocks on re-triage; use it as ``VitalsSubscriber.on_stored``."""

    def __init__(self, retriage: Callable[[int], object], *, name: str = "covidet-retriage") -> None:
        self._retriage = retriage
        self._waiting: dict[int, None] = {}  # insertion-ordered set
        self._condition = threading.Condition()
        self._closing = False
        self._running: int | None = None
        #: Re-triages done, and patient reports absorbed by one already waiting.
        self.done = 0
        self.coalesced = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, patient_ids: Iterable[int]) -> None:
        """Queue the re-triage of ``patient_ids`` (returns at once; ignored once closing)."""
        with self._condition:
            if self._closing:
                return
            for patient_id in patient_ids:
                if patient_id in self._waiting:
                    self.coalesced += 1
                else:
                    self._waiting[patient_id] = None
            self._condition.notify()

    __call__ = submit

    def pending(self) -> int:
        """Patients waiting (not counting the one being re-triaged)."""
        with self._condition:
            return len(self._waiting)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop: waiting patients are dropped, the re-triage in progress may finish within ``timeout``
        seconds. True when the thread has stopped."""
        with self._condition:
            self._closing = True
            dropped = len(self._waiting)
            self._waiting.clear()
            self._condition.notify_all()
        if dropped:
            logger.info("re-triage of %d patient(s) dropped at stop (done at their next reading)", dropped)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "re-triage of patient %s still running after %.0f s; not waited for", self._running, timeout
            )
            return False
        return True

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._closing:
                    self._condition.wait()
                if self._closing:
                    return
                patient_id = next(iter(self._waiting))
                del self._waiting[patient_id]
                self._running = patient_id
            try:
                self._retriage(patient_id)
            except Exception:
                logger.exception("re-triage of patient %d failed", patient_id)
            finally:
                with self._condition:
                    self._running = None
                    self.done += 1
