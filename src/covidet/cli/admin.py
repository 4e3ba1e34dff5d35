"""Administration commands: ``covidet version``, ``stats``, ``devices``, ``mqtt-broker-files``,
``users`` and ``api-token``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from covidet import __version__
from covidet.cli._common import fail, logger, open_database, setup
from covidet.config import Settings

if TYPE_CHECKING:  # imported by the commands that use them
    from covidet.ingest.mqtt import MosquittoFiles
    from covidet.store import Database

__all__ = ["api_token_app", "devices_app", "mqtt_broker_files", "stats", "users_app", "version"]

devices_app = typer.Typer(help="Register and list the devices that may send data.", no_args_is_help=True)
users_app = typer.Typer(
    help="Create and list the people who sign in (admins, radiologists).", no_args_is_help=True
)
api_token_app = typer.Typer(help="Bearer tokens of users, for scripts.", no_args_is_help=True)


def version() -> None:
    """Print covidet's version."""
    typer.echo(__version__)


@devices_app.command("add")
def devices_add(
    name: Annotated[str, typer.Argument(help="unique device name")],
    kind: Annotated[str, typer.Option("--kind", help="modality | sensor | uploader | workstation")],
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="calling AE title of a modality (default: NAME)")
    ] = None,
) -> None:
    """Create a device and print its id and credentials as JSON (shown once; only hashes are kept)."""
    from covidet.store import DeviceKind, queries

    settings = setup()
    if kind not in {k.value for k in DeviceKind}:
        raise fail(f"--kind must be one of {', '.join(k.value for k in DeviceKind)}, not {kind!r}")
    db = open_database(settings)
    try:
        with db.session(write=True) as session:
            credentials = queries.create_device(session, name, kind, ae_title=ae_title)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    # --- devices add: broker files (mqtt) ---
    if credentials.mqtt_username is not None:
        # A new sensor may connect only once the broker's password file and ACL name it.
        _write_broker_files(settings, db)
    typer.echo(json.dumps(credentials.to_json(), indent=2))


@devices_app.command("list")
def devices_list() -> None:
    """List registered devices as JSON (no secrets)."""
    from covidet.store import queries

    settings = setup()
    db = open_database(settings)
    with db.session() as session:
        rows = [
            {
                "device_id": d.id,
                "name": d.name,
                "kind": d.kind,
                "ae_title": d.ae_title,
                "mqtt_username": d.mqtt_username,
                "active": d.active,
                "created_at": d.created_at.isoformat(),
            }
            for d in queries.list_devices(session)
        ]
    typer.echo(json.dumps(rows, indent=2))


def stats(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (the stable, scriptable form)")] = False,
) -> None:
    """Counts of what covidet holds: images, studies, patients, vitals, rejected messages, devices."""
    from covidet.store import queries

    settings = setup()
    db = open_database(settings)
    with db.session() as session:
        counts = queries.counts(session)
    if as_json:
        typer.echo(json.dumps(counts))
    else:
        for key, value in counts.items():
            typer.echo(f"{key:>18}: {value}")


def _write_broker_files(
    settings: Settings, db: Database, directory: Path | None = None
) -> MosquittoFiles | None:
    """Rewrite Mosquitto's password file and ACL from the device table; logs (stderr), never prints.

    Returns the :class:`~covidet.ingest.mqtt.MosquittoFiles`, or ``None`` when they could not be written
    (the error is logged: a device already created must still get its credentials printed).
    """
    from covidet.ingest.mqtt import write_mosquitto_files

    directory = directory or settings.resolved_mosquitto_dir
    try:
        with db.session() as session:
            return write_mosquitto_files(
                session,
                directory,
                ingest_username=settings.mqtt_username,
                ingest_password=settings.mqtt_password,
                max_payload_bytes=settings.mqtt_max_payload_bytes,
            )
    except (OSError, ValueError) as exc:
        logger.error("could not write Mosquitto's files into %s: %s", directory, exc)
        return None


