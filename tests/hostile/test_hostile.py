"""Every file of the hostile corpus (tests/hostile/corpus.py) through both ingest paths: DICOM C-STORE
(a pynetdicom SCU, which sends a file's bytes as they are) to a running receiver, and HTTPS upload to a
running uvicorn server. Each gets its expected outcome; everything accepted decodes with the reader
the analysis uses; every refusal is in ``rejected_messages``; nothing is logged at ERROR."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from sqlalchemy import select

from covidet.imaging.reader import read_image
from covidet.ingest.dicom_scp import DicomReceiver
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import Image, RejectedMessage
from covidet.worker.queue import InProcessQueue
from tests.api.test_upload import MAX_IMAGE_BYTES, make_app, post, serve_in_thread
from tests.hostile.corpus import NEGOTIATION, UNSENDABLE, Case, build_corpus

SENDER = "HOSTILE1"
_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX
    "1.2.840.10008.5.1.4.1.1.7",  # SC
)
_SYNTAXES = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
)
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def corpus(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    with (data_root / "manifest.csv").open(newline="") as handle:
        first = next(csv.DictReader(handle))
    return build_corpus(
        data_root / first["image"], tmp_path_factory.mktemp("hostile"), max_bytes=MAX_IMAGE_BYTES
    )


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[DicomReceiver]:
    db = Database(f"sqlite:///{tmp_path / 'dicom.db'}")
    with db.session(write=True) as session:
        queries.create_device(session, "hostile-modality", "modality", ae_title=SENDER)
    ingest = ImageIngest(
        db,
        ImageStore(tmp_path / "dicom-images"),
        InProcessQueue(),
        max_bytes=MAX_IMAGE_BYTES,
        max_pixels=50_000_000,
    )
    server = DicomReceiver(db, ingest, port=0)
    server.start()
    yield server
    server.stop(timeout=5)
    db.dispose()


def _send_all(port: int, cases: list[Case], folder: Path) -> dict[str, int | str]:
    """C-STORE each sendable case in one association (the files' bytes sent as they are)."""
    ae = AE(ae_title=SENDER)
    for sop_class in _SOP_CLASSES:
        for syntax in _SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="COVIDET")
    assert assoc.is_established
    outcomes: dict[str, int | str] = {}
    try:
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
        for case in cases:
            if case.dicom == UNSENDABLE:
                continue
            if case.dicom == NEGOTIATION:
                outcomes[case.name] = NEGOTIATION if CT in rejected else "accepted context"
                continue
            path = folder / f"{case.name}.dcm"
            path.write_bytes(case.data)
            status = assoc.send_c_store(path)
            outcomes[case.name] = int(status.Status) if "Status" in status else "no response"
    finally:
        assoc.release()
    return outcomes


def test_every_hostile_file_gets_its_outcome_on_both_paths(
    corpus: list[Case],
    receiver: DicomReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, keys = make_app(tmp_path, f"sqlite:///{tmp_path / 'api.db'}")
    with caplog.at_level(logging.WARNING):
        dicom = _send_all(receiver.port, corpus, tmp_path)
        with serve_in_thread(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
            http = {
                c.name: post(client, keys.uploader.api_key, c.data, f"{c.name}.bin").status_code
                for c in corpus
            }

    expected_dicom = {c.name: c.dicom for c in corpus if c.dicom != UNSENDABLE}
    assert dicom == expected_dicom
    assert http == {c.name: c.http for c in corpus}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage()[:200] for r in errors]

    # Nothing accepted is undecodable: the analysis's reader reads every stored file. Every
    # refusal is on record (C-STORE refusals; every HTTP answer other than 201).
    dicom_accepted = [c for c in corpus if c.dicom == 0x0000]
    dicom_refused = [c for c in corpus if isinstance(c.dicom, int) and c.dicom != 0x0000]
    http_accepted = [c for c in corpus if c.http == 201]
    for db, store, accepted, refused in (
        (receiver.db, receiver.ingest.store, dicom_accepted, dicom_refused),
        (app.state.db, app.state.ingest.store, http_accepted, [c for c in corpus if c.http != 201]),
    ):
        with db.session() as session:
            rows = list(session.scalars(select(Image)))
            reasons = list(session.scalars(select(RejectedMessage.reason)))
        assert len(rows) == len(accepted)
        for row in rows:
            xray = read_image(store.path(row.path))
            assert (xray.height, xray.width) == (row.rows, row.columns)
        assert len(reasons) == len(refused)
