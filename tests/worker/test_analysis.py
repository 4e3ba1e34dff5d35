"""The analysis job with the shipped detector: inference, findings, triage, retries, idempotency, alerts.

Real parts: the shipped model bundle, a real chest radiograph (pydicom-data's RG1_UNCR.dcm), the
database on both backends.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from covidet import DISCLAIMER
from covidet.config import get_settings
from covidet.detection.predictor import Predictor
from covidet.imaging import read_image
from covidet.store import Database, Image, ImageStatus, queries
from covidet.store.models import Alert, Inference, InferenceStatus, TriageRecord, VitalSignRecord
from covidet.worker.analysis import AnalysisError, analyse_batch_with_retries, analyse_with_retries
from covidet.worker.runtime import build_runtime


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_bundle()


@pytest.fixture
def runtime_factory(database_url: str, tmp_path: Path, predictor: Predictor):
    runtimes = []

    def make(**overrides):
        settings = get_settings(home=tmp_path / "home", database_url=database_url, **overrides)
        runtime = build_runtime(settings, predictor=predictor)
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        runtime.close()


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _status(db: Database, image_id: int) -> str:
    with db.session() as session:
        return session.get(Image, image_id).status


def _priority(db: Database, image_id: int) -> str | None:
    """The image's current triage priority (``None`` until its first triage is stored)."""
    with db.session() as session:
        return session.get(Image, image_id).priority


