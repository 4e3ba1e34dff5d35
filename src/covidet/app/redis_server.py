"""A throw-away Redis on a loopback port, for the tests and the benchmarks (the Celery queue's broker).

:func:`start_redis` runs the Debian ``redis-server`` with its own folder, bound to 127.0.0.1, with no
persistence (nothing of it is meant to survive), waits until it listens and returns a
:class:`~covidet.app.processes.ServerHandle` whose ``stop()`` stops it and removes its folder. Never a
deployment's Redis: see docs/deployment.md for that.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from covidet.app.processes import ServerHandle, find_program, free_port, terminate, wait_for_port

__all__ = ["start_redis"]

#: Where Debian installs the server (looked at before ``PATH``).
REDIS_PATHS = ("/usr/bin/redis-server",)


def start_redis(timeout: float = 30.0) -> ServerHandle:
    """A private Redis on a free loopback port, no persistence; ``url`` is its ``redis://`` URL
    (database 0).

    Raises:
        RuntimeError: ``redis-server`` is not installed (Debian package ``redis-server``), or it did not
            listen within ``timeout`` seconds.
    """
    binary = find_program("redis-server", REDIS_PATHS)
    if binary is None:
        raise RuntimeError("redis-server not found: install the Debian package 'redis-server'")
    directory = Path(tempfile.mkdtemp(prefix="covidet-redis-"))
    port = free_port()
    # fmt: off
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--logfile", str(directory / "redis.log"),
    ]
    # fmt: on
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listening = wait_for_port(port, timeout=timeout, process=process)
    except BaseException:  # Ctrl-C while waiting: leave nothing behind
        terminate(process, 10)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if not listening:
        terminate(process, 10)
        log = directory / "redis.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"redis-server did not listen on 127.0.0.1:{port} within {timeout} s:\n{text}")

    def stop() -> None:
        terminate(process, 10)

    return ServerHandle(url=f"redis://127.0.0.1:{port}/0", port=port, directory=directory, _stop=stop)
