"""DICOM SR (TID 1500) of an analysed image and of its signed review.

Real parts: the X-ray (pydicom-data's RG1_UNCR chest radiograph) is accepted through covidet's ingest
into a SQLite store, the AI result is written as the worker writes it, the review is created and
signed through the store's review queries; the SR files are written by ``write_image_report`` (what
``covidet report --format sr`` calls), read back with highdicom and checked with dcmtk's ``dsrdump``
and dicom3tools' ``dciodvfy`` (Debian packages dcmtk and dicom3tools).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import dcmread
from pydicom.sr.codedict import codes

from covidet.config import Settings
from covidet.domain import Label
from covidet.imaging import read_image
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.reports import COMPREHENSIVE_3D_SR_SOP_CLASS, ai_sr_uids
from covidet.reports.sr_codes import LABEL_CONCEPTS, REVIEW_ACTION, REVIEW_ACTION_CONCEPTS
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.store.models import FindingRecord, Image, Inference, ReviewAction
from covidet.worker.queue import InProcessQueue
from covidet.worker.reporting import ReportNotAvailable, forward_report, write_image_report
from tests.servers import find_binary

#: (label, score, box) of the AI findings written for the test image (1841 x 1955 pixels).
FINDINGS = (
    ("covid19", 0.91, (300.0, 400.0, 900.0, 1200.5)),
    ("pneumonia", 0.42, (1000.25, 10.0, 1500.0, 900.0)),
)
PROBABILITIES = {"covid19": 0.81, "pneumonia": 0.14, "normal": 0.05}
ADDED_BOX = (100.0, 1300.0, 400.0, 1600.0)


@dataclass
class Env:
    db: Database
    store: ImageStore
    ingest: ImageIngest
    image_id: int
    inference_id: int
    finding_ids: list[int]


@pytest.fixture
def env(tmp_path: Path, rg1_dicom: Path) -> Iterator[Env]:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'covidet.db'}")
    db = Database(settings.database_url)
    store = ImageStore(settings.image_store_dir)
    queue = InProcessQueue()  # no consumer: the AI result is written below, as the worker writes it
    ingest = ImageIngest(
        db, store, queue, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )
    accepted = ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    now = datetime.now(UTC)
    with db.session(write=True) as session:
        inference = Inference(
            image_id=accepted.image_id,
            model_name="covidet-frcnn-r101",
            model_version="test-1",
            decision_rule="max-score-v1",
            threshold=0.5,
            status="succeeded",
            attempts=1,
            label="covid19",
            probabilities=PROBABILITIES,
            started_at=now,
            finished_at=now,
        )
        inference.findings = [
            FindingRecord(label=lab, score=score, x1=b[0], y1=b[1], x2=b[2], y2=b[3])
            for lab, score, b in FINDINGS
        ]
        session.add(inference)
        session.flush()
        session.get(Image, accepted.image_id).status = "analysed"
        inference_id, finding_ids = inference.id, [f.id for f in inference.findings]
    yield Env(db, store, ingest, accepted.image_id, inference_id, finding_ids)
    queue.close()
    db.dispose()


def _sign_review(
    env: Env, *, label: str = "covid19", comment: str | None = "Agree with the left box."
) -> int:
    with env.db.session(write=True) as session:
        reviewer = rq.create_user(session, "dr.rossi", password_hash="x", role="radiologist")
        review = rq.create_review(
            session,
            image_id=env.image_id,
            reviewer_id=reviewer.id,
            label=label,
            comment=comment,
            actions=[
                rq.FindingAction("confirm", source_finding_id=env.finding_ids[0]),
                rq.FindingAction("reject", source_finding_id=env.finding_ids[1]),
                rq.FindingAction("add", label="pneumonia", box=ADDED_BOX),
            ],
        )
        rq.sign_review(session, review.id, reviewer_id=reviewer.id)
        return review.id


def _rectangle(box: tuple[float, float, float, float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def _analysed_png(env: Env, tmp_path: Path, rg1_dicom: Path) -> int:
    """The test X-ray uploaded again as a PNG (no DICOM header), with an AI result."""
    png = tmp_path / "xray.png"
    PILImage.fromarray((read_image(rg1_dicom).pixels * 255).astype(np.uint8)).save(png)
    accepted = env.ingest.accept(png.read_bytes(), channel="upload", device_id=None, patient_key="P-PNG")
    now = datetime.now(UTC)
    with env.db.session(write=True) as session:
        session.add(
            Inference(
                image_id=accepted.image_id,
                model_name="covidet-frcnn-r101",
                model_version="test-1",
                status="succeeded",
                attempts=1,
                label="normal",
                probabilities={"normal": 1.0},
                started_at=now,
                finished_at=now,
            )
        )
        session.get(Image, accepted.image_id).status = "analysed"
    return accepted.image_id


def _texts(item: object, name: object) -> list[str]:
    """Values of the TEXT items named ``name`` anywhere under ``item`` (a group or the document)."""
    found = hd.sr.utils.find_content_items(
        item, name=name, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True
    )
    return [str(text.value) for text in found]


def _algorithm(group: object) -> tuple[list[str], list[str]]:
    return _texts(group[0], codes.DCM.AlgorithmName), _texts(group[0], codes.DCM.AlgorithmVersion)  # type: ignore[index]


def _validate(path: Path) -> None:
    """dcmtk's dsrdump parses the whole document tree; dciodvfy finds no IOD error."""
    dump = subprocess.run(
        [find_binary("dsrdump", "dcmtk"), "-Ee", str(path)], capture_output=True, text=True, timeout=60
    )
    assert dump.returncode == 0, dump.stderr
    assert not [line for line in dump.stderr.splitlines() if line.startswith(("E:", "F:"))], dump.stderr
    assert "Imaging Measurement Report" in dump.stdout
    check = subprocess.run(
        [find_binary("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True, timeout=60
    )
    output = check.stdout + check.stderr
    assert "Comprehensive3DSR" in output, output
    assert not [line for line in output.splitlines() if line.startswith("Error")], output


def test_ai_sr_carries_the_findings_boxes_model_and_source(env: Env, tmp_path: Path, rg1_dicom: Path) -> None:
    out = write_image_report(env.db, env.store, env.image_id, "sr", tmp_path / "ai-sr.dcm")
    source = dcmread(rg1_dicom, stop_before_pixels=True)
    sr = hd.sr.Comprehensive3DSR.from_dataset(dcmread(out))

    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR_SOP_CLASS
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == ai_sr_uids(env.image_id, env.inference_id)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.PatientID, str(sr.PatientName)) == (source.PatientID, str(source.PatientName))
    assert (sr.PreliminaryFlag, sr.VerificationFlag, sr.CompletionFlag) == (
        "PRELIMINARY",
        "UNVERIFIED",
        "COMPLETE",
    )
    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription
    assert sr.get_evidence() == [
        (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, source.SOPClassUID)
    ]

    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    (device,) = report.get_observer_contexts(observer_type=codes.cid270.Device)
    assert device[0].value == codes.cid270.Device
    assert "covidet" in [item.value for item in device[1:] if item.name.meaning == "Device Observer Name"]

    (image_group,) = report.get_image_measurement_groups()
    (finding,) = image_group.get_qualitative_evaluations(name=codes.DCM.Impression)
    assert finding.value == LABEL_CONCEPTS[Label.COVID19]
    assert (finding.value.value, finding.value.scheme_designator) == ("840539006", "SCT")
    probabilities = {m.name.value: (m.value, m.unit.value) for m in image_group.get_measurements()}
    assert probabilities == {
        LABEL_CONCEPTS[Label(k)].value: (pytest.approx(v), "{probability}") for k, v in PROBABILITIES.items()
    }
    assert _algorithm(image_group) == (["covidet-frcnn-r101"], ["test-1"])
    assert image_group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID

    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == len(FINDINGS)
    for group, (label, score, box) in zip(groups, FINDINGS, strict=True):  # stored order: score desc
        assert group.finding_type == LABEL_CONCEPTS[Label(label)]
        assert group.reference_type == codes.DCM.ImageRegion
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_array_equal(group.roi.value, _rectangle(box))
        region_source = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert (region_source.ReferencedSOPClassUID, region_source.ReferencedSOPInstanceUID) == (
            source.SOPClassUID,
            source.SOPInstanceUID,
        )
        (certainty,) = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
        assert certainty.value == pytest.approx(score)
        assert _algorithm(group) == (["covidet-frcnn-r101"], ["test-1"])

    statements = _texts(sr.content[0], codes.DCM.Comment)
    assert any("NOT FOR CLINICAL USE" in text for text in statements)

    again = write_image_report(env.db, env.store, env.image_id, "sr", tmp_path / "again.dcm")
    assert dcmread(again).SOPInstanceUID == sr.SOPInstanceUID  # the same AI result is the same SR
    _validate(out)


def test_signed_review_sr_refers_to_the_ai_sr(env: Env, tmp_path: Path, rg1_dicom: Path) -> None:
    review_id = _sign_review(env)
    ai = dcmread(write_image_report(env.db, env.store, env.image_id, "sr", tmp_path / "ai.dcm"))
    out = write_image_report(env.db, env.store, env.image_id, "sr-review", tmp_path / "review.dcm")
    sr = hd.sr.Comprehensive3DSR.from_dataset(dcmread(out))
    source = dcmread(rg1_dicom, stop_before_pixels=True)

    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == ai.SOPInstanceUID
    assert predecessor.ReferencedSOPClassUID == ai.SOPClassUID
    assert (ai.StudyInstanceUID, ai.SeriesInstanceUID, ai.SOPInstanceUID, ai.SOPClassUID) in sr.get_evidence()
    assert sr.SOPInstanceUID != ai.SOPInstanceUID and sr.StudyInstanceUID == source.StudyInstanceUID
    assert (sr.PreliminaryFlag, sr.VerificationFlag) == ("FINAL", "VERIFIED")
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName.family_name == "dr.rossi"

    report = sr.content
    (person,) = report.get_observer_contexts(observer_type=codes.cid270.Person)
    assert [i.value for i in person if i.name == codes.DCM.PersonObserverLoginName] == ["dr.rossi"]
    (image_group,) = report.get_image_measurement_groups()
    (finding,) = image_group.get_qualitative_evaluations(name=codes.DCM.Impression)
    (decision,) = image_group.get_qualitative_evaluations(name=REVIEW_ACTION)
    assert finding.value == LABEL_CONCEPTS[Label.COVID19]  # the AI said covid19 too: confirmed
    assert decision.value == REVIEW_ACTION_CONCEPTS[ReviewAction.CONFIRM]

    boxes = [
        (group.finding_type, group.get_qualitative_evaluations(name=REVIEW_ACTION)[0].value, group.roi.value)
        for group in report.get_planar_roi_measurement_groups()
    ]
    expected = [
        (Label.COVID19, ReviewAction.CONFIRM, FINDINGS[0][2]),
        (Label.PNEUMONIA, ReviewAction.REJECT, FINDINGS[1][2]),
        (Label.PNEUMONIA, ReviewAction.ADD, ADDED_BOX),
    ]
    assert len(boxes) == len(expected)
    for (found_type, found_action, found_box), (label, action, box) in zip(boxes, expected, strict=True):
        assert found_type == LABEL_CONCEPTS[label] and found_action == REVIEW_ACTION_CONCEPTS[action]
        np.testing.assert_array_equal(found_box, _rectangle(box))
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99COVIDET"
    assert review_id > 0
    _validate(out)


def test_review_that_disagrees_is_recorded_as_a_rejection(env: Env, tmp_path: Path) -> None:
    _sign_review(env, label="normal", comment=None)
    out = write_image_report(env.db, env.store, env.image_id, "sr-review", tmp_path / "review.dcm")
    (image_group,) = hd.sr.Comprehensive3DSR.from_dataset(dcmread(out)).content.get_image_measurement_groups()
    assert (
        image_group.get_qualitative_evaluations(name=codes.DCM.Impression)[0].value
        == LABEL_CONCEPTS[Label.NORMAL]
    )
    (decision,) = image_group.get_qualitative_evaluations(name=REVIEW_ACTION)
    assert decision.value == REVIEW_ACTION_CONCEPTS[ReviewAction.REJECT]


def test_no_signed_review_and_no_dicom_source_are_named(env: Env, tmp_path: Path, rg1_dicom: Path) -> None:
    with pytest.raises(ReportNotAvailable, match=f"image {env.image_id} has no signed review"):
        write_image_report(env.db, env.store, env.image_id, "sr-review", tmp_path / "review.dcm")
    assert not (tmp_path / "review.dcm").exists()

    png_image_id = _analysed_png(env, tmp_path, rg1_dicom)
    with pytest.raises(ReportNotAvailable, match="was not received as DICOM"):
        write_image_report(env.db, env.store, png_image_id, "sr", tmp_path / "png-sr.dcm")
    assert not (tmp_path / "png-sr.dcm").exists()


def test_sr_label_concepts_agree_with_the_fhir_report() -> None:
    from covidet.assessment.reports import LABEL_CODES

    for label, concept in LABEL_CONCEPTS.items():
        assert (concept.value, concept.scheme_designator) == (LABEL_CODES[label]["code"], "SCT")
    assert LABEL_CONCEPTS[Label.NORMAL] == codes.SCT.Normal


def test_forwarding_sends_the_sr_beside_the_capture_for_dicom_images_only(
    env: Env, tmp_path: Path, rg1_dicom: Path
) -> None:
    """A real PACS (a private Orthanc) receives the capture and the SR; a PNG upload, which has no
    DICOM image for an SR to refer to, gets its capture only and the forward still succeeds."""
    from tests.servers import start_orthanc

    png_image_id = _analysed_png(env, tmp_path, rg1_dicom)
    orthanc = start_orthanc()
    try:
        settings = Settings(
            home=tmp_path / "home", pacs_host="127.0.0.1", pacs_port=orthanc.port, pacs_ae_title="ORTHANC"
        )
        assert forward_report(env.db, env.store, env.image_id, settings) == 0x0000
        assert orthanc.instance_count() == 2
        sr = _orthanc_instance(orthanc, ai_sr_uids(env.image_id, env.inference_id)[1])
        assert (
            sr["SOPClassUID"] == COMPREHENSIVE_3D_SR_SOP_CLASS
            and "NOT FOR CLINICAL USE" in sr["SeriesDescription"]
        )
        assert forward_report(env.db, env.store, png_image_id, settings) == 0x0000
        assert orthanc.instance_count() == 3  # the PNG's capture, no SR
    finally:
        orthanc.stop()


def _orthanc_instance(orthanc: Any, sop_instance_uid: str) -> dict[str, str]:
    """Main tags of the instance Orthanc stored under ``sop_instance_uid`` (its REST API)."""
    import json
    import urllib.request

    query = json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}).encode()
    request = urllib.request.Request(f"{orthanc.url}/tools/find", data=query, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        (instance_id,) = json.load(response)
    with urllib.request.urlopen(
        f"{orthanc.url}/instances/{instance_id}/simplified-tags", timeout=30
    ) as response:  # type: ignore[attr-defined]
        return json.load(response)
