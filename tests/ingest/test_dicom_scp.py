"""The DICOM receiver against real clients (dcmtk storescu/echoscu, pynetdicom), a real database
(SQLite and PostgreSQL) and the real image store; every test checks what was stored afterwards."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from sqlalchemy import func, select

from covidet.imaging.reader import read_image
from covidet.ingest.dicom_scp import (
    ACCEPTED_TRANSFER_SYNTAXES,
    DicomReceiver,
    StoreStatus,
    set_tcp_nodelay,
)
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import Image, RejectedMessage
from tests.ingest.conftest import (
    MODALITY_AE,
    N_CXR_FILES,
    Harness,
    dcmtk,
    dcmtk_env,
    encode_file,
    storescu,
)
from tests.servers import free_port

DX = "1.2.840.10008.5.1.4.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SUCCESS_LINE = "Received Store Response (Success)"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images(harness: Harness) -> list[Image]:
    with harness.db.session() as session:
        return list(session.scalars(select(Image).order_by(Image.id)))


def rejections(harness: Harness) -> list[RejectedMessage]:
    with harness.db.session() as session:
        return list(session.scalars(select(RejectedMessage).order_by(RejectedMessage.id)))


def assert_intact(harness: Harness, rows: list[Image]) -> None:
    """Every row's file exists in the store with the recorded size and SHA-256."""
    for row in rows:
        path = harness.store.path(row.path)
        assert path.is_file(), row.path
        assert path.stat().st_size == row.size_bytes
        assert sha256_file(path) == row.content_sha256


def scu(port: int, contexts: list[tuple[str, str]], *, aet: str = MODALITY_AE):
    """A pynetdicom association to the receiver proposing ``contexts`` (one per SOP class/syntax)."""
    ae = AE(ae_title=aet)
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="COVIDET", evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    )
    assert assoc.is_established
    return assoc


# ------------------------------------------------------------------------------------ storing


