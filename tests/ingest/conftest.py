"""Fixtures of the DICOM receiver tests: real chest X-rays as DICOM files (uncompressed and in the
compressed transfer syntaxes), the dcmtk command-line tools, and a running receiver over a real
database and image store.
"""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000, JPEG2000Lossless

from covidet.config import Settings
from covidet.imaging.dicom_writer import dicom_bytes, xray_to_dicom
from covidet.ingest.dicom_scp import DicomReceiver
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store import queries
from covidet.store.db import Database
from covidet.worker.queue import InProcessQueue
from tests.servers import find_binary

#: Calling AE title of the modality every receiver fixture registers.
MODALITY_AE = "XRAY1"

#: Distinct dataset images converted to DICOM for the tests (the kill test sends all of them).
N_CXR_FILES = 50


def dcmtk(name: str) -> str:
    """Path of a Debian dcmtk tool. /usr/bin first: pynetdicom installs same-named scripts in the venv."""
    return find_binary(name, "dcmtk", (f"/usr/bin/{name}",))


def dcmtk_env() -> dict[str, str]:
    """dcmtk only disables Nagle's algorithm when asked (TCP_NODELAY=1); see docs/dicom.md."""
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int, files: list[Path], *options: str, aet: str = MODALITY_AE, aec: str = "COVIDET"
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association with dcmtk's storescu (verbose, output merged)."""
    return subprocess.run(
        [
            dcmtk("storescu"),
            "-v",
            *options,
            "-aet",
            aet,
            "-aec",
            aec,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )


def manifest_rows(data_root: Path, n: int) -> list[dict[str, str]]:
    """The first ``n`` rows of the dataset manifest (distinct images)."""
    with (data_root / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= n, f"the dataset has {len(rows)} images, the tests need {n}"
    return rows[:n]


@pytest.fixture(scope="session")
def cxr_dicom_files(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``N_CXR_FILES`` real chest X-rays of the dataset as uncompressed DX DICOM files (each its own
    SOP instance and study, patient ids from the manifest)."""
    folder = tmp_path_factory.mktemp("cxr-dicom")
    files = []
    for index, row in enumerate(manifest_rows(data_root, N_CXR_FILES)):
        ds = xray_to_dicom(data_root / row["image"], patient_id=f"cxr-{row['patient_id']}")
        path = folder / f"{index:03d}.dcm"
        path.write_bytes(dicom_bytes(ds))
        files.append(path)
    return files


#: Transfer syntax -> how the tests make a file in it from an uncompressed one: a dcmtk encoder
#: command, or "pydicom" (pydicom's JPEG 2000 encoder, pylibjpeg-openjpeg).
_ENCODERS: dict[str, list[str] | str] = {
    "1.2.840.10008.1.2.4.50": ["dcmcjpeg", "+eb"],  # JPEG baseline (8-bit lossy)
    "1.2.840.10008.1.2.4.51": ["dcmcjpeg", "+ee"],  # JPEG extended
    "1.2.840.10008.1.2.4.70": ["dcmcjpeg", "+e1"],  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.57": ["dcmcjpeg", "+el"],  # JPEG lossless process 14
    "1.2.840.10008.1.2.4.80": ["dcmcjpls", "+el"],  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ["dcmcjpls", "+en"],  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5": ["dcmcrle"],  # RLE lossless
    JPEG2000Lossless: "pydicom",
    JPEG2000: "pydicom",
}


def encode_file(source: Path, target: Path, transfer_syntax: str) -> Path:
    """Write ``source`` (uncompressed) to ``target`` in ``transfer_syntax``; checks the result."""
    how = _ENCODERS[transfer_syntax]
    if how == "pydicom":
        ds = dcmread(source)
        kwargs = {"j2k_cr": [20]} if transfer_syntax == JPEG2000 else {}
        ds.compress(transfer_syntax, **kwargs)
        ds.save_as(target, enforce_file_format=True)
    else:
        assert isinstance(how, list)
        subprocess.run([dcmtk(how[0]), *how[1:], str(source), str(target)], check=True, capture_output=True)
    assert dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax
    return target


@dataclass
class Harness:
    """A running receiver and what it writes to."""

    db: Database
    store: ImageStore
    queue: InProcessQueue
    ingest: ImageIngest
    receiver: DicomReceiver
    device_id: int

    @property
    def port(self) -> int:
        return self.receiver.port


def start_harness(
    url: str,
    images: Path,
    *,
    device_name: str = "xray-room-1",
    max_pixels: int = 50_000_000,
    max_bytes: int = 200 * 1024 * 1024,
    settings: Settings | None = None,
    **receiver_options: Any,
) -> Harness:
    """A receiver listening on a free loopback port over the database at ``url`` and an image store in
    ``images``, with a registered modality ``MODALITY_AE`` (``device_name``). ``settings``: built with
    ``DicomReceiver.from_settings``, else with ``receiver_options``. The caller stops it."""
    db = Database(url)
    with db.session(write=True) as session:
        device = queries.create_device(session, device_name, "modality", ae_title=MODALITY_AE)
    store = ImageStore(images)
    analysis_queue = InProcessQueue()
    ingest = ImageIngest(db, store, analysis_queue, max_bytes=max_bytes, max_pixels=max_pixels)
    if settings is not None:
        receiver = DicomReceiver.from_settings(settings, db, ingest, host="127.0.0.1", port=0)
    else:
        receiver = DicomReceiver(db, ingest, port=0, **receiver_options)
    receiver.start()
    return Harness(db, store, analysis_queue, ingest, receiver, device.device_id)


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Start a receiver on a free port over ``url`` with a registered modality ``MODALITY_AE``.

    Keyword arguments: ``max_pixels``, ``max_bytes`` (ingest limits). Everything is stopped at the
    end of the test.
    """
    started: list[Harness] = []

    def start(url: str, *, max_pixels: int = 50_000_000, max_bytes: int = 200 * 1024 * 1024) -> Harness:
        harness = start_harness(
            url, tmp_path / f"images-{len(started)}", max_pixels=max_pixels, max_bytes=max_bytes
        )
        started.append(harness)
        return harness

    yield start
    for harness in started:
        harness.receiver.stop(timeout=2)
        harness.db.dispose()


@pytest.fixture
def receiver(start_receiver: Callable[..., Harness], database_url: str) -> Harness:
    """A receiver on each backend (SQLite, PostgreSQL)."""
    return start_receiver(database_url)


@pytest.fixture
def sqlite_receiver(start_receiver: Callable[..., Harness], tmp_path: Path) -> Harness:
    """A receiver over SQLite only (for behaviour that does not depend on the backend)."""
    return start_receiver(f"sqlite:///{tmp_path / 'covidet.db'}")
