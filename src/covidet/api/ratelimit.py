"""Sign-in throttling (OWASP ASVS 2.2.1): failed passwords are counted per username and per client
address, and a username or address with too many recent failures is refused (429) for a while.

Every password form goes through :func:`throttled_authenticate`: ``POST /api/v1/auth/token``,
``POST /api/v1/auth/login`` and the web app's ``POST /login``. The counters are moving windows of the
`limits <https://limits.readthedocs.io>`_ library, in this process's memory:

* a username (case-insensitive, whether or not it exists, so that a lock tells nothing about which
  users exist) is locked once ``settings.login_max_failures`` failures fall within
  ``settings.login_window_seconds``; a right password is refused too while it is locked;
* a client address likewise after ``settings.login_max_failures_per_address`` failures (spraying one
  password over many usernames);
* a lock ends when its oldest counted failure is ``login_window_seconds`` old; ``Retry-After`` says
  when. A successful sign-in clears its username's count.

Each failure is logged and audited (``auth.login_failed``, by the callers); a refusal while locked is
logged and audited as ``auth.login_throttled``. The counts are per process and start empty: a server
run as several worker processes multiplies the allowance by their number (see docs/security-web.md).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request

from covidet.api.auth import authenticate, client_ip, record_audit
from covidet.config import Settings
from covidet.store import review_queries as rq
from covidet.store.db import Database

__all__ = ["LoginLocked", "LoginThrottle", "throttled_authenticate"]

logger = logging.getLogger(__name__)


class LoginLocked(Exception):
    """Sign-in refused without checking the password: too many recent failures.

    Attributes:
        retry_after: whole seconds until an attempt may be made again (at least 1).
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins: try again in {retry_after} seconds")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class _Keys:
    username: str
    address: str


class LoginThrottle:
    """Failure counters of one server process (thread-safe: the storage locks)."""

    def __init__(self, *, max_failures: int, max_failures_per_address: int, window_seconds: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_user = RateLimitItemPerSecond(max_failures, window_seconds, namespace="covidet-login-user")
        self._per_address = RateLimitItemPerSecond(
            max_failures_per_address, window_seconds, namespace="covidet-login-address"
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginThrottle:
        return cls(
            max_failures=settings.login_max_failures,
            max_failures_per_address=settings.login_max_failures_per_address,
            window_seconds=settings.login_window_seconds,
        )

    @staticmethod
    def _keys(username: str, address: str | None) -> _Keys:
        # Usernames are unique case-insensitively; anything longer than a username is cut (the
        # counter's key space stays bounded by what an address may try before it is locked itself).
        return _Keys(username.strip().lower()[:64], address or "unknown")

    def retry_after(self, username: str, address: str | None) -> int | None:
        """Seconds until ``username`` from ``address`` may try again, or ``None`` when it may now."""
        keys = self._keys(username, address)
        waits = [
            self._wait(item, key)
            for item, key in ((self._per_user, keys.username), (self._per_address, keys.address))
            if not self._limiter.test(item, key)
        ]
        return max(waits) if waits else None

    def _wait(self, item: RateLimitItemPerSecond, key: str) -> int:
        reset_at = self._limiter.get_window_stats(item, key).reset_time
        return max(1, math.ceil(reset_at - time.time()))

    def failed(self, username: str, address: str | None) -> None:
        """Count a failed sign-in of ``username`` from ``address``."""
        keys = self._keys(username, address)
        self._limiter.hit(self._per_user, keys.username)
        self._limiter.hit(self._per_address, keys.address)

    def succeeded(self, username: str) -> None:
        """A right password: the username's failures are forgiven (the address's are not)."""
        self._limiter.clear(self._per_user, self._keys(username, None).username)


def _throttle(request: Request) -> LoginThrottle:
    state = request.app.state
    if getattr(state, "login_throttle", None) is None:  # an app made without create_app
        state.login_throttle = LoginThrottle.from_settings(state.settings)
    return state.login_throttle


async def throttled_authenticate(
    request: Request, db: Database, username: str, password: str
) -> tuple[int, str, str] | None:
    """:func:`covidet.api.auth.authenticate` behind the sign-in throttle.

    Returns:
        ``(user id, username, role)``, or ``None`` for a wrong username or password (counted; the
        caller audits it as ``auth.login_failed``).

    Raises:
        LoginLocked: the username or the client address is locked; the password was not checked.
    """
    throttle = _throttle(request)
    address = client_ip(request)
    wait = throttle.retry_after(username, address)
    if wait is not None:
        logger.warning(
            "sign-in of %r from %s refused: too many failed sign-ins (retry in %d s)",
            username[:64],
            address,
            wait,
        )
        await run_in_threadpool(
            record_audit,
            db,
            request,
            "auth.login_throttled",
            username=username if re.fullmatch(rq.USERNAME_PATTERN, username) else None,
            details={"path": request.url.path, "retry_after": wait},
        )
        raise LoginLocked(wait)
    found = await run_in_threadpool(authenticate, db, username, password)
    if found is None:
        throttle.failed(username, address)
        logger.warning("failed sign-in of %r from %s (%s)", username[:64], address, request.url.path)
    else:
        throttle.succeeded(username)
    return found