def test_storescu_stores_images_and_echoscu_verifies(
    receiver: Harness, rg1_dicom: Path, cxr_dicom_files: list[Path], tmp_path: Path
) -> None:
    """RG1 (16-bit CR) and dataset X-rays uncompressed, dataset X-rays as JPEG baseline (-xy)."""
    uncompressed = [rg1_dicom, *cxr_dicom_files[:3]]
    jpeg = [
        encode_file(f, tmp_path / f"jpeg-{i}.dcm", JPEGBaseline8Bit)
        for i, f in enumerate(cxr_dicom_files[3:6])
    ]

    first = storescu(receiver.port, uncompressed)
    second = storescu(receiver.port, jpeg, "-xy")
    assert first.returncode == 0, first.stdout
    assert second.returncode == 0, second.stdout
    assert first.stdout.count(SUCCESS_LINE) == len(uncompressed)
    assert second.stdout.count(SUCCESS_LINE) == len(jpeg)
    assert "-> JPEG Baseline" in second.stdout  # sent as JPEG, not converted back

    echo = subprocess.run(
        [dcmtk("echoscu"), "-v", "-aet", MODALITY_AE, "-aec", "COVIDET", "127.0.0.1", str(receiver.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    assert "Received Echo Response (Success)" in echo.stdout + echo.stderr

    rows = images(receiver)
    sent = uncompressed + jpeg
    assert [r.sop_instance_uid for r in rows] == [dcmread(f).SOPInstanceUID for f in sent]
    assert_intact(receiver, rows)
    for row, source in zip(rows, sent, strict=True):
        original = dcmread(source)
        stored = dcmread(receiver.store.path(row.path))
        assert stored.PixelData == original.PixelData  # the object as sent, bit for bit
        assert row.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
        assert (row.rows, row.columns) == (original.Rows, original.Columns)
        assert row.sop_class_uid == original.SOPClassUID
        assert row.source_device_id == receiver.device_id
        assert row.status == "queued"
    assert rows[0].modality == "CR" and rows[1].modality == "DX"
    assert receiver.queue.enqueued == len(sent)
    with receiver.db.session() as session:
        counts = queries.counts(session)
    patients = {dcmread(f, stop_before_pixels=True).PatientID for f in sent}
    assert counts["images"] == len(sent)
    assert counts["studies"] == len(sent)
    assert counts["patients"] == len(patients)
    assert counts["rejected_messages"] == 0


_STORESCU_CASES = [
    # (transfer syntax, storescu option; the file is made in that syntax unless storescu converts it)
    (ExplicitVRLittleEndian, None),
    (ImplicitVRLittleEndian, "-xi"),
    (DeflatedExplicitVRLittleEndian, "-xd"),
    (JPEGBaseline8Bit, "-xy"),
    (JPEGExtended12Bit, "-xx"),
    (JPEGLosslessSV1, "-xs"),
    (JPEGLSLossless, "-xt"),
    (JPEGLSNearLossless, "-xu"),
    (JPEG2000Lossless, "-xv"),
    (JPEG2000, "-xw"),
    (RLELossless, "-xr"),
]


@pytest.mark.parametrize(("transfer_syntax", "option"), _STORESCU_CASES, ids=lambda v: getattr(v, "name", v))
def test_transfer_syntaxes_with_storescu(
    sqlite_receiver: Harness,
    cxr_dicom_files: list[Path],
    tmp_path: Path,
    transfer_syntax: str,
    option: str | None,
) -> None:
    """Each transfer syntax arrives as such, is stored as sent, and decodes to the right size."""
    index = _STORESCU_CASES.index((transfer_syntax, option))
    source = cxr_dicom_files[10 + index]
    converted_by_storescu = transfer_syntax in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
    )
    path = source if converted_by_storescu else encode_file(source, tmp_path / "sent.dcm", transfer_syntax)
    result = storescu(sqlite_receiver.port, [path], *([option] if option else []))
    assert result.returncode == 0, result.stdout
    assert SUCCESS_LINE in result.stdout
    [row] = images(sqlite_receiver)
    assert row.transfer_syntax_uid == transfer_syntax
    assert_intact(sqlite_receiver, [row])
    xray = read_image(sqlite_receiver.store.path(row.path))  # what the analysis worker will do
    original = dcmread(source)
    assert xray.pixels.shape[:2] == (original.Rows, original.Columns)


@pytest.mark.parametrize("transfer_syntax", [JPEGLossless, ExplicitVRBigEndian], ids=lambda v: v.name)
def test_transfer_syntaxes_with_pynetdicom(
    sqlite_receiver: Harness, cxr_dicom_files: list[Path], tmp_path: Path, transfer_syntax: str
) -> None:
    """Syntaxes storescu cannot propose: JPEG lossless process 14 (dcmcjpeg +el), big endian."""
    source = cxr_dicom_files[30 if transfer_syntax == JPEGLossless else 31]
    if transfer_syntax == JPEGLossless:
        ds = dcmread(encode_file(source, tmp_path / "p14.dcm", transfer_syntax))
    else:
        ds = dcmread(source)
        for _ in ds:  # decode every element, so that it is re-encoded (not copied raw)
            pass
        ds.set_original_encoding(False, False)  # pynetdicom encodes it explicit VR big endian
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    assoc = scu(sqlite_receiver.port, [(DX, transfer_syntax)])
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == StoreStatus.SUCCESS
    [row] = images(sqlite_receiver)
    assert row.transfer_syntax_uid == transfer_syntax
    assert read_image(sqlite_receiver.store.path(row.path)).pixels.shape[:2] == (ds.Rows, ds.Columns)


def test_accepted_transfer_syntaxes_cover_the_promised_ones() -> None:
    promised = {c[0] for c in _STORESCU_CASES} | {JPEGLossless, ExplicitVRBigEndian}
    assert promised <= set(ACCEPTED_TRANSFER_SYNTAXES)


def test_resend_of_the_same_sop_instance_is_acknowledged_and_stored_once(
    sqlite_receiver: Harness, cxr_dicom_files: list[Path]
) -> None:
    source = cxr_dicom_files[40]
    first = storescu(sqlite_receiver.port, [source])
    again = storescu(sqlite_receiver.port, [source, source])  # two more times, one association
    implicit = storescu(sqlite_receiver.port, [source], "-xi")  # same instance, other bytes
    for result in (first, again, implicit):
        assert result.returncode == 0, result.stdout
    assert again.stdout.count(SUCCESS_LINE) == 2 and SUCCESS_LINE in implicit.stdout
    rows = images(sqlite_receiver)
    assert len(rows) == 1
    assert rows[0].sop_instance_uid == dcmread(source).SOPInstanceUID
    assert rows[0].transfer_syntax_uid == ExplicitVRLittleEndian  # the first copy is kept
    assert_intact(sqlite_receiver, rows)
    assert len([p for p in sqlite_receiver.store.root.rglob("*.dcm")]) == 1
    assert sqlite_receiver.queue.enqueued == 1
    assert rejections(sqlite_receiver) == []


# ------------------------------------------------------------------------------------ who may send


def test_only_registered_active_modalities_may_associate(
    sqlite_receiver: Harness, cxr_dicom_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    harness = sqlite_receiver
    with caplog.at_level(logging.WARNING, logger="covidet"):
        unknown = storescu(harness.port, [cxr_dicom_files[0]], aet="STRANGER")
    assert any("STRANGER" in r.getMessage() and "rejected" in r.getMessage() for r in caplog.records)
    assert unknown.returncode != 0
    assert "Association Rejected" in unknown.stdout
    assert "Rejected Permanent" in unknown.stdout and "Calling AE Title Not Recognized" in unknown.stdout

    wrong_called = storescu(harness.port, [cxr_dicom_files[0]], aec="OTHERPACS")
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stdout

    # Devices added, deactivated or of another kind while the receiver runs count at once.
    with harness.db.session(write=True) as session:
        queries.create_device(session, "upload-gw", "uploader", ae_title="GATEWAY")
        queries.create_device(session, "xray-room-2", "modality", ae_title="XRAY2")
        queries.create_device(session, "xray-old", "modality", ae_title="XRAYOLD")
    with harness.db.session(write=True) as session:
        old = queries.device_by_ae_title(session, "XRAYOLD")
        assert old is not None
        old.active = False
    assert storescu(harness.port, [cxr_dicom_files[0]], aet="GATEWAY").returncode != 0
    assert storescu(harness.port, [cxr_dicom_files[0]], aet="XRAYOLD").returncode != 0
    assert images(harness) == []

    late = storescu(harness.port, [cxr_dicom_files[1]], aet="XRAY2")
    good = storescu(harness.port, [cxr_dicom_files[2]])
    assert late.returncode == 0 and good.returncode == 0, late.stdout + good.stdout
    rows = images(harness)
    assert len(rows) == 2
    with harness.db.session() as session:
        xray2 = queries.device_by_ae_title(session, "XRAY2")
        assert xray2 is not None
        assert [r.source_device_id for r in rows] == [xray2.id, harness.device_id]

    refused = rejections(harness)
    assert [r.source for r in refused] == ["STRANGER", MODALITY_AE, "GATEWAY", "XRAYOLD"]
    assert all(r.channel == "dicom" and "rejected-permanent" in r.reason for r in refused)
    assert "'STRANGER' is not a registered active modality" in refused[0].reason
    assert "called AE title 'OTHERPACS'" in refused[1].reason
    assert "belongs to a uploader" in refused[2].reason


# ------------------------------------------------------------------------------------ bad input


def _dx_without_pixels(source: Path) -> Dataset:
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.PixelData
    return ds


def _dx_truncated(source: Path) -> Dataset:
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 * 2]  # even length, a third missing
    return ds


def test_bad_input_gets_a_precise_status_and_the_server_keeps_serving(
    start_receiver: Callable[..., Harness], rg1_dicom: Path, cxr_dicom_files: list[Path], tmp_path: Path
) -> None:
    # 2 Mpixel limit: the dataset X-rays (<= 1024 x 1024) pass, RG1 (1841 x 1955) is too large.
    harness = start_receiver(f"sqlite:///{tmp_path / 'covidet.db'}", max_pixels=2_000_000)
    assert storescu(harness.port, [cxr_dicom_files[0]]).returncode == 0
    [accepted] = images(harness)

    ct_small = get_testdata_file("CT_small.dcm")
    assert ct_small is not None
    assoc = scu(
        harness.port,
        [
            (DX, ExplicitVRLittleEndian),
            ("1.2.840.10008.5.1.4.1.1.1", ExplicitVRLittleEndian),
            (CT, ExplicitVRLittleEndian),
        ],
    )
    try:
        # A CT is not a chest radiograph: its presentation context is refused at negotiation.
        assert CT in {cx.abstract_syntax for cx in assoc.rejected_contexts}
        assert CT not in {cx.abstract_syntax for cx in assoc.accepted_contexts}
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(dcmread(ct_small))
        statuses = {
            "no pixels": assoc.send_c_store(_dx_without_pixels(cxr_dicom_files[1])),
            "truncated": assoc.send_c_store(_dx_truncated(cxr_dicom_files[2])),
            "too large": assoc.send_c_store(dcmread(rg1_dicom)),
        }
        # The image store's folder turns into a file (a broken disk): refused, the sender keeps it.
        store_root = harness.store.root
        blocker = tmp_path / "not-a-folder"
        blocker.write_bytes(b"")
        harness.store.root = blocker
        try:
            statuses["storage failure"] = assoc.send_c_store(dcmread(cxr_dicom_files[5]))
        finally:
            harness.store.root = store_root
        # ...and the same association still stores a good image afterwards.
        good = assoc.send_c_store(dcmread(cxr_dicom_files[3]))
    finally:
        assoc.release()

    assert statuses["no pixels"].Status == StoreStatus.DATASET_MISMATCH == 0xA900
    assert "no pixel data" in statuses["no pixels"].ErrorComment
    assert statuses["truncated"].Status == StoreStatus.CANNOT_UNDERSTAND == 0xC000
    assert "truncated" in statuses["truncated"].ErrorComment
    assert statuses["too large"].Status == StoreStatus.OUT_OF_RESOURCES == 0xA700
    assert "too large" in statuses["too large"].ErrorComment
    assert statuses["storage failure"].Status == StoreStatus.STORAGE_FAILURE == 0xA701
    assert statuses["storage failure"].ErrorComment.startswith("storage failure")
    assert good.Status == StoreStatus.SUCCESS

    # A fresh association (storescu) is served too.
    assert storescu(harness.port, [cxr_dicom_files[4]]).returncode == 0

    rows = images(harness)
    assert [r.sop_instance_uid for r in rows] == [
        dcmread(f, stop_before_pixels=True).SOPInstanceUID
        for f in (cxr_dicom_files[0], cxr_dicom_files[3], cxr_dicom_files[4])
    ]
    assert rows[0].content_sha256 == accepted.content_sha256
    assert_intact(harness, rows)
    refused = rejections(harness)
    assert len(refused) == 4
    assert all(r.channel == "dicom" and r.source == MODALITY_AE and r.payload for r in refused)
    assert "no pixel data" in refused[0].reason
    assert "truncated" in refused[1].reason
    assert "too large" in refused[2].reason
    assert "storage failure" in refused[3].reason


def test_receiver_validates_its_ae_title() -> None:
    with pytest.raises(ValueError, match="AE title"):
        DicomReceiver(None, None, ae_title="A" * 17)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ durability


def _acknowledged(storescu_output: str) -> list[str]:
    """Files storescu reports as stored: each "Sending file: F" followed by a success response."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        if match := re.search(r"Sending file: (\S+)", line):
            current = match.group(1)
        elif SUCCESS_LINE in line and current is not None:
            acked.append(current)
            current = None
    return acked


def _start_cli_receiver(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "covidet.cli", "dicom-scp", "--port", str(port)],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while f"listening on 127.0.0.1:{port}" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"covidet dicom-scp did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process


def test_sigkill_mid_transfer_loses_no_acknowledged_image(
    cxr_dicom_files: list[Path], tmp_path: Path
) -> None:
    """Kill -9 the `covidet dicom-scp` process while storescu sends 50 images; after a restart every
    image acknowledged before the kill is stored exactly once, and a full re-send completes the set."""
    home = tmp_path / "home"
    env = {**os.environ, "COVIDET_HOME": str(home), "COVIDET_LOG_LEVEL": "INFO"}
    env.pop("COVIDET_DATABASE_URL", None)
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "covidet.cli",
            "devices",
            "add",
            "room-1",
            "--kind",
            "modality",
            "--ae-title",
            MODALITY_AE,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    files = cxr_dicom_files[:N_CXR_FILES]
    uids = {str(f): dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    port = free_port()

    receiver = _start_cli_receiver(env, port, tmp_path / "dicom-scp-1.log")
    sender = subprocess.Popen(
        [
            dcmtk("storescu"),
            "-v",
            "-aet",
            MODALITY_AE,
            "-aec",
            "COVIDET",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dcmtk_env(),
    )
    assert sender.stdout is not None
    output = []
    for line in sender.stdout:
        output.append(line)
        if "".join(output).count(SUCCESS_LINE) >= 15 and receiver.poll() is None:
            receiver.send_signal(signal.SIGKILL)
    sender.wait(timeout=60)
    receiver.wait(timeout=10)
    assert receiver.returncode == -signal.SIGKILL
    acked = _acknowledged("".join(output))
    assert 15 <= len(acked) < len(files), "the kill must land mid-transfer"
    assert sender.returncode != 0

    db = Database(f"sqlite:///{home / 'covidet.db'}", migrate=False)
    try:
        with db.session() as session:
            stored = list(session.scalars(select(Image.sop_instance_uid)))
            assert len(stored) == len(set(stored))  # no duplicates
            for path in acked:
                count = session.scalar(select(func.count()).where(Image.sop_instance_uid == uids[path]))
                assert count == 1, f"{path} was acknowledged before the kill but is not stored"

        log = tmp_path / "dicom-scp-2.log"
        receiver = _start_cli_receiver(env, port, log)
        try:
            resend = storescu(port, files)
        finally:
            receiver.send_signal(signal.SIGTERM)
            # It stops within COVIDET_SHUTDOWN_GRACE_SECONDS (30 s) even with an analysis running; a
            # wait of exactly the grace raced it on a loaded machine.
            receiver.wait(timeout=120)
        assert resend.returncode == 0, resend.stdout
        assert resend.stdout.count(SUCCESS_LINE) == len(files)
        assert receiver.returncode == 0, log.read_text()[-2000:]

        with db.session() as session:
            rows = list(session.scalars(select(Image)))
        assert sorted(r.sop_instance_uid for r in rows) == sorted(uids.values())
        for row in rows:
            path = home / "images" / row.path
            assert sha256_file(path) == row.content_sha256
    finally:
        db.dispose()
