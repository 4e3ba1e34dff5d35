"""The analysis progress counts (``covidet demo``'s "assessed" line) on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from covidet.store import Database, Image, ImageStatus, queries
from covidet.store.stats_queries import AssessmentProgress, assessment_progress


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def add_images(db: Database, rows: list[tuple[ImageStatus, str | None]]) -> None:
    """One study of one patient with an image per row: (status, current priority)."""
    with db.session(write=True) as session:
        patient = queries.get_or_create_patient(session, "P-STATS")
        study = queries.get_or_create_study(session, "1.2.826.0.1.3680043.8.498.1", patient)
        for index, (status, priority) in enumerate(rows):
            session.add(
                Image(
                    sop_instance_uid=f"1.2.826.0.1.3680043.8.498.1.{index + 1}",
                    content_sha256=f"{index:064x}",
                    path=f"{index:02x}/{index:064x}.dcm",
                    size_bytes=1000 + index,
                    media_type="application/dicom",
                    study_id=study.id,
                    status=status.value,
                    priority=priority,
                )
            )


def test_an_empty_database_has_no_images(db: Database) -> None:
    with db.session() as session:
        progress = assessment_progress(session)
    assert progress == AssessmentProgress(by_status={}, by_priority={})
    assert progress.images == progress.triaged == 0
    assert progress.status(ImageStatus.ANALYSED) == progress.priority("urgent") == 0


def test_images_are_counted_by_status_and_current_priority(db: Database) -> None:
    add_images(
        db,
        [
            (ImageStatus.QUEUED, None),
            (ImageStatus.QUEUED, None),
            (ImageStatus.ANALYSED, "urgent"),
            (ImageStatus.ANALYSED, "routine"),
            (ImageStatus.ANALYSED, "routine"),
            (ImageStatus.ANALYSED, None),  # analysed, its triage not stored yet
            (ImageStatus.FAILED, None),
        ],
    )
    with db.session() as session:
        progress = assessment_progress(session)
    assert progress.by_status == {"queued": 2, "analysed": 4, "failed": 1}
    assert progress.by_priority == {"urgent": 1, "routine": 2}  # no image without a priority, no "high"
    assert progress.images == 7
    assert progress.triaged == 3
    assert progress.status(ImageStatus.ANALYSED) == progress.status("analysed") == 4
    assert progress.priority("high") == 0 and progress.priority("routine") == 2
