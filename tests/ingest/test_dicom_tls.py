"""DICOM over TLS with client certificates (issue 19, item 7), against dcmtk's storescu/echoscu
``+tls``, with a CA, server and client certificates made by openssl for the test."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from covidet.config import Settings
from covidet.store.models import Image, RejectedMessage
from tests.ingest.conftest import MODALITY_AE, Harness, dcmtk, dcmtk_env, storescu
from tests.ingest.dicom_receivers import receiver_factory  # noqa: F401 (fixture)
from tests.servers import find_binary

SUCCESS_LINE = "Received Store Response (Success)"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([find_binary("openssl", "openssl"), *args], cwd=cwd, check=True, capture_output=True)


def _issue(folder: Path, ca: str, name: str, extensions: str) -> None:
    """``name``.key / ``name``.crt signed by the CA ``ca``.key / ``ca``.crt."""
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=folder)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr", cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip


def _ca(folder: Path, name: str) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=folder)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-out", f"{name}.crt", cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca (the hospital's), server (covidet), xray1 (the modality), rogue-ca and intruder (not trusted)."""
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _issue(folder, "ca", "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _issue(folder, "ca", "xray1", "extendedKeyUsage=clientAuth\n")
    _ca(folder, "rogue-ca")
    _issue(folder, "rogue-ca", "intruder", "extendedKeyUsage=clientAuth\n")
    return folder


def _tls(pki: Path, client: str | None = "xray1") -> list[str]:
    """dcmtk options: TLS, trusting our CA, with ``client``'s key and certificate (None: anonymous)."""
    identity = ["+tls", str(pki / f"{client}.key"), str(pki / f"{client}.crt")] if client else ["+tla"]
    return [*identity, "-pw", "+cf", str(pki / "ca.crt")]


def _refusals(harness: Harness) -> list[str]:
    with harness.db.session() as session:
        return list(session.scalars(select(RejectedMessage.reason).order_by(RejectedMessage.id)))


def test_storescu_and_echoscu_over_mutual_tls(
    receiver_factory: Callable[..., Harness],  # noqa: F811
    pki: Path,
    cxr_dicom_files: list[Path],
) -> None:
    settings = Settings(
        dicom_tls_cert=pki / "server.crt",
        dicom_tls_key=pki / "server.key",
        dicom_tls_ca=pki / "ca.crt",
        dicom_acse_timeout=60,  # a silent connection must not block the others for that long
    )
    harness = receiver_factory(settings=settings)

    with socket.create_connection(("127.0.0.1", harness.port)):  # connects, never says hello
        stored = storescu(harness.port, cxr_dicom_files[:2], *_tls(pki))
    assert stored.stdout.count(SUCCESS_LINE) == 2, stored.stdout
    echo = subprocess.run(
        [
            dcmtk("echoscu"),
            "-v",
            *_tls(pki),
            "-aet",
            MODALITY_AE,
            "-aec",
            "COVIDET",
            "127.0.0.1",
            str(harness.port),
        ],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )
    assert echo.returncode == 0 and "Received Echo Response (Success)" in echo.stdout + echo.stderr, (
        echo.stderr
    )

    # Refused before any association: plain TCP, TLS without a certificate, a certificate of another CA.
    plain = storescu(harness.port, [cxr_dicom_files[2]])
    anonymous = storescu(harness.port, [cxr_dicom_files[2]], *_tls(pki, None))
    rogue = storescu(
        harness.port,
        [cxr_dicom_files[2]],
        "+tls",
        str(pki / "intruder.key"),
        str(pki / "intruder.crt"),
        "-pw",
        "+cf",
        str(pki / "ca.crt"),
    )
    for result in (plain, anonymous, rogue):
        assert result.returncode != 0 and SUCCESS_LINE not in result.stdout, result.stdout

    with harness.db.session() as session:
        assert len(list(session.scalars(select(Image)))) == 2
    # Each handshake is refused on its connection's thread, which may record it just after the
    # client gave up: wait for the rows (the silent connection, plain, anonymous, rogue).
    deadline = time.monotonic() + 30
    while len(reasons := _refusals(harness)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(reasons) >= 3, reasons
    assert all(r.startswith("TLS handshake failed") for r in reasons)

    # ...and the receiver still serves the modality afterwards.
    again = storescu(harness.port, [cxr_dicom_files[3]], *_tls(pki))
    assert SUCCESS_LINE in again.stdout, again.stdout
