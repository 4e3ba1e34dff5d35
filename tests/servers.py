"""Private instances of the real servers the tests need, on free loopback ports.

Each starter launches the Debian binary with its own data folder and configuration, waits until it
answers, and returns a handle whose ``stop()`` shuts it down and removes its files. A missing binary
is an error with the Debian package to install, never a skip: ``.ci/run`` installs them all.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServerHandle", "find_binary", "free_port", "start_postgres", "wait_for_port"]


def terminate(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


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
    found = None
    for pattern in patterns:  # the distribution's own folder first: PATH may hold wrappers
        matches = sorted(glob.glob(pattern))
        if matches:
            found = matches[-1]
            break
    found = found or shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the Debian package {package!r} (.ci/run does)")
    return found


@dataclass
class ServerHandle:
    """A running private server: where to reach it and how to stop it."""

    url: str
    port: int
    directory: Path
    _stop: Callable[[], None] = field(repr=False)

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _as_postgres_user() -> tuple[list[str], Callable[[Path], None]]:
    """initdb and postgres refuse to run as root: as root, run them as the 'postgres' user."""
    if os.geteuid() != 0:
        return [], lambda path: None
    user = pwd.getpwnam("postgres")

    def chown(path: Path) -> None:
        os.chown(path, user.pw_uid, user.pw_gid)

    return ["runuser", "-u", "postgres", "--"], chown


def start_postgres() -> ServerHandle:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl, trust auth on loopback only)."""
    initdb = find_binary("initdb", "postgresql", ("/usr/lib/postgresql/*/bin/initdb",))
    bindir = Path(initdb).parent
    prefix, chown = _as_postgres_user()
    directory = Path(tempfile.mkdtemp(prefix="covidet-pg-"))
    chown(directory)
    data_dir, socket_dir = directory / "data", directory
    port = free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data_dir), "-U", "covidet", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data_dir),
            "-w",
            "-t",
            "60",
            "-l",
            str(directory / "server.log"),
            "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {socket_dir} -c fsync=off -c max_connections=200",
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def stop() -> None:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )

    try:
        import psycopg

        with psycopg.connect(f"postgresql://covidet@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE covidet")
    except BaseException:
        stop()
        raise
    url = f"postgresql+psycopg://covidet@127.0.0.1:{port}/covidet"
    return ServerHandle(url=url, port=port, directory=directory, _stop=stop)


def start_redis() -> ServerHandle:
    """A private Redis on a free loopback port, no persistence (Debian package redis-server)."""
    binary = find_binary("redis-server", "redis-server", ("/usr/bin/redis-server",))
    directory = Path(tempfile.mkdtemp(prefix="covidet-redis-"))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
    except BaseException:
        process.kill()
        raise

    def stop() -> None:
        terminate(process, 10)

    return ServerHandle(url=f"redis://127.0.0.1:{port}/0", port=port, directory=directory, _stop=stop)


# --------------------------------------------------------------------------------------------- Mosquitto


