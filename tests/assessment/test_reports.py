"""Reports out: FHIR R4B DiagnosticReport, DICOM Secondary Capture and C-STORE forwarding to a PACS.

Real parts only: fhir.resources validates the report, pydicom writes and reads the capture, covidet's
reader decodes it, and dcmtk's storescp (Debian package dcmtk) plays the PACS.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom import dcmread
from pynetdicom import AE

from covidet import DISCLAIMER
from covidet.assessment.reports import (
    SECONDARY_CAPTURE_SOP_CLASS,
    ReportContext,
    dicom_secondary_capture,
    fhir_diagnostic_report,
    write_report,
)
from covidet.domain import Assessment, Box, Finding, Label, Priority, VitalSign
from covidet.imaging import XRayImage, read_image
from covidet.pacs.forward import ForwardError, forward_to_pacs
from tests.servers import find_binary, free_port

CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
COVID_BOX = Box(300.0, 400.0, 900.0, 1200.0)
PNEUMONIA_BOX = Box(1000.0, 10.0, 1500.0, 900.0)


@pytest.fixture(scope="module")
def xray(rg1_dicom: Path) -> XRayImage:
    return read_image(rg1_dicom)


@pytest.fixture
def ctx(xray: XRayImage) -> ReportContext:
    return ReportContext(
        patient_key="PAT-0042",
        patient_name="Doe^Jane",
        study_instance_uid=xray.study_instance_uid or "",
        source_sop_instance_uid=xray.sop_instance_uid,
        source_sop_class_uid=CR_SOP_CLASS,
        accession_number="ACC-7",
        image_id=17,
        model_name="frcnn-r101-fpn",
        model_version="1.4.2",
        decision_rule="max-box-score",
        threshold=0.5,
        findings=[
            Finding(COVID_BOX, Label.COVID19, 0.91),
            Finding(PNEUMONIA_BOX, Label.PNEUMONIA, 0.42),
        ],
        assessment=Assessment(
            Label.COVID19, {Label.COVID19: 0.81, Label.PNEUMONIA: 0.14, Label.NORMAL: 0.05}, 0.5
        ),
        priority=Priority.URGENT,
        reasons=["SpO2 89 % below 92 %", "image-level covid19 with probability 0.81"],
        vitals=[
            VitalSign(
                "PAT-0042",
                datetime(2024, 3, 1, 9, 55, tzinfo=UTC),
                spo2_percent=89.0,
                temperature_c=38.4,
                heart_rate_per_min=112.0,
                respiratory_rate_per_min=26.0,
                systolic_bp_mmhg=101.0,
            )
        ],
        issued_at=datetime(2024, 3, 1, 10, 0, 5, tzinfo=UTC),
        report_id="rpt-17-1.4.2",
    )


# ------------------------------------------------------------------------------------------------- FHIR


def _contained(report: dict) -> dict[str, dict]:
    return {resource["id"]: resource for resource in report["contained"]}


def test_fhir_report_validates_and_round_trips(ctx: ReportContext) -> None:
    report = fhir_diagnostic_report(ctx)

    parsed = DiagnosticReport.model_validate(report)  # real validation by fhir.resources (R4B)
    assert parsed.model_dump(mode="json") == report
    assert report["resourceType"] == "DiagnosticReport"
    assert report["id"] == "rpt-17-1.4.2"
    assert report["status"] == "preliminary"
    assert report["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
        "code": "RAD",
        "display": "Radiology",
    }
    assert report["code"]["coding"][0]["system"] == "http://loinc.org"
    assert report["code"]["coding"][0]["code"] == "36554-4"
    assert report["subject"]["identifier"]["value"] == "PAT-0042"
    assert report["subject"]["display"] == "Jane Doe"
    assert report["issued"] == "2024-03-01T10:00:05Z"
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{ctx.study_instance_uid}"
    assert report["basedOn"][0]["identifier"]["value"] == "ACC-7"
    conclusion = report["conclusion"]
    for text in ("covid19", "urgent", "frcnn-r101-fpn", "1.4.2", DISCLAIMER):
        assert text in conclusion.lower() or text in conclusion
    assert report["conclusionCode"][0]["coding"][0]["code"] == "840539006"
    assert DISCLAIMER.upper() in report["text"]["div"]


def test_fhir_observations_codes_units_values(ctx: ReportContext) -> None:
    report = fhir_diagnostic_report(ctx)
    contained = _contained(report)
    # Every result reference resolves to a contained resource, in the documented order.
    refs = [r["reference"] for r in report["result"]]
    assert all(ref.startswith("#") and ref[1:] in contained for ref in refs)
    assert refs[:4] == ["#finding-1", "#finding-2", "#image-assessment", "#triage"]

    device = contained["model"]
    assert device["resourceType"] == "Device"
    assert device["deviceName"][0]["name"] == "frcnn-r101-fpn"
    assert device["version"][0]["value"] == "1.4.2"
    assert DISCLAIMER in device["note"][0]["text"]

    covid = contained["finding-1"]
    assert covid["status"] == "preliminary"
    assert covid["device"]["reference"] == "#model"
    assert covid["code"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "840539006",
        "display": "Disease caused by severe acute respiratory syndrome coronavirus 2",
    }
    assert covid["valueQuantity"]["value"] == pytest.approx(0.91)
    assert [c["valueQuantity"]["value"] for c in covid["component"]] == COVID_BOX.as_list()
    assert all(c["valueQuantity"]["code"] == "{pixel}" for c in covid["component"])
    assert DISCLAIMER in covid["note"][0]["text"]
    assert contained["finding-2"]["code"]["coding"][0]["code"] == "233604007"

    image = contained["image-assessment"]
    assert image["valueCodeableConcept"]["coding"][0]["code"] == "840539006"
    probabilities = {
        c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"]
        for c in image["component"]
        if "coding" in c["code"]
    }
    assert probabilities == {"840539006": 0.81, "233604007": 0.14, "17621005": 0.05}
    assert "max-box-score" in image["method"]["text"]

    triage = contained["triage"]
    assert triage["valueCodeableConcept"]["coding"][0]["code"] == "urgent"
    notes = [n["text"] for n in triage["note"]]
    assert notes[:2] == ctx.reasons
    assert any(DISCLAIMER in n for n in notes)
    assert {"#image-assessment", "#vital-1-spo2"} <= {d["reference"] for d in triage["derivedFrom"]}

    vitals = {
        o["code"]["coding"][0]["code"]: o
        for o in contained.values()
        if o["resourceType"] == "Observation" and o["category"][0]["coding"][0]["code"] == "vital-signs"
    }
    expected = {
        "2708-6": (89.0, "%"),
        "8310-5": (38.4, "Cel"),
        "8867-4": (112.0, "/min"),
        "9279-1": (26.0, "/min"),
        "8480-6": (101.0, "mm[Hg]"),
    }
    assert {
        code: (o["valueQuantity"]["value"], o["valueQuantity"]["code"]) for code, o in vitals.items()
    } == expected
    assert all(o["valueQuantity"]["system"] == "http://unitsofmeasure.org" for o in vitals.values())
    assert "59408-5" in [c["code"] for c in vitals["2708-6"]["code"]["coding"]]
    assert vitals["8310-5"]["effectiveDateTime"] == "2024-03-01T09:55:00Z"


def test_fhir_report_without_assessment_triage_or_vitals(ctx: ReportContext) -> None:
    bare = replace(
        ctx,
        findings=[],
        assessment=None,
        priority=None,
        reasons=[],
        vitals=[],
        accession_number=None,
        patient_name=None,
        report_id="report/with spaces",
    )
    report = fhir_diagnostic_report(bare)
    DiagnosticReport.model_validate(report)
    assert [r["id"] for r in report["contained"]] == ["model"]
    assert "result" not in report and "basedOn" not in report and "conclusionCode" not in report
    assert report["id"].startswith("covidet-")  # not a valid FHIR id as given: a stable hash instead
    assert report["identifier"][0]["value"] == "report/with spaces"
    assert DISCLAIMER in report["conclusion"].lower()


# ------------------------------------------------------------------------------------------------ DICOM


def test_secondary_capture_round_trip(ctx: ReportContext, xray: XRayImage, rg1_dicom: Path) -> None:
    header = dcmread(rg1_dicom, stop_before_pixels=True)
    ds = dicom_secondary_capture(ctx, xray.pixels, source=header)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    back = dcmread(io.BytesIO(buffer.getvalue()))

    assert back.SOPClassUID == SECONDARY_CAPTURE_SOP_CLASS
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.StudyInstanceUID == xray.study_instance_uid
    assert back.PatientID == "PAT-0042"
    assert str(back.PatientName) == "Doe^Jane"
    assert back.AccessionNumber == "ACC-7"
    assert (back.StudyDate, back.StudyTime) == (header.StudyDate, header.StudyTime)  # from the source
    assert back.SeriesInstanceUID not in (xray.series_instance_uid, back.SOPInstanceUID)
    assert back.SOPInstanceUID != xray.sop_instance_uid
    for sequence in (back.ReferencedImageSequence, back.SourceImageSequence):
        assert sequence[0].ReferencedSOPInstanceUID == xray.sop_instance_uid
        assert sequence[0].ReferencedSOPClassUID == CR_SOP_CLASS
    assert back.Modality == "OT"
    assert back.ConversionType == "WSD"
    assert back.BurnedInAnnotation == "YES"
    assert list(back.ImageType) == ["DERIVED", "SECONDARY"]
    for text in (back.ImageComments, back.DerivationDescription, back.SeriesDescription):
        assert "frcnn-r101-fpn" in text and "1.4.2" in text and DISCLAIMER.upper() in text.upper()
    assert (back.Rows, back.Columns, back.SamplesPerPixel) == (xray.height, xray.width, 3)


def test_secondary_capture_uids_are_stable_per_report(ctx: ReportContext, xray: XRayImage) -> None:
    small = xray.pixels[:64, :64]
    first, again = dicom_secondary_capture(ctx, small), dicom_secondary_capture(ctx, small)
    other = dicom_secondary_capture(replace(ctx, report_id="rpt-18"), small)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.SeriesInstanceUID != other.SeriesInstanceUID


def test_secondary_capture_pixels_burned_in_where_drawn(ctx: ReportContext, xray: XRayImage) -> None:
    ds = dicom_secondary_capture(ctx, xray.pixels)
    rgb = ds.pixel_array
    source = xray.to_uint8()
    assert rgb.shape == (*source.shape, 3)

    # On the left edge of the covid19 box: pure box colour (red), where the source is gray.
    y, x = 800, int(COVID_BOX.x1) + 1
    assert tuple(int(v) for v in rgb[y, x]) == (255, 40, 40)
    assert source[y, x] != 255 or rgb[y, x, 1] != source[y, x]
    # Far from boxes, labels and banner: the X-ray unchanged, geometry preserved.
    region = (slice(1300, 1700), slice(1600, 1800))
    assert np.array_equal(rgb[region][..., 0], source[region])
    assert np.array_equal(rgb[region][..., 1], source[region])
    # The banner across the bottom rows differs from the source.
    assert not np.array_equal(rgb[-5:, :, 0], source[-5:, :])

    reread = read_image(_dicom_bytes(ds), name="capture")  # covidet's own reader takes it
    assert (reread.width, reread.height, reread.photometric) == (xray.width, xray.height, "RGB")
    assert reread.study_instance_uid == xray.study_instance_uid
    assert np.abs(reread.pixels[region] - source[region] / 255.0).max() < 1.5 / 255


def _dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_write_report_both_formats(ctx: ReportContext, xray: XRayImage, tmp_path: Path) -> None:
    import json

    fhir_path = write_report(ctx, "fhir", tmp_path / "out" / "report.json")
    DiagnosticReport.model_validate(json.loads(fhir_path.read_text(encoding="utf-8")))
    dicom_path = write_report(ctx, "dicom", tmp_path / "report.dcm", xray_pixels=xray.pixels[:128, :128])
    assert dcmread(dicom_path).SOPClassUID == SECONDARY_CAPTURE_SOP_CLASS
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["report.dcm", "report.json"]
    with pytest.raises(ValueError, match="xray_pixels"):
        write_report(ctx, "dicom", tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="unknown report format"):
        write_report(ctx, "hl7", tmp_path / "x.txt")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- forwarding


def _listening(port: int) -> bool:
    """Whether a socket listens on TCP ``port`` (Linux ``/proc/net/tcp*``; state 0A is LISTEN)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait until storescp listens, without connecting to it: it serves one connection at a time and
    would take a bare TCP probe for an association, racing the test's own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"storescp exited with status {process.returncode}")
        if _listening(port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"storescp does not listen on {port} after {timeout} s")


