"""A DICOM receiver with chosen options (association policy, timeouts, TLS) over SQLite, for the
tests of the receiver's defences (test_dicom_checks, test_dicom_assoc, test_dicom_tls)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from covidet.config import Settings
from tests.ingest.conftest import Harness, start_harness

__all__ = ["receiver_factory"]


@pytest.fixture
def receiver_factory(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """``start(**receiver_options)`` -> a running receiver (SQLite, a registered modality
    ``MODALITY_AE``); ``start(settings=Settings(...))`` builds it with ``DicomReceiver.from_settings``.
    Everything is stopped at the end of the test."""
    started: list[Harness] = []

    def start(*, settings: Settings | None = None, **options: Any) -> Harness:
        harness = start_harness(
            f"sqlite:///{tmp_path / f'covidet-{len(started)}.db'}",
            tmp_path / f"images-{len(started)}",
            device_name=f"xray-{len(started)}",
            settings=settings,
            **options,
        )
        started.append(harness)
        return harness

    yield start
    for harness in started:
        harness.receiver.stop(timeout=2)
        harness.db.dispose()