def test_an_accepted_image_is_analysed_and_triaged_in_process(runtime_factory, rg1_dicom: Path) -> None:
    runtime = runtime_factory()
    events: list[dict] = []
    runtime.events.subscribe(events.append)
    accepted = runtime.ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    _wait_for(lambda: _status(runtime.db, accepted.image_id) == ImageStatus.ANALYSED)
    _wait_for(lambda: any(e["type"] == "priority" for e in events), timeout=10)
    with runtime.db.session() as session:
        inference = session.scalars(select(Inference)).one()
        assert inference.status == InferenceStatus.SUCCEEDED and inference.attempts == 1
        assert (inference.model_name, inference.model_version) == (
            runtime.analyzer.predictor.name,
            runtime.analyzer.predictor.version,
        )
        assert inference.label in {"covid19", "pneumonia", "normal"}
        assert sum(inference.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert inference.detect_seconds > 0 and inference.read_seconds > 0
        for finding in inference.findings:
            assert 0 <= finding.x1 < finding.x2 <= 1841 and 0 <= finding.y1 < finding.y2 <= 1955
        triage = session.scalars(select(TriageRecord)).one()
        image = session.get(Image, accepted.image_id)
        assert image.priority == triage.priority and triage.reasons
        assert "no vital signs" in " ".join(triage.reasons)
        counts = queries.counts(session)
        assert counts["inferences"] == 1 and counts["failed_inferences"] == 0
        assert sum(counts["priorities"].values()) == 1
    analysed = next(e for e in events if e["type"] == "analysed")
    assert analysed["disclaimer"] == DISCLAIMER and analysed["model"]["version"]

    # Idempotent: the same job again (a redelivery) changes nothing.
    assert runtime.analyzer.analyse(accepted.image_id) == inference.id
    with runtime.db.session() as session:
        assert session.scalar(select(Inference).where(Inference.image_id == accepted.image_id)).attempts == 1
        assert len(session.scalars(select(TriageRecord)).all()) == 1


def test_vitals_arriving_after_the_image_raise_the_priority_and_an_alert(
    runtime_factory, rg1_dicom: Path
) -> None:
    runtime = runtime_factory()
    events: list[dict] = []
    runtime.events.subscribe(events.append)
    accepted = runtime.ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    # The image is marked analysed before the worker triages it: wait for that first triage too, or the
    # worker's triage may see the vitals below and race the test's re-triage (one record, not two).
    _wait_for(lambda: _priority(runtime.db, accepted.image_id) is not None)
    now = datetime.now(UTC)
    with runtime.db.session(write=True) as session:
        session.add(
            VitalSignRecord(
                patient_id=accepted.patient_id,
                measured_at=now - timedelta(minutes=2),
                spo2_percent=85.0,
                respiratory_rate_per_min=30.0,
                heart_rate_per_min=135.0,
                temperature_c=39.5,
                systolic_bp_mmhg=88.0,
            )
        )
    assert runtime.analyzer.retriage_patient(accepted.patient_id, now=now) == 1
    with runtime.db.session() as session:
        image = session.get(Image, accepted.image_id)
        assert image.priority == "urgent"
        alert = session.scalars(select(Alert)).one()
        assert alert.image_id == accepted.image_id and any("SpO2 85" in r for r in alert.reasons)
        history = session.scalars(select(TriageRecord).order_by(TriageRecord.id)).all()
        assert len(history) == 2 and history[-1].priority == "urgent"
        assert history[-1].vital_sign_ids
    assert any(e["type"] == "alert" and e["image_id"] == accepted.image_id for e in events)
    # The same vitals again: no new record, no second alert.
    runtime.analyzer.retriage_patient(accepted.patient_id, now=now)
    with runtime.db.session() as session:
        assert len(session.scalars(select(Alert)).all()) == 1


def test_an_unreadable_stored_image_fails_for_good_with_its_reason(runtime_factory, rg1_dicom: Path) -> None:
    runtime = runtime_factory(analysis_workers=1)
    runtime.queue.close()  # no background analysis: this test drives the job itself
    accepted = runtime.ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    with runtime.db.session() as session:
        path = runtime.store.path(session.get(Image, accepted.image_id).path)
    path.write_bytes(path.read_bytes()[:5000])  # damaged on disk after acceptance
    with pytest.raises(AnalysisError) as info:
        runtime.analyzer.analyse(accepted.image_id)
    assert not info.value.retryable
    with runtime.db.session() as session:
        inference = session.scalars(select(Inference)).one()
        assert inference.status == InferenceStatus.FAILED and "pixel data" in inference.error
        assert session.get(Image, accepted.image_id).status == ImageStatus.FAILED
        assert queries.counts(session)["failed_inferences"] == 1


class _FlakyPredictor:
    """The real predictor behind a fault injector that fails the first ``failures`` calls."""

    def __init__(self, real: Predictor, failures: int) -> None:
        self.real, self.failures, self.calls = real, failures, 0
        self.name, self.version, self.card = real.name, real.version, real.card

    def predict(self, images, **options):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("simulated out-of-memory")
        return self.real.predict(images, **options)


def test_a_failing_detector_is_retried_with_backoff_then_succeeds(
    database_url: str, tmp_path: Path, predictor: Predictor, rg1_dicom: Path
) -> None:
    settings = get_settings(home=tmp_path, database_url=database_url, analysis_max_attempts=3)
    flaky = _FlakyPredictor(predictor, failures=2)
    runtime = build_runtime(settings, predictor=flaky)
    runtime.queue.close()
    accepted = runtime.ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    delays: list[float] = []
    assert analyse_with_retries(runtime.analyzer, accepted.image_id, sleep=delays.append) is not None
    assert delays == [2.0, 4.0]
    with runtime.db.session() as session:
        inference = session.scalars(select(Inference)).one()
        assert inference.status == InferenceStatus.SUCCEEDED and inference.attempts == 3
        assert inference.error is None

    # Past the bound, the image is marked failed and the reason kept.
    runtime.analyzer._predictor = _FlakyPredictor(predictor, failures=99)
    second = runtime.ingest.accept(
        _a_dataset_jpeg().read_bytes(), channel="upload", device_id=None, patient_key="P-2"
    )
    delays.clear()
    assert analyse_with_retries(runtime.analyzer, second.image_id, sleep=delays.append) is None
    assert delays == [2.0, 4.0]
    with runtime.db.session() as session:
        assert session.get(Image, second.image_id).status == ImageStatus.FAILED
        failed = session.scalar(select(Inference).where(Inference.image_id == second.image_id))
        assert failed.status == InferenceStatus.FAILED and "simulated out-of-memory" in failed.error
        assert failed.attempts == 3
    runtime.close()


def _a_dataset_jpeg() -> Path:
    from tests.conftest import dataset_root

    root = dataset_root()
    rows = (root / "manifest.csv").read_text().splitlines()[1:]
    line = next(row for row in rows if row.endswith(",1"))
    return root / line.split(",")[0]


def test_triage_thresholds_come_from_settings(tmp_path: Path, monkeypatch) -> None:
    from pydantic import ValidationError

    from covidet.ingest.storage import ImageStore
    from covidet.worker.analysis import Analyzer

    monkeypatch.setenv("COVIDET_TRIAGE_THRESHOLDS", '{"window_minutes": 60, "positive_threshold": 0.6}')
    settings = get_settings(home=tmp_path)
    db = Database(settings.resolved_database_url)
    analyzer = Analyzer(settings, db, ImageStore(tmp_path / "images"))
    assert analyzer.thresholds.window_minutes == 60 and analyzer.thresholds.positive_threshold == 0.6
    monkeypatch.setenv("COVIDET_TRIAGE_THRESHOLDS", '{"window_minuts": 60}')
    with pytest.raises(ValidationError, match="window_minuts"):
        Analyzer(get_settings(home=tmp_path), db, ImageStore(tmp_path / "images"))
    db.dispose()


def _val_images(count: int, *, width: int | None = None) -> list[Path]:
    """``count`` val-split X-rays of the dataset, of one ``width`` when given, in manifest order."""
    import csv

    from tests.conftest import dataset_root

    root = dataset_root()
    with (root / "manifest.csv").open(newline="") as handle:
        rows = [
            r
            for r in csv.DictReader(handle)
            if r["split"] == "val" and (width is None or int(r["width"]) == width)
        ]
    assert len(rows) >= count
    return [root / r["image"] for r in rows[:count]]


class _CountingPredictor:
    """The real predictor, recording how many images each detector call got; ``breaks_on_width`` makes
    every call that holds an image of that width fail (an image that breaks the detector)."""

    def __init__(self, real: Predictor, breaks_on_width: int | None = None) -> None:
        self.real, self.breaks_on_width, self.calls = real, breaks_on_width, []
        self.name, self.version, self.card = real.name, real.version, real.card

    def predict(self, images, **options):
        self.calls.append(len(images))
        if any(x.width == self.breaks_on_width for x in images):
            raise RuntimeError("simulated detector fault on this image")
        return self.real.predict(images, **options)


def test_waiting_images_are_taken_in_batches_in_arrival_order() -> None:
    from covidet.worker.queue import InProcessQueue

    release, batches = threading.Event(), []

    def handler(image_ids: list[int]) -> None:
        batches.append(list(image_ids))
        release.wait(10)

    queue = InProcessQueue(handler, max_batch=4)
    queue.enqueue(1)
    _wait_for(lambda: batches == [[1]], timeout=5)  # an idle queue does not wait to fill a batch
    for image_id in range(2, 8):
        queue.enqueue(image_id)
    release.set()
    _wait_for(lambda: queue.processed == 7, timeout=5)
    assert batches == [[1], [2, 3, 4, 5], [6, 7]] and queue.batch_sizes == [1, 4, 2]
    queue.close()
    with pytest.raises(ValueError, match="at least 1"):
        InProcessQueue(handler, max_batch=0)


def test_a_batch_gets_one_detector_call_and_the_results_of_one_by_one(
    database_url: str, tmp_path: Path, predictor: Predictor
) -> None:
    settings = get_settings(home=tmp_path, database_url=database_url)
    counting = _CountingPredictor(predictor)
    runtime = build_runtime(settings, predictor=counting)
    runtime.queue.close()  # this test drives the jobs itself
    paths = _val_images(3, width=224) + _val_images(1)  # three of one size, one of another
    ids = [
        runtime.ingest.accept(p.read_bytes(), channel="upload", device_id=None, patient_key=f"B-{i}").image_id
        for i, p in enumerate(paths)
    ]
    results = analyse_batch_with_retries(runtime.analyzer, [*ids, ids[0]])  # a duplicate id runs once
    assert counting.calls == [4]
    alone = [predictor.predict([read_image(p)])[0] for p in paths]
    with runtime.db.session() as session:
        for image_id, expected in zip(ids, alone, strict=True):
            inference = session.get(Inference, results[image_id])
            assert inference.image_id == image_id and inference.status == InferenceStatus.SUCCEEDED
            assert inference.label == expected.assessment.label.value
            for label, probability in expected.assessment.probabilities.items():
                assert inference.probabilities[label.value] == pytest.approx(probability, abs=1e-4)
            assert len(inference.findings) == len(expected.findings)
            assert session.get(Image, image_id).status == ImageStatus.ANALYSED
            assert session.scalars(select(TriageRecord).where(TriageRecord.image_id == image_id)).one()
    runtime.close()


def test_an_image_that_breaks_the_batch_fails_alone_and_the_others_are_kept(
    database_url: str, tmp_path: Path, predictor: Predictor
) -> None:
    settings = get_settings(home=tmp_path, database_url=database_url, analysis_max_attempts=2)
    good = _val_images(3, width=224)
    odd = next(p for p in _val_images(20) if read_image(p).width != 224)
    counting = _CountingPredictor(predictor, breaks_on_width=read_image(odd).width)
    runtime = build_runtime(settings, predictor=counting)
    runtime.queue.close()
    ids = [
        runtime.ingest.accept(p.read_bytes(), channel="upload", device_id=None, patient_key=f"F-{i}").image_id
        for i, p in enumerate([good[0], good[1], odd, good[2]])
    ]
    damaged_id = ids.pop()  # damaged on disk after acceptance: unreadable, fails for good at once
    with runtime.db.session() as session:
        stored = runtime.store.path(session.get(Image, damaged_id).path)
    stored.write_bytes(stored.read_bytes()[:300])
    delays: list[float] = []
    results = analyse_batch_with_retries(runtime.analyzer, [*ids, damaged_id], sleep=delays.append)
    # One call for the batch (it fails on the odd image), then each image alone, then the odd one's retry.
    assert counting.calls == [3, 1, 1, 1, 1]
    assert delays == [2.0]
    assert results[ids[2]] is None and all(results[i] is not None for i in ids[:2])
    assert results[damaged_id] is None
    with runtime.db.session() as session:
        statuses = [session.get(Image, i).status for i in [*ids, damaged_id]]
        assert statuses == ["analysed", "analysed", "failed", "failed"]
        failed = session.scalar(select(Inference).where(Inference.image_id == ids[2]))
        assert failed.attempts == 2 and "simulated detector fault" in failed.error
    runtime.close()
