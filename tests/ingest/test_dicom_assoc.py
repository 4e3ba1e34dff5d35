"""Association admission and shutdown of the DICOM receiver (issue 19, items 1, 6 and 7's address
ties), against dcmtk's storescu and raw TCP connections: silent connections never hold a place, the
association limit refuses with rejected-transient and leaves a log line and a rejected_messages row,
an AE title tied to addresses is refused from elsewhere, and shutdown does not wait on idle peers."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from pynetdicom import AE
from sqlalchemy import select

from covidet.config import Settings
from covidet.ingest.dicom_checks import AssociationPolicy
from covidet.store import queries
from covidet.store.models import Image, RejectedMessage
from tests.ingest.conftest import MODALITY_AE, Harness, storescu
from tests.ingest.dicom_receivers import receiver_factory  # noqa: F401 (fixture)

SUCCESS_LINE = "Received Store Response (Success)"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


@contextmanager
def silent_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections that send nothing (a port scan, a health check, a stalled peer)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(count)]
        yield sockets


@contextmanager
def idle_associations(port: int, count: int) -> Iterator[list[object]]:
    """``count`` established associations that then do nothing."""
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(DX)
    ae.network_timeout = ae.acse_timeout = 120
    assocs = [ae.associate("127.0.0.1", port, ae_title="COVIDET") for _ in range(count)]
    try:
        assert all(a.is_established for a in assocs)
        yield assocs
    finally:
        for assoc in assocs:
            if assoc.is_established:
                assoc.release()


def _refusals(harness: Harness) -> list[RejectedMessage]:
    with harness.db.session() as session:
        return list(session.scalars(select(RejectedMessage).order_by(RejectedMessage.id)))


def test_silent_connections_do_not_block_modalities(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    cxr_dicom_files: list[Path],
) -> None:
    """Ten idle connections used to fill the 10 association places for ~30 s; with a limit of 4 and
    a 60 s ACSE timeout, 16 silent connections (and 4 opened and closed without a byte) still leave
    every place to storescu."""
    harness = receiver_factory(policy=AssociationPolicy(max_associations=4), acse_timeout=60)
    for _ in range(4):
        socket.create_connection(("127.0.0.1", harness.port)).close()
    with silent_connections(harness.port, 16):
        results = [storescu(harness.port, [f]) for f in cxr_dicom_files[:3]]
    for result in results:
        assert result.returncode == 0 and SUCCESS_LINE in result.stdout, result.stdout
    with harness.db.session() as session:
        assert len(list(session.scalars(select(Image)))) == 3
    assert _refusals(harness) == []


def test_over_the_limit_is_refused_transient_logged_and_recorded(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    cxr_dicom_files: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = receiver_factory(policy=AssociationPolicy(max_associations=2))
    with idle_associations(harness.port, 2), caplog.at_level(logging.WARNING, logger="covidet"):
        refused = storescu(harness.port, [cxr_dicom_files[0]])
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout and "Rejected Transient" in refused.stdout
    assert "Local Limit Exceeded" in refused.stdout, refused.stdout
    [line] = [r.getMessage() for r in caplog.records if "limit" in r.getMessage()]
    assert MODALITY_AE in line and "127.0.0.1:" in line and "the limit is 2" in line
    [row] = _refusals(harness)
    assert row.channel == "dicom" and row.source == MODALITY_AE
    assert "rejected-transient" in row.reason and "from 127.0.0.1:" in row.reason

    # The places are free again once those associations end.
    again = storescu(harness.port, [cxr_dicom_files[0]])
    assert SUCCESS_LINE in again.stdout, again.stdout


def test_an_ae_title_tied_to_an_address_is_refused_from_elsewhere(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    cxr_dicom_files: list[Path],
) -> None:
    settings = Settings(dicom_peer_addresses={MODALITY_AE: ["10.20.30.0/24", "192.0.2.7"]})
    harness = receiver_factory(settings=settings)
    with harness.db.session(write=True) as session:
        queries.create_device(session, "xray-free", "modality", ae_title="XRAYFREE")
    stolen = storescu(harness.port, [cxr_dicom_files[0]])
    assert "Calling AE Title Not Recognized" in stolen.stdout, stolen.stdout
    free = storescu(harness.port, [cxr_dicom_files[1]], aet="XRAYFREE")  # not tied: from anywhere
    assert SUCCESS_LINE in free.stdout, free.stdout
    [row] = _refusals(harness)
    assert row.source == MODALITY_AE
    assert "may only call from 10.20.30.0/24, 192.0.2.7/32, not 127.0.0.1" in row.reason

    local = receiver_factory(settings=Settings(dicom_peer_addresses={MODALITY_AE: ["127.0.0.1"]}))
    assert SUCCESS_LINE in storescu(local.port, [cxr_dicom_files[0]]).stdout


def test_settings_are_checked_at_start() -> None:
    for settings, message in (
        (Settings(dicom_peer_addresses={"XRAY1": ["not-an-address"]}), "dicom_peer_addresses"),
        (Settings(dicom_tls_key=Path("/nonexistent.key")), "go together"),
        (Settings(dicom_tls_ca=Path("/nonexistent.pem")), "needs dicom_tls_cert"),
    ):
        with pytest.raises(ValueError, match=message):
            from covidet.ingest.dicom_scp import DicomReceiver

            DicomReceiver.from_settings(settings, None, None, host="127.0.0.1", port=0)  # type: ignore[arg-type]


def test_shutdown_does_not_wait_for_idle_or_silent_peers(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stop() used to wait its whole timeout for associations that were merely open; now it ends idle
    ones at once and waits only for a C-STORE in progress. (A 600 s timeout: the old code would
    still be waiting when the join below gives up.)"""
    harness = receiver_factory(acse_timeout=120, network_timeout=300)
    with (
        idle_associations(harness.port, 2),
        silent_connections(harness.port, 3),
        caplog.at_level(logging.INFO, logger="covidet"),
    ):
        stopper = threading.Thread(target=harness.receiver.stop, kwargs={"timeout": 600}, daemon=True)
        stopper.start()
        stopper.join(60)
        assert not stopper.is_alive(), "stop() is still waiting for idle associations"
    ended = [r for r in caplog.records if "at shutdown" in r.getMessage()]
    assert len(ended) >= 2 and all(r.levelno == logging.INFO for r in ended)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
