"""Local helper processes: free loopback ports, waiting until a server listens, stopping a child.

Shared by the private servers of :mod:`covidet.app.broker` and :mod:`covidet.app.postgres`, by
``covidet demo`` and by the tests' starters (``tests/servers.py``).
"""

from __future__ import annotations

import contextlib
import glob
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServerHandle", "find_program", "free_port", "port_is_free", "terminate", "wait_for_port"]


@dataclass
class ServerHandle:
    """A running private server: where to reach it (``url``, ``port``), its folder, how to stop it.

    :meth:`stop` runs the server's own stop and then removes ``directory``, even if the stop failed.
    """

    url: str
    port: int
    directory: Path
    _stop: Callable[[], None] = field(repr=False)

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(
    port: int,
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
    stop: threading.Event | None = None,
) -> bool:
    """Wait until something accepts TCP connections on ``host:port``; ``False`` on timeout, when
    ``process`` exited or when ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        if stop is not None and stop.is_set():
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def find_program(name: str, patterns: tuple[str, ...] = ()) -> str | None:
    """Path of a program: the newest match of ``patterns`` (globs, the distribution's own folders, which
    come first because ``PATH`` may hold wrappers), else ``name`` on ``PATH``; ``None`` if neither."""
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    return shutil.which(name)
