"""Installing SIGINT/SIGTERM handlers for a while and putting the previous ones back.

``covidet demo`` and ``covidet serve`` (:mod:`covidet.app.runner`) each replace the handlers while they
run and restore what they found when they stop. Handlers can only be installed from the main thread
(:func:`signal.signal` raises ``ValueError`` elsewhere); callers that may run on another thread check
first.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Mapping
from types import FrameType

__all__ = ["STOP_SIGNALS", "SignalHandler", "install_handler", "restore_handlers"]

#: What :func:`signal.signal` takes and returns: a function, ``SIG_DFL`` / ``SIG_IGN``, or ``None``
#: (a handler not installed from Python).
SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

#: The signals that stop a covidet process: Ctrl-C and a service manager's stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_handler(
    handler: Callable[[int, FrameType | None], object], signums: Iterable[int] = STOP_SIGNALS
) -> dict[int, SignalHandler]:
    """Install ``handler`` for each of ``signums``; return the handlers it replaced, for
    :func:`restore_handlers`."""
    return {signum: signal.signal(signum, handler) for signum in signums}


def restore_handlers(previous: Mapping[int, SignalHandler]) -> None:
    """Put back the handlers :func:`install_handler` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)
