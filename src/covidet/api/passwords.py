"""The password policy of new passwords (OWASP ASVS 2.1): long enough, not common, no composition rules.

:func:`check_password` is applied wherever a password is set: ``POST /api/v1/users``,
``PATCH /api/v1/users/{id}`` and ``covidet users add``. It refuses, each with its own message:

* fewer than :data:`MIN_LENGTH` (12) characters (ASVS 2.1.1) or more than :data:`MAX_LENGTH` (128)
  (ASVS 2.1.2; any printable Unicode is allowed, nothing is truncated);
* a common password (ASVS 2.1.7): one of the 19,640 of the bundled list (``data/common-passwords.txt.gz``,
  from Django 5.2, compiled by Royce Williams from breach corpora; source and licence in
  ``data/common-passwords-LICENSE.txt``), compared case-insensitively, also once digits and symbols
  around it are taken off (``Password2024!``) and once a repeated word is taken as one
  (``passwordpassword``);
* a run of one short repeated unit (``aaaaaaaaaaaa``, ``abcabcabcabc``) or a keyboard or alphabet
  sequence (``1234567890123``, ``qwertyuiopas``), which such lists hold only up to their length.

Passwords already set are not re-checked: the policy applies when one is chosen.
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from importlib.resources import files

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "WeakPassword", "check_password", "common_passwords"]

MIN_LENGTH = 12
MAX_LENGTH = 128
#: Digits and symbols that people put around a common word to pass composition rules.
_AFFIXES = re.compile(r"^[\W\d_]*(.*?)[\W\d_]*$", re.DOTALL)
_SEQUENCES = (
    "0123456789" * 14,
    "abcdefghijklmnopqrstuvwxyz" * 6,
    "qwertyuiopasdfghjklzxcvbnm" * 6,
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p" * 4,
)


class WeakPassword(ValueError):
    """The password breaks the policy; the message says how, without repeating the password."""


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The bundled common passwords, lowercased."""
    data = files("covidet.api").joinpath("data/common-passwords.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip())


def _repeated_unit(text: str) -> str | None:
    """The unit of ``text`` when it is one unit written two or more times (``abcabc`` -> ``abc``)."""
    for size in range(1, len(text) // 2 + 1):
        if len(text) % size == 0 and text[:size] * (len(text) // size) == text:
            return text[:size]
    return None


def _is_sequence(text: str) -> bool:
    return any(text in line or text[::-1] in line for line in _SEQUENCES)


def check_password(password: str) -> None:
    """Refuse a weak new password.

    Raises:
        WeakPassword: with a message fit for the user (see the module docstring for the rules).
    """
    if len(password) < MIN_LENGTH:
        raise WeakPassword(
            f"a password has at least {MIN_LENGTH} characters (a passphrase of a few words is best)"
        )
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")
    lowered = password.lower()
    common = common_passwords()
    core = _AFFIXES.fullmatch(lowered)
    candidates = {lowered, core.group(1) if core else lowered}
    for candidate in list(candidates):
        unit = _repeated_unit(candidate)
        if unit is not None:
            candidates.add(unit)
    if any(candidate in common for candidate in candidates if candidate):
        raise WeakPassword("this password is in a list of common passwords: choose another")
    unit = _repeated_unit(lowered)
    if (unit is not None and len(unit) <= 4) or _is_sequence(lowered):
        raise WeakPassword("the password is a repeated pattern or a keyboard sequence: choose another")