def mqtt_broker_files(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="output folder [env COVIDET_MOSQUITTO_DIR; default <home>/mosquitto]"),
    ] = None,
) -> None:
    """Rewrite Mosquitto's password file and ACL from the device table; prints their paths as JSON.

    `covidet devices add` does this by itself; use this after changing the COVIDET_MQTT_* user or
    deactivating a device, then reload Mosquitto (SIGHUP).
    """
    settings = setup()
    db = open_database(settings)
    files = _write_broker_files(settings, db, directory)
    if files is None:
        raise fail("could not write Mosquitto's files (see the log above)")
    typer.echo(
        json.dumps(
            {
                "password_file": str(files.password_file),
                "acl_file": str(files.acl_file),
                "example_config": str(files.example_config),
                "devices": files.devices,
                "ingest_user": files.ingest_user,
            },
            indent=2,
        )
    )


def _read_password() -> str:
    """The password from standard input: typed twice without echo on a terminal, else the first line
    (``echo "$PW" | covidet users add ...``), so it never appears in the process list or history."""
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        first = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != first:
            raise fail("the two passwords differ")
        return first
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.rstrip("\r\n")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="username: letters, digits and . _ @ -")],
    role: Annotated[str, typer.Option("--role", help="admin | radiologist")],
) -> None:
    """Create a user; the password (at least 12 characters, not a common one) is read from standard
    input. Prints JSON."""
    from covidet.api.auth import hash_password
    from covidet.api.passwords import WeakPassword, check_password
    from covidet.store import review_queries as rq

    settings = setup()
    if role not in ("admin", "radiologist"):
        raise fail(f"--role must be admin or radiologist, not {role!r}")
    password = _read_password()
    try:
        check_password(password)  # the API's policy (docs/security-web.md)
    except WeakPassword as exc:
        raise fail(str(exc)) from None
    db = open_database(settings)
    try:
        with db.session(write=True) as session:
            user = rq.create_user(session, name, password_hash=hash_password(password), role=role)
            rq.add_audit_event(
                session,
                "user.create",
                object_type="user",
                object_id=user.id,
                details={"username": user.username, "role": user.role, "via": "cli"},
            )
            result = {"id": user.id, "username": user.username, "role": user.role, "active": user.active}
    except rq.QueryError as exc:
        raise fail(str(exc)) from exc
    finally:
        db.dispose()
    typer.echo(json.dumps(result))


@users_app.command("list")
def users_list() -> None:
    """List users as JSON (no password hashes)."""
    from covidet.store import review_queries as rq

    settings = setup()
    db = open_database(settings)
    with db.session() as session:
        users, _total = rq.list_users(session, limit=1_000_000)
        rows = [
            {
                "id": u.id,
                "username": u.username,
                "role": u.role,
                "active": u.active,
                "created_at": u.created_at.isoformat(),
            }
            for u in users
        ]
    db.dispose()
    typer.echo(json.dumps(rows, indent=2))


@api_token_app.command("create")
def api_token_create(
    username: Annotated[str, typer.Argument(help="the user the token acts as")],
    name: Annotated[str, typer.Option("--name", help="what the token is for")] = "cli",
    days: Annotated[
        int | None, typer.Option("--days", min=1, max=3650, help="lifetime [default: COVIDET_TOKEN_DAYS]")
    ] = None,
) -> None:
    """Create a bearer token for a user and print it as JSON (shown once; only its hash is kept)."""
    from datetime import timedelta

    from covidet.store import review_queries as rq
    from covidet.store.models import utcnow

    settings = setup()
    db = open_database(settings)
    try:
        with db.session(write=True) as session:
            user = rq.user_by_username(session, username)
            if user is None or not user.active:
                raise fail(f"no active user named {username!r}")
            expires_at = utcnow() + timedelta(days=days or settings.token_days)
            row, token = rq.create_api_token(session, user.id, name=name, expires_at=expires_at)
            rq.add_audit_event(
                session,
                "token.create",
                object_type="api_token",
                object_id=row.id,
                details={"user": user.username, "name": row.name, "via": "cli"},
            )
            result = {
                "token_id": row.id,
                "username": user.username,
                "name": row.name,
                "access_token": token,
                "token_type": "bearer",
                "expires_at": expires_at.isoformat(),
            }
    finally:
        db.dispose()
    typer.echo(json.dumps(result, indent=2))
