"""The servers ``benchmarks/dicom_ingest.py`` sends to, each started on free loopback ports.

Every starter takes a fresh, empty folder and returns a :class:`Target`: where to send, how many
objects the server holds now, how to stop it, and (covidet's) the process id a profiler attaches to.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CALLING_AE = "BENCHSCU"
#: Celery's queue of analysis jobs in Redis (``task_default_queue`` of covidet.worker.celery_app).
CELERY_QUEUE = "covidet-analysis"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def binary(path: str, package: str) -> str:
    if not Path(path).is_file():
        raise SystemExit(f"{path} not found: install the Debian package {package!r}")
    return path


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


# ------------------------------------------------------------------------------------ the targets


@dataclass
class Target:
    """A started server: where to send, how many objects it holds, how to stop it; ``pid`` is the
    receiving process for a profiler (covidet's targets only), ``after`` what to add to the run's record
    once the images are in (the Redis queue length of ``covidet-worker``)."""

    port: int
    called_ae: str
    count: Callable[[], int]
    stop: Callable[[], None]
    details: dict[str, object] = field(default_factory=dict)
    pid: int | None = None
    after: Callable[[], dict[str, object]] | None = None


def _terminate(process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if log is not None and process.returncode not in (0, -15):
        print(log.read_text()[-2000:], file=sys.stderr)


def start_covidet(folder: Path, *, queue: str = "inprocess", redis_url: str | None = None) -> Target:
    """``covidet dicom-scp`` as users run it, in its own process with SQLite and INFO logging.

    ``queue="inprocess"`` analyses on threads of the receiving process (the shipped model, sharing the
    cores with the receiver); ``queue="celery"`` hands every accepted image to Redis at ``redis_url``
    (``COVIDET_QUEUE=celery``), where it waits for a ``covidet worker``.
    """
    home = folder / "home"
    env = {**os.environ, "COVIDET_HOME": str(home), "COVIDET_LOG_LEVEL": "INFO", "COVIDET_QUEUE": queue}
    if redis_url is not None:
        env["COVIDET_REDIS_URL"] = redis_url
    env.pop("COVIDET_DATABASE_URL", None)
    cli = [sys.executable, "-m", "covidet.cli"]
    subprocess.run(
        [*cli, "devices", "add", "bench-modality", "--kind", "modality", "--ae-title", CALLING_AE],
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = folder / "covidet.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*cli, "dicom-scp", "--port", str(port)], env=env, stdout=handle, stderr=handle
        )
    wait_for_port(port, process)

    def count() -> int:
        import sqlite3

        with sqlite3.connect(home / "covidet.db") as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])

    details: dict[str, object] = {"database": "sqlite", "analysis": queue}
    return Target(port, "COVIDET", count, lambda: _terminate(process, log), details, pid=process.pid)


def start_covidet_worker(folder: Path) -> Target:
    """The same receiver with analysis out of process: ``COVIDET_QUEUE=celery`` and a private Redis
    (started as the tests start theirs). No worker runs: the jobs wait in Redis, so the figure is
    the receiver's alone; the run records how many jobs Redis holds at the end."""
    import redis

    from covidet.app.redis_server import start_redis

    server = start_redis()
    try:
        target = start_covidet(folder, queue="celery", redis_url=server.url)
    except BaseException:
        server.stop()
        raise
    stop_covidet = target.stop

    def stop() -> None:
        try:
            stop_covidet()
        finally:
            server.stop()

    def after() -> dict[str, object]:
        with redis.Redis.from_url(server.url) as client:
            return {"jobs_waiting_in_redis": int(client.llen(CELERY_QUEUE))}

    target.stop, target.after = stop, after
    target.details["analysis"] = "celery (Redis; no worker running)"
    return target


def start_orthanc(folder: Path, *, nodelay: bool = True) -> Target:
    """Orthanc with a generated configuration; ``nodelay=False`` runs it as its Debian service does
    (no TCP_NODELAY in the environment: dcmtk inside Orthanc leaves Nagle's algorithm on)."""
    orthanc = binary("/usr/sbin/Orthanc", "orthanc")
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "covidet-benchmark",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,  # any calling AE title may store
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": False,
        "SyncStorageArea": True,  # fsync every file, like covidet
        "SaveJobs": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as handle:
        env = dcmtk_env() if nodelay else {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        process = subprocess.Popen([orthanc, str(config_path)], env=env, stdout=handle, stderr=handle)
    wait_for_port(dicom_port, process)
    wait_for_port(http_port, process)

    def count() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as response:
            return int(json.load(response)["CountInstances"])

    version = subprocess.run([orthanc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    details = {"version": version, "TCP_NODELAY": "1" if nodelay else "unset (Nagle on)"}
    return Target(dicom_port, "ORTHANC", count, lambda: _terminate(process, log), details)


def start_storescp(folder: Path) -> Target:
    storescp = binary("/usr/bin/storescp", "dcmtk")
    out = folder / "received"
    out.mkdir()
    port = free_port()
    # +xa: accept every transfer syntax it knows (JPEG arrives as JPEG); files written as received.
    process = subprocess.Popen(
        [storescp, "+xa", "-od", str(out), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return Target(
        port, "STORESCP", lambda: sum(1 for p in out.iterdir() if p.is_file()), lambda: _terminate(process)
    )


def start_pynetdicom_noop(folder: Path) -> Target:
    """pynetdicom with covidet's contexts, PDU size and TCP_NODELAY, acknowledging without storing:
    what the Python DICOM stack itself costs (the ceiling of any pynetdicom receiver)."""
    from pynetdicom import AE, evt

    from covidet.ingest.dicom_scp import ACCEPTED_TRANSFER_SYNTAXES, DEFAULT_MAX_PDU, set_tcp_nodelay
    from covidet.ingest.service import ACCEPTED_SOP_CLASSES

    received = [0]

    def handle_store(event: object) -> int:
        received[0] += 1
        return 0x0000

    ae = AE(ae_title="NOOP")
    ae.maximum_pdu_size = DEFAULT_MAX_PDU
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    handlers = [(evt.EVT_C_STORE, handle_store), (evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None
    return Target(int(server.server_address[1]), "NOOP", lambda: received[0], server.shutdown)


STARTERS: dict[str, Callable[[Path], Target]] = {
    "covidet": start_covidet,
    "covidet-worker": start_covidet_worker,
    "orthanc": start_orthanc,
    "orthanc-default-env": lambda folder: start_orthanc(folder, nodelay=False),
    "storescp": start_storescp,
    "pynetdicom-noop": start_pynetdicom_noop,
}
