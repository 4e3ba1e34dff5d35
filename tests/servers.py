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
