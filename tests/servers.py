"""Private instances of the real servers the tests need, on free loopback ports.

Each starter launches the Debian binary with its own data folder and configuration, waits until it
answers, and returns a handle whose ``stop()`` shuts it down and removes its files. A missing binary
is an error with the Debian package to install, never a skip: ``.ci/run`` installs them all.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from covidet.app.broker import Mosquitto, TlsFiles, make_tls_files, start_mosquitto
from covidet.app.postgres import start_postgres  # the throw-away cluster, shared with the benchmarks
from covidet.app.processes import ServerHandle, find_program, terminate
from covidet.app.redis_server import start_redis  # the private Redis, shared with the benchmarks

__all__ = ["ServerHandle", "find_binary", "free_port", "start_postgres", "start_redis", "wait_for_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 30.0, process=None) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def find_binary(name: str, package: str, patterns: tuple[str, ...] = ()) -> str:
    """Path of a server binary, looked up in ``patterns`` (globs) then on PATH."""
    found = find_program(name, patterns)
    if not found:
        raise RuntimeError(f"{name} not found: install the Debian package {package!r} (.ci/run does)")
    return found


# --------------------------------------------------------------------------------------------- Mosquitto


# One starter for the tests, the demo and the benchmarks: covidet.app.broker. The names the tests import
# stay here: start_mosquitto(write_files=None, *, tls=False, extra_config=""), MosquittoHandle (port,
# tls_port, tls, files_dir, log(), reload(), restart(), stop()), TlsFiles, make_tls_files.
MosquittoHandle = Mosquitto
__all__ += ["MosquittoHandle", "TlsFiles", "make_tls_files", "start_mosquitto"]


@dataclass
class OrthancHandle(ServerHandle):
    """A private Orthanc: ``port`` is its DICOM port (AE title ORTHANC), ``url`` its REST API."""

    http_port: int = 0

    def instance_count(self) -> int:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/statistics", timeout=30) as response:
            return int(json.load(response)["CountInstances"])


def start_orthanc() -> OrthancHandle:
    """Orthanc (Debian package orthanc) with its own storage, loopback only, any calling AE may store."""
    import json

    binary = find_binary("Orthanc", "orthanc", ("/usr/sbin/Orthanc",))
    directory = Path(tempfile.mkdtemp(prefix="covidet-orthanc-"))
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "covidet-test-pacs",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "index"),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
    }
    (directory / "orthanc.json").write_text(json.dumps(config))
    log = (directory / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(directory / "orthanc.json")], stdout=log, stderr=log)
    try:
        wait_for_port(dicom_port, process=process)
        wait_for_port(http_port, process=process)
    except BaseException:
        process.kill()
        raise

    def stop() -> None:
        terminate(process, 15)
        log.close()

    return OrthancHandle(
        url=f"http://127.0.0.1:{http_port}",
        port=dicom_port,
        directory=directory,
        _stop=stop,
        http_port=http_port,
    )