@dataclass
class TlsFiles:
    """A throw-away CA and a server certificate for ``127.0.0.1`` and ``localhost`` (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path, *, owner: str | None = None) -> TlsFiles:
    """Create a self-signed CA and a CA-signed server certificate in ``directory`` with the openssl CLI
    (Debian package ``openssl``; the ``cryptography`` package is not a covidet dependency).

    ``owner``: as root, give the files to this user (a server that drops privileges must read the key).
    """
    openssl = find_binary("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_cert, "-days", "2",
         "-subj", "/CN=covidet test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", extensions],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    if owner is not None and os.geteuid() == 0:
        user = pwd.getpwnam(owner)
        for path in (ca_cert, key, cert):
            os.chown(path, user.pw_uid, user.pw_gid)
    return TlsFiles(ca_cert=ca_cert, server_cert=cert, server_key=key)


@dataclass
class MosquittoHandle(ServerHandle):
    """A private Mosquitto: ``port`` (plain MQTT), ``tls_port`` (MQTT over TLS, if asked for),
    ``files_dir`` (where its ``passwd`` and ``acl`` live, readable by the ``mosquitto`` user)."""

    files_dir: Path = Path()
    tls_port: int | None = None
    tls: TlsFiles | None = None
    log_file: Path = Path()
    process: subprocess.Popen | None = field(default=None, repr=False)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def restart(self) -> None:
        """Stop the broker (it saves its sessions and queued messages) and start it again on the same
        ports, folder and configuration, as a service restart or a reboot would."""
        assert self.process is not None
        self._stop()
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(list(self.process.args), stdout=log, stderr=subprocess.STDOUT)
        process = self.process
        self._stop = lambda: terminate(process, 10)
        wait_for_port(self.port, process=process)
        if self.tls_port is not None:
            wait_for_port(self.tls_port, process=process)

    def reload(self, timeout: float = 10.0) -> None:
        """Make the broker reread its password file and ACL (SIGHUP) and wait until it has."""
        import signal

        assert self.process is not None
        before = self.log().count("Reloading config")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log().count("Reloading config") <= before:
            if time.monotonic() > deadline:
                raise TimeoutError("mosquitto did not reload its configuration")
            time.sleep(0.02)
        # The files are reread right after that line, in the same pass of the broker's main loop.
        time.sleep(0.1)


def start_mosquitto(
    write_files: Callable[[Path], None] | None = None, *, tls: bool = False, extra_config: str = ""
) -> MosquittoHandle:
    """A private Mosquitto on free loopback ports: ``allow_anonymous false``, ``password_file`` and
    ``acl_file`` in its ``files_dir``, persistence in its own folder, no cap on queued messages.

    ``write_files(files_dir)`` writes ``passwd`` and ``acl`` before the start (default: empty files,
    nobody may connect; write them later and call :meth:`MosquittoHandle.reload`). ``tls`` adds a TLS
    listener with a fresh test CA (:func:`make_tls_files`).

    Started as root, Mosquitto drops privileges to the ``mosquitto`` user before it reads the password
    file, the ACL and the TLS key, and writes its persistence file as that user. pytest's own temporary
    folders (``/tmp/pytest-of-root``, mode 0700) are out of its reach, so the broker's folder is made
    directly under /tmp, mode 0755, with the files and the data folder given to that user.
    """
    # covidet's own access, size and per-listener client-id lines (docs/security-mqtt.md).
    from covidet.ingest.mqtt_broker_config import mosquitto_access_lines, mosquitto_listener_lines

    binary = find_binary("mosquitto", "mosquitto", ("/usr/sbin/mosquitto",))
    as_root = os.geteuid() == 0
    mosquitto_user = None
    if as_root:
        try:
            mosquitto_user = pwd.getpwnam("mosquitto")
        except KeyError as exc:
            raise RuntimeError("user 'mosquitto' missing: install the Debian package 'mosquitto'") from exc
    directory = Path(tempfile.mkdtemp(prefix="covidet-mosquitto-", dir="/tmp" if as_root else None))
    directory.chmod(0o755)
    files_dir, data_dir = directory / "broker", directory / "data"
    files_dir.mkdir(mode=0o755)
    data_dir.mkdir(mode=0o755)
    if mosquitto_user is not None:
        os.chown(data_dir, mosquitto_user.pw_uid, mosquitto_user.pw_gid)
    if write_files is not None:
        write_files(files_dir)
    for name in ("passwd", "acl"):
        if not (files_dir / name).exists():
            (files_dir / name).write_text("")
            (files_dir / name).chmod(0o644)
    port = free_port()
    lines = [
        *mosquitto_access_lines(files_dir / "passwd", files_dir / "acl"),
        "persistence true",
        f"persistence_location {data_dir}/",
        # Mosquitto's default (1000) drops QoS-1 messages beyond it silently: the tests count every one.
        "max_queued_messages 0",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        *mosquitto_listener_lines(port, "127.0.0.1"),
    ]
    tls_files = tls_port = None
    if tls:
        tls_files = make_tls_files(directory / "tls", owner="mosquitto" if as_root else None)
        tls_port = free_port()
        lines += [
            *mosquitto_listener_lines(tls_port, "127.0.0.1"),
            f"cafile {tls_files.ca_cert}",
            f"certfile {tls_files.server_cert}",
            f"keyfile {tls_files.server_key}",
        ]
    config = directory / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n" + extra_config + "\n")
    log_file = directory / "mosquitto.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        terminate(process, 10)

    try:
        wait_for_port(port, process=process)
        if tls_port is not None:
            wait_for_port(tls_port, process=process)
    except Exception:
        stop()
        raise RuntimeError(f"mosquitto did not start:\n{log_file.read_text(errors='replace')}") from None
    return MosquittoHandle(
        url=f"mqtt://127.0.0.1:{port}",
        port=port,
        directory=directory,
        _stop=stop,
        files_dir=files_dir,
        tls_port=tls_port,
        tls=tls_files,
        log_file=log_file,
        process=process,
    )


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
