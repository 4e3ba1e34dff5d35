"""One private Mosquitto starter, for ``covidet demo``, the tests and the benchmarks.

:func:`start_mosquitto` starts the Debian ``mosquitto`` binary on a free loopback port with its own
folder, waits until it listens and returns a :class:`Mosquitto` handle (``log``, ``reload``,
``restart``, ``stop``). Its configuration is the one covidet generates for a real deployment
(:func:`covidet.ingest.mqtt_broker_config.mosquitto_config`: log-in required, password file and ACL,
client ids bound to user names, payload and packet limits), with this broker's own ports, folders and
certificates, no cap on queued messages, and log lines written to ``mosquitto.log``.

Started as root, Mosquitto drops privileges to the ``mosquitto`` user before it reads the password
file, the ACL and the TLS key, and writes its persistence file as that user. A 0700 folder (``~``,
pytest's ``/tmp/pytest-of-root``) would lock it out, so as root the broker's folder is made directly
under ``/tmp``, mode 0755, with its data folder and TLS files given to that user.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from covidet.app.processes import find_program, free_port, terminate, wait_for_port
from covidet.ingest.mqtt_broker_config import TlsListener, mosquitto_config
from covidet.ingest.mqtt_payload import MAX_PAYLOAD_BYTES

__all__ = [
    "MOSQUITTO_PATHS",
    "BrokerError",
    "Mosquitto",
    "TlsFiles",
    "find_mosquitto",
    "make_tls_files",
    "start_mosquitto",
]

logger = logging.getLogger(__name__)

#: Where Debian installs the broker (looked at before ``PATH``, which may hold wrappers).
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")

#: Log lines of the private broker: connections are logged (the tests and the load benchmark read the
#: subscriber's CONNECT and the broker's "Reloading config" in ``mosquitto.log``).
_LOG_LINES = (
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    "log_type notice",
    "log_type information",
    "connection_messages true",
)


class BrokerError(RuntimeError):
    """The private broker cannot start; the message says why (and holds the broker's log)."""


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` broker binary, or ``None`` when it is not installed."""
    return find_program("mosquitto", MOSQUITTO_PATHS)


def _mosquitto_user() -> pwd.struct_passwd | None:
    """The ``mosquitto`` user when running as root (the broker drops to it), else ``None``."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        raise BrokerError(
            "the user 'mosquitto' is missing: reinstall the Debian package 'mosquitto'"
        ) from None


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

    Raises:
        BrokerError: ``openssl`` is not installed.
    """
    openssl = find_program("openssl")
    if openssl is None:
        raise BrokerError("openssl not found: install the Debian package 'openssl'")
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


def _launch(args: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    """Start the broker, its output appended to ``log_file``, in its own session: a Ctrl-C in the
    terminal reaches covidet (or pytest), which stops the broker in order."""
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


@dataclass
class Mosquitto:
    """A private Mosquitto: ``port`` (plain MQTT on ``host``), ``tls_port`` and ``tls`` (MQTT over TLS,
    if asked for), ``files_dir`` (where its ``passwd`` and ``acl`` live, readable by the ``mosquitto``
    user), ``directory`` (everything of it, removed by :meth:`stop`)."""

    port: int
    directory: Path
    files_dir: Path
    log_file: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    host: str = "127.0.0.1"
    tls_port: int | None = None
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def log(self) -> str:
        """What the broker logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _wait_listening(self, timeout: float) -> None:
        for port in (self.port, self.tls_port):
            if port is not None and not wait_for_port(
                port, host=self.host, timeout=timeout, process=self.process
            ):
                raise BrokerError(f"mosquitto did not start:\n{self.log()}")

    def reload(self, timeout: float = 10.0) -> None:
        """Make the broker reread its password file and ACL (SIGHUP) and wait until it has.

        Raises:
            TimeoutError: the broker did not log the reload within ``timeout`` seconds.
        """
        before = self.log().count("Reloading config")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log().count("Reloading config") <= before:
            if time.monotonic() > deadline:
                raise TimeoutError("mosquitto did not reload its configuration")
            time.sleep(0.02)
        # The files are reread right after that line, in the same pass of the broker's main loop.
        time.sleep(0.1)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the broker (it saves its sessions and queued messages) and start it again on the same
        ports, folder and configuration, as a service restart or a reboot would."""
        terminate(self.process, 10)
        # The same command line (_launch starts it from a list of str).
        self.process = _launch(list(cast("list[str]", self.process.args)), self.log_file)
        self._wait_listening(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` seconds) and remove its folder."""
        try:
            terminate(self.process, timeout)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_mosquitto(
    write_files: Callable[[Path], None] | None = None,
    *,
    tls: bool = False,
    extra_config: str = "",
    binary: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> Mosquitto:
    """Start a private Mosquitto on a free port of ``host`` and wait until it listens.

    ``write_files(files_dir)`` writes ``passwd`` and ``acl`` before the start (e.g. with
    :func:`covidet.ingest.mqtt.write_mosquitto_files`); a file it leaves out is created empty, so nobody
    may connect until it is written and :meth:`Mosquitto.reload` called. ``tls`` adds a TLS listener
    with a fresh throw-away CA (:func:`make_tls_files`). ``extra_config`` is appended to the
    configuration. Persistence is on, in the broker's own folder, and queued QoS-1 messages are not
    capped (Mosquitto's default, 1000, drops the ones beyond it silently).

    Raises:
        BrokerError: no broker binary, no ``mosquitto`` user as root, or the broker did not start within
            ``timeout`` seconds (its log is in the message).
    """
    binary = binary or find_mosquitto()
    if binary is None:
        raise BrokerError("mosquitto is not installed: install the Debian package 'mosquitto'")
    owner = _mosquitto_user()
    directory = Path(tempfile.mkdtemp(prefix="covidet-mosquitto-", dir="/tmp" if owner else None))
    try:
        directory.chmod(0o755)
        files_dir, data_dir = directory / "broker", directory / "data"
        files_dir.mkdir(mode=0o755)
        data_dir.mkdir(mode=0o755)
        if owner is not None:
            os.chown(data_dir, owner.pw_uid, owner.pw_gid)
        if write_files is not None:
            write_files(files_dir)
        for name in ("passwd", "acl"):
            if not (files_dir / name).exists():
                (files_dir / name).write_text("")
                (files_dir / name).chmod(0o644)
        port = free_port(host)
        tls_files = tls_port = None
        if tls:
            tls_files = make_tls_files(directory / "tls", owner="mosquitto" if owner else None)
            tls_port = free_port(host)
        config = mosquitto_config(
            files_dir / "passwd",
            files_dir / "acl",
            plain_port=port,
            plain_host=host,
            tls=None
            if tls_files is None or tls_port is None
            else TlsListener(
                port=tls_port,
                host=host,
                cafile=tls_files.ca_cert,
                certfile=tls_files.server_cert,
                keyfile=tls_files.server_key,
            ),
            persistence_location=data_dir,
            max_payload_bytes=max_payload_bytes,
            max_queued_messages=0,
        )
        config_file = directory / "mosquitto.conf"
        config_file.write_text(config + "\n".join(_LOG_LINES) + "\n" + extra_config + "\n")
        log_file = directory / "mosquitto.log"
        process = _launch([binary, "-c", str(config_file)], log_file)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    broker = Mosquitto(port, directory, files_dir, log_file, process, host, tls_port, tls_files)
    try:
        broker._wait_listening(timeout)
    except BaseException:
        broker.stop()
        raise
    logger.info("private Mosquitto on %s:%d (%s)", host, port, directory)
    return broker
