"""Media types of DICOMweb (PS3.18 8.7): reading an ``Accept`` header and writing multipart/related.

An ``Accept`` field is a comma-separated list of media ranges with parameters, e.g.
``multipart/related; type="application/octet-stream"; transfer-syntax=*``. :func:`parse_accept`
splits it (quoted strings kept whole), ordered by ``q``; the routes pick the first range they can
serve and answer 406 with the types they do serve when none fits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "MediaRange",
    "MultipartBody",
    "parse_accept",
    "parse_media_type",
]


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One media range: ``type/subtype`` lower-cased, parameters by lower-cased name (values
    unquoted), and its quality."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    def matches(self, media_type: str) -> bool:
        """Whether this range admits ``media_type`` (``*/*`` and ``type/*`` wildcards)."""
        if self.media_type in ("*/*", media_type):
            return True
        major = self.media_type.split("/")[0]
        return self.media_type == f"{major}/*" and media_type.startswith(f"{major}/")


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> MediaRange:
    """One media type with its parameters (``q`` taken out as the quality)."""
    head, *rest = _split(text, ";")
    params: dict[str, str] = {}
    for item in rest:
        name, _, value = item.partition("=")
        if name.strip():
            params[name.strip().lower()] = value.strip().strip('"')
    try:
        quality = float(params.pop("q", "1"))
    except ValueError:
        quality = 0.0
    return MediaRange(head.strip().lower(), params, quality)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an ``Accept`` field, best first; ``[*/*]`` when the field is absent or empty.
    Ranges with ``q=0`` are dropped (not acceptable)."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(part) for part in _split(header, ",") if part.strip()]
    ranges = [r for r in ranges if r.quality > 0]
    return sorted(ranges, key=lambda r: -r.quality)


class MultipartBody:
    """A multipart/related body of binary parts, produced as it is sent (see PS3.18 8.7.1.2).

    ``content_type`` is the header of the whole; :meth:`iterate` yields the bytes of
    ``(part content type, payload)`` pairs, each payload produced only when its turn comes."""

    def __init__(self, root_type: str, *, extra: str = "") -> None:
        self.boundary = uuid.uuid4().hex
        self.content_type = f'multipart/related; type="{root_type}"; boundary={self.boundary}{extra}'

    def iterate(self, parts: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
        dash = f"--{self.boundary}".encode()
        for part_type, payload in parts:
            yield dash + b"\r\nContent-Type: " + part_type.encode() + b"\r\n\r\n"
            yield payload
            yield b"\r\n"
        yield dash + b"--\r\n"

    def build(self, parts: Iterable[tuple[str, bytes]]) -> bytes:
        return b"".join(self.iterate(parts))
