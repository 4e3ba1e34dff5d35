"""A throw-away PostgreSQL cluster on a loopback port, for the tests and the benchmarks.

:func:`start_postgres` runs the Debian binaries (``initdb``, ``pg_ctl``) with their own folder, trust
authentication on 127.0.0.1 only and ``fsync=off`` (nothing of it is meant to survive a crash), creates
the ``covidet`` database and returns a :class:`~covidet.app.processes.ServerHandle` whose ``stop()``
removes it all. Never a
deployment's database: see docs/deployment.md for that.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from covidet.app.processes import ServerHandle, find_program, free_port

__all__ = ["start_postgres"]


def _as_postgres_user() -> tuple[list[str], Callable[[Path], None]]:
    """initdb and postgres refuse to run as root: as root, run them as the 'postgres' user."""
    if os.geteuid() != 0:
        return [], lambda path: None
    user = pwd.getpwnam("postgres")

    def chown(path: Path) -> None:
        os.chown(path, user.pw_uid, user.pw_gid)

    return ["runuser", "-u", "postgres", "--"], chown


def start_postgres() -> ServerHandle:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl, trust auth on loopback only); ``url`` is the
    SQLAlchemy URL (psycopg 3) of its ``covidet`` database.

    Raises:
        RuntimeError: ``initdb`` is not installed (Debian package ``postgresql``).
        subprocess.CalledProcessError: initdb or pg_ctl failed.
    """
    initdb = find_program("initdb", ("/usr/lib/postgresql/*/bin/initdb",))
    if initdb is None:
        raise RuntimeError("initdb not found: install the Debian package 'postgresql'")
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
        shutil.rmtree(directory, ignore_errors=True)
        raise
    url = f"postgresql+psycopg://covidet@127.0.0.1:{port}/covidet"
    return ServerHandle(url=url, port=port, directory=directory, _stop=stop)
