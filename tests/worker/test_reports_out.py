"""Reports out of an analysed image: `covidet report` as FHIR, DICOM and DICOM SR, and forwarding to a
real PACS (a private Orthanc) over C-STORE after each analysis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom import dcmread

from covidet import DISCLAIMER
from covidet.assessment.reports import SECONDARY_CAPTURE_SOP_CLASS as SC_SOP_CLASS
from covidet.config import get_settings
from covidet.imaging import read_image
from covidet.reports import COMPREHENSIVE_3D_SR_SOP_CLASS
from covidet.store import Image, ImageStatus
from covidet.worker.runtime import build_runtime


@pytest.fixture(scope="module")
def orthanc():
    from tests.servers import start_orthanc

    server = start_orthanc()
    yield server
    server.stop()


def _stored_sop_classes(orthanc) -> list[str]:
    """SOP Class UID of every instance Orthanc stored (its REST API)."""
    with urllib.request.urlopen(f"{orthanc.url}/instances?expand", timeout=30) as response:
        instances = json.load(response)
    classes = []
    for instance in instances:
        with urllib.request.urlopen(
            f"{orthanc.url}/instances/{instance['ID']}/simplified-tags", timeout=30
        ) as tags:
            classes.append(json.load(tags)["SOPClassUID"])
    return classes


def _wait_analysed(runtime, image_id: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with runtime.db.session() as session:
            if session.get(Image, image_id).status == ImageStatus.ANALYSED:
                return
        time.sleep(0.1)
    raise AssertionError(f"image {image_id} not analysed in {timeout} s")


def test_analysed_image_is_forwarded_to_the_pacs_and_reported_by_the_cli(
    orthanc, tmp_path: Path, rg1_dicom: Path
) -> None:
    settings = get_settings(
        home=tmp_path, pacs_host="127.0.0.1", pacs_port=orthanc.port, pacs_ae_title="ORTHANC"
    )
    runtime = build_runtime(settings)
    try:
        accepted = runtime.ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
        _wait_analysed(runtime, accepted.image_id)
        deadline = time.monotonic() + 30
        while orthanc.instance_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        # The Secondary Capture and, beside it, the TID 1500 SR (docs/dicom-sr.md).
        assert orthanc.instance_count() == 2, "Orthanc did not store the forwarded reports"
        assert sorted(_stored_sop_classes(orthanc)) == [SC_SOP_CLASS, COMPREHENSIVE_3D_SR_SOP_CLASS]
    finally:
        runtime.close()

    env = {**os.environ, "COVIDET_HOME": str(tmp_path)}
    source = dcmread(rg1_dicom, stop_before_pixels=True)
    fhir_out, dicom_out, sr_out = tmp_path / "report.json", tmp_path / "report.dcm", tmp_path / "sr.dcm"
    for fmt, out, ident in (
        ("fhir", fhir_out, str(accepted.image_id)),
        ("dicom", dicom_out, str(source.StudyInstanceUID)),
        ("sr", sr_out, str(accepted.image_id)),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "covidet.cli", "report", ident, "--format", fmt, "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["image_id"] == accepted.image_id

    report = DiagnosticReport.model_validate(json.loads(fhir_out.read_text()))
    assert report.status == "preliminary" and DISCLAIMER in report.conclusion.lower()
    sc = dcmread(dicom_out)
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES"
    assert read_image(dicom_out).width == source.Columns
    sr = dcmread(sr_out)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR_SOP_CLASS and sr.StudyInstanceUID == source.StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    missing = subprocess.run(
        [sys.executable, "-m", "covidet.cli", "report", "999", "--out", str(tmp_path / "x.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no image with id 999" in missing.stderr


def test_covidet_refuses_its_own_report_as_an_xray(tmp_path: Path, rg1_dicom: Path) -> None:
    """A PACS that routes covidet's burned-in report back must not get it analysed as a new X-ray."""
    from covidet.imaging.dicom_writer import dicom_bytes
    from covidet.ingest.service import IngestRejected
    from covidet.worker.reporting import build_report

    runtime = build_runtime(get_settings(home=tmp_path))
    try:
        accepted = runtime.ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
        _wait_analysed(runtime, accepted.image_id)
        from covidet.assessment.reports import dicom_secondary_capture

        ctx, pixels, source = build_report(runtime.db, runtime.store, accepted.image_id)
        report = dicom_bytes(dicom_secondary_capture(ctx, pixels, source=source))
        with pytest.raises(IngestRejected, match="covidet AI report"):
            runtime.ingest.accept(report, channel="dicom", device_id=None)
    finally:
        runtime.close()
