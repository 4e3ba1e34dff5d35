"""The analysis job with the shipped detector: inference, findings, triage, retries, idempotency, alerts.

Real parts: the shipped model bundle, a real chest radiograph (pydicom-data's RG1_UNCR.dcm), the
database on both backends.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from covidet import DISCLAIMER
from covidet.config import get_settings
from covidet.detection.predictor import Predictor
from covidet.store import Database, Image, ImageStatus, queries
from covidet.store.models import Alert, Inference, InferenceStatus, TriageRecord, VitalSignRecord
from covidet.worker.analysis import AnalysisError, analyse_with_retries
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
    _wait_for(lambda: _status(runtime.db, accepted.image_id) == ImageStatus.ANALYSED)
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

    def predict(self, images):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("simulated out-of-memory")
        return self.real.predict(images)


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
