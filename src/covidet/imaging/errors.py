"""How a refused input is reported, and the size limits every reader checks before decoding.

Contract: every failure to read or inspect an image is an :class:`ImageReadError` whose ``str`` is one
printable line ``"<source>: <reason>"``; :func:`one_line` turns any exception into such a reason;
:func:`check_size` refuses a zero-size image or one over ``max_pixels`` from its header alone.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "ImageReadError", "check_size", "one_line"]

DEFAULT_MAX_PIXELS = 50_000_000
"""Default limit on width * height, checked from the header before decoding."""
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Default limit on the size of the encoded input."""


class ImageReadError(ValueError):
    """The input cannot be read as an image.

    ``str(err)`` is one line, ``"<source>: <reason>"``; ``err.reason`` is the reason alone and
    ``err.source`` the name of the input. ``ImageReadError(message)`` with a single argument is
    also accepted (then ``source`` is empty and ``reason`` is the message).
    """

    def __init__(self, source: str, reason: str | None = None) -> None:
        if reason is None:
            source, reason = "", source
        reason = "".join(c if c.isprintable() else "?" for c in " ".join(reason.split()))
        super().__init__(f"{source}: {reason}" if source else reason)
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str]]:
        return type(self), (self.source, self.reason)


def one_line(exc: BaseException) -> str:
    """One line describing an exception (at most 200 characters)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse a zero-size image or one of more than ``max_pixels`` pixels.

    Raises:
        ImageReadError: naming ``name``, the size and the limit.
    """
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"zero-size image ({width}x{height})")
    if width * height > max_pixels:
        count = f"{width}x{height} = {width * height} pixels"
        raise ImageReadError(name, f"image too large: {count}, more than the limit of {max_pixels}")