@contextlib.contextmanager
def _storescp(directory: Path, *extra: str) -> Iterator[int]:
    """A private dcmtk storescp on a free loopback port, writing what it receives to ``directory``."""
    binary = find_binary("storescp", "dcmtk", ("/usr/bin/storescp",))
    port = free_port()
    process = subprocess.Popen(
        [binary, "--aetitle", "PACS", "-od", str(directory), *extra, str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_forward_secondary_capture_to_storescp(ctx: ReportContext, xray: XRayImage, tmp_path: Path) -> None:
    ds = dicom_secondary_capture(ctx, xray.pixels[:256, :256])
    received_dir = tmp_path / "pacs"
    received_dir.mkdir()
    with _storescp(received_dir) as port:
        status = forward_to_pacs(ds, host="127.0.0.1", port=port, called_ae="PACS", timeout=10)
        deadline = time.monotonic() + 5
        while not any(received_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert status == 0x0000
    files = list(received_dir.iterdir())
    assert len(files) == 1
    received = dcmread(files[0])
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    assert received.StudyInstanceUID == ctx.study_instance_uid
    assert np.array_equal(received.pixel_array, ds.pixel_array)


def test_forward_to_closed_port_raises(ctx: ReportContext, xray: XRayImage) -> None:
    ds = dicom_secondary_capture(ctx, xray.pixels[:32, :32])
    port = free_port()  # nothing listens there
    with pytest.raises(ForwardError, match=rf"PACS@127\.0\.0\.1:{port} failed: cannot connect"):
        forward_to_pacs(ds, host="127.0.0.1", port=port, called_ae="PACS", timeout=5)


def test_forward_rejected_association_raises(ctx: ReportContext, xray: XRayImage) -> None:
    # pynetdicom's SCP, in-process: it sends A-ASSOCIATE-RJ and waits for the requestor to close,
    # whereas storescp --refuse may reset the connection before the rejection is read.
    scp = AE(ae_title="PACS")
    scp.require_called_aet = True
    scp.add_supported_context(SECONDARY_CAPTURE_SOP_CLASS)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    try:
        ds = dicom_secondary_capture(ctx, xray.pixels[:32, :32])
        with pytest.raises(ForwardError, match=r"association rejected .*Called AE title not recognised"):
            forward_to_pacs(ds, host="127.0.0.1", port=port, called_ae="NOT-THE-PACS", timeout=5)
    finally:
        server.shutdown()
