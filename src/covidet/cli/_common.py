"""What every ``covidet`` command shares: settings and logging set-up, the one-line error exit,
option types, the model bundle and database to use.

Exit codes: 0 success; 1 some input could not be processed (e.g. one unreadable image); 2 bad usage,
bad data or bad model bundle (one-line message on standard error, no traceback).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from covidet.config import Settings, get_settings

if TYPE_CHECKING:  # imported by the commands that open one (SQLAlchemy and the models)
    from covidet.store import Database

__all__ = [
    "DataOption",
    "DeviceOption",
    "ModelOption",
    "TierOption",
    "bundle_path",
    "fail",
    "logger",
    "open_database",
    "options_model",
    "setup",
    "stop_on_signals",
]

logger = logging.getLogger("covidet")


def setup(log_level: str | None = None, threads: int | None = None) -> Settings:
    """The settings (with these overrides), logging to standard error at their level, torch's threads."""
    settings = get_settings(log_level=log_level, threads=threads)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Migrations run at every start; their step-by-step INFO lines are noise for users.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    return settings


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


T = TypeVar("T")


def options_model(model: type[T], **options: object) -> T:
    """``model(**options)`` (a pydantic config), or exit with the first invalid option as a one-line error."""
    from pydantic import ValidationError

    try:
        return model(**options)
    except ValidationError as error:
        first = error.errors()[0]
        raise fail(f"--{'-'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def bundle_path(model: Path | None, settings: Settings) -> Path:
    """The bundle to use: ``--model``, else ``COVIDET_MODEL``, else the shipped one."""
    from covidet.detection.bundle import default_bundle_path

    bundle = model or settings.model or default_bundle_path()
    if bundle is None:
        raise fail("no model bundle: pass --model BUNDLE or set COVIDET_MODEL")
    return Path(bundle)


def stop_on_signals(what: str) -> threading.Event:
    """An event that SIGINT and SIGTERM set, logging ``"SIGTERM received: stopping <what>"``.

    Installs the handlers, so call it on the main thread; wait on the event with a timeout
    (``stop.wait(1.0)``) so that the main thread stays responsive to signals."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: stopping %s", signal.Signals(signum).name, what)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def open_database(settings: Settings) -> Database:
    """The database of ``settings``, migrated to the newest schema; a clear error if unreachable."""
    from sqlalchemy.exc import SQLAlchemyError

    from covidet.store import Database

    try:
        return Database.from_settings(settings)
    except SQLAlchemyError as exc:
        raise fail(
            f"cannot open the database {settings.resolved_database_url!r}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc


DataOption = Annotated[
    Path | None, typer.Option("--data", help="dataset folder or COCO JSON [env COVIDET_DATA]")
]
ModelOption = Annotated[
    Path | None,
    typer.Option("--model", help="model bundle folder [env COVIDET_MODEL; default: the shipped bundle]"),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda or cuda:N [env COVIDET_DEVICE]")
]
TierOption = Annotated[str | None, typer.Option("--tier", help="'tiny' uses the tier_tiny subset")]
