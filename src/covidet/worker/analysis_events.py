"""The live-update events of the analysis job and their JSON shapes (a promise to the web app's
server-sent events and to Redis subscribers; see ``docs/api.md``).

``analysed``: an image has a new AI result; ``failed``: an image was given up on; ``priority``: an
image's triage priority changed; ``alert``: it became urgent. :class:`AnalysisEvents` publishes them
through an optional :class:`~covidet.worker.events.EventPublisher` (none: nothing is sent) and never
raises (publishers never do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict

from covidet import DISCLAIMER
from covidet.worker.events import EventPublisher

__all__ = ["AlertEvent", "AnalysedEvent", "AnalysisEvents", "FailedEvent", "ModelName", "PriorityEvent"]


class ModelName(TypedDict):
    name: str
    version: str


class AnalysedEvent(TypedDict):
    type: Literal["analysed"]
    image_id: int
    patient_id: int
    label: str
    model: ModelName
    disclaimer: str


class FailedEvent(TypedDict):
    type: Literal["failed"]
    image_id: int
    reason: str


class PriorityEvent(TypedDict):
    type: Literal["priority"]
    image_id: int
    patient_id: int
    priority: str


class AlertEvent(TypedDict):
    type: Literal["alert"]
    alert_id: int
    image_id: int
    patient_id: int
    priority: str
    reasons: list[str]
    disclaimer: str


class AnalysisEvents:
    """Publishes the analysis events to ``publisher`` (``None``: they go nowhere)."""

    def __init__(self, publisher: EventPublisher | None) -> None:
        self.publisher = publisher

    def _send(self, event: AnalysedEvent | FailedEvent | PriorityEvent | AlertEvent) -> None:
        if self.publisher is not None:
            self.publisher.publish(event)

    def analysed(
        self, image_id: int, patient_id: int, *, label: str, model_name: str, model_version: str
    ) -> None:
        """An image has a new AI result (every AI output carries the disclaimer)."""
        self._send(
            {
                "type": "analysed",
                "image_id": image_id,
                "patient_id": patient_id,
                "label": label,
                "model": {"name": model_name, "version": model_version},
                "disclaimer": DISCLAIMER,
            }
        )

    def failed(self, image_id: int, reason: str) -> None:
        """An image was given up on; ``reason`` is the last failure."""
        self._send({"type": "failed", "image_id": image_id, "reason": reason})

    def priority(self, image_id: int, patient_id: int, priority: str) -> None:
        """An image's triage priority changed (or was set for the first time)."""
        self._send({"type": "priority", "image_id": image_id, "patient_id": patient_id, "priority": priority})

    def alert(
        self, alert_id: int, image_id: int, patient_id: int, *, priority: str, reasons: Sequence[str]
    ) -> None:
        """An alert was raised: the image became urgent, for ``reasons``."""
        self._send(
            {
                "type": "alert",
                "alert_id": alert_id,
                "image_id": image_id,
                "patient_id": patient_id,
                "priority": priority,
                "reasons": list(reasons),
                "disclaimer": DISCLAIMER,
            }
        )
