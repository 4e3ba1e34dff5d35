"""Mosquitto's password file, ACL and example configuration, written from the device table.

:func:`write_mosquitto_files` lets each active sensor publish to its own topic only and the covidet
subscriber only read; the example configuration comes from :mod:`covidet.ingest.mqtt_broker_config`
(client ids bound to user names, payload and packet limits). See ``docs/mqtt.md``.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from covidet.ingest.mqtt_broker_config import mosquitto_config
from covidet.ingest.mqtt_payload import MAX_PAYLOAD_BYTES, TOPIC_FILTER
from covidet.store import queries
from covidet.store.models import DeviceKind

__all__ = ["MosquittoFiles", "write_mosquitto_files"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MosquittoFiles:
    """Where :func:`write_mosquitto_files` wrote the broker's files, and what they hold."""

    password_file: Path
    acl_file: Path
    example_config: Path
    devices: int
    ingest_user: str | None


def _mosquitto_ids() -> tuple[int | None, set[int]]:
    """(uid, gids) of the ``mosquitto`` user, or (None, gids of a ``mosquitto`` group if any)."""
    gids: set[int] = set()
    with contextlib.suppress(KeyError):
        gids.add(grp.getgrnam("mosquitto").gr_gid)
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return None, gids
    gids.add(user.pw_gid)
    gids |= {group.gr_gid for group in grp.getgrall() if "mosquitto" in group.gr_mem}
    return user.pw_uid, gids


def _blocking_ancestor(directory: Path) -> Path | None:
    """The first folder on the way to ``directory`` that the ``mosquitto`` user cannot enter, if any."""
    uid, gids = _mosquitto_ids()
    if uid is None:
        return None  # no mosquitto user on this machine: the broker runs as someone we cannot check
    for folder in [directory, *directory.parents]:
        info = folder.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid in gids:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            return folder
    return None


def _atomic_write(path: Path, text: str, *, group: int | None) -> None:
    """Replace ``path`` with ``text`` atomically (temp file, fsync, rename): the broker, which may reload
    at any moment (SIGHUP), reads either the old file or the new one, never half of one.

    Mode 0640 with group ``group`` when this process may give the file to that group (root, or a member
    of it), else 0644: Mosquitto reads the files after dropping root for the ``mosquitto`` user.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            mode = 0o644
            if group is not None:
                try:
                    os.fchown(handle.fileno(), -1, group)
                    mode = 0o640
                except PermissionError:
                    pass
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # the rename itself survives a power cut
    finally:
        os.close(directory_fd)


def _check_username(username: str) -> str:
    if not username or any(c.isspace() or c == ":" for c in username) or not username.isprintable():
        raise ValueError(f"MQTT user name {username!r} must be printable, without spaces or ':'")
    return username


def write_mosquitto_files(
    session: Session,
    directory: Path,
    *,
    ingest_username: str | None = None,
    ingest_password: str | None = None,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> MosquittoFiles:
    """Write Mosquitto's ``passwd`` and ``acl`` files and a ``mosquitto.conf.example`` into ``directory``.

    ``passwd`` has one line per active sensor device (its ``mqtt_username`` and stored ``$7$`` hash)
    plus the covidet subscriber's user when ``ingest_username`` and ``ingest_password`` are given (the
    password is hashed here). ``acl`` lets each device write only ``covidet/devices/<its id>/vitals``
    and the subscriber read only ``covidet/devices/+/vitals``. Every file is replaced atomically, mode
    0640 group ``mosquitto`` where possible, else 0644 (see ``docs/mqtt.md``). The broker rereads them
    on SIGHUP. ``mosquitto.conf.example`` is :func:`~covidet.ingest.mqtt_broker_config.mosquitto_config`
    with ``max_payload_bytes`` (``COVIDET_MQTT_MAX_PAYLOAD_BYTES``) as the broker's payload limit.

    Raises:
        ValueError: only one of ingest user name and password given, or a user name Mosquitto's file
            format cannot hold.
        OSError: the folder or a file cannot be written.
    """
    if (ingest_username is None) != (ingest_password is None):
        raise ValueError("the covidet MQTT user needs both a user name and a password (COVIDET_MQTT_*)")
    directory = Path(directory).expanduser().absolute()
    _, gids = _mosquitto_ids()
    group = min(gids) if gids else None
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        try:
            if group is None:
                raise PermissionError
            os.chown(directory, -1, group)
            directory.chmod(0o750)
        except PermissionError:
            directory.chmod(0o755)

    sensors = [
        device
        for device in queries.list_devices(session)
        if device.kind == DeviceKind.SENSOR.value
        and device.active
        and device.mqtt_username
        and device.mqtt_password_hash
    ]
    password_lines: list[str] = []
    acl_lines = [
        "# Written by covidet (write_mosquitto_files); changes here are overwritten.",
        "# No topic lines before the first 'user' line: anonymous clients get nothing.",
        "",
    ]
    if ingest_username is not None and ingest_password is not None:
        _check_username(ingest_username)
        password_lines.append(f"{ingest_username}:{queries.mosquitto_password_hash(ingest_password)}")
        acl_lines += [f"user {ingest_username}", f"topic read {TOPIC_FILTER}", ""]
    else:
        logger.warning(
            "no covidet MQTT user (COVIDET_MQTT_USERNAME / COVIDET_MQTT_PASSWORD): the broker files let "
            "devices publish but nobody subscribe"
        )
    for device in sensors:
        username = _check_username(str(device.mqtt_username))
        password_lines.append(f"{username}:{device.mqtt_password_hash}")
        acl_lines += [f"user {username}", f"topic write {queries.vitals_topic(device.id)}", ""]

    files = MosquittoFiles(
        password_file=directory / "passwd",
        acl_file=directory / "acl",
        example_config=directory / "mosquitto.conf.example",
        devices=len(sensors),
        ingest_user=ingest_username,
    )
    _atomic_write(files.password_file, "".join(line + "\n" for line in password_lines), group=group)
    _atomic_write(files.acl_file, "\n".join(acl_lines), group=group)
    _atomic_write(
        files.example_config,
        mosquitto_config(files.password_file, files.acl_file, max_payload_bytes=max_payload_bytes),
        group=group,
    )
    logger.info(
        "wrote Mosquitto's password file and ACL (%d sensor devices%s) to %s; reload the broker (SIGHUP)",
        files.devices,
        f", subscriber user {ingest_username!r}" if ingest_username else "",
        directory,
    )
    blocked = _blocking_ancestor(directory)
    if blocked is not None:
        logger.warning(
            "the mosquitto user cannot enter %s, so the broker cannot read these files: set "
            "COVIDET_MOSQUITTO_DIR to a folder it can reach, e.g. /etc/mosquitto/covidet",
            blocked,
        )
    return files
