"""Reading a STOW-RS request body: ``multipart/related; type="application/dicom"`` (PS3.18 10.5.1).

Starlette parses only ``multipart/form-data``; the parts of ``multipart/related`` are read here with
python-multipart's streaming :class:`~python_multipart.multipart.MultipartParser` (the parser
Starlette itself uses, which does not care which multipart subtype it reads), fed as the body
arrives, counting bytes, so a body past the limit is refused as soon as it passes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState

from covidet.api.dicomweb.media import parse_media_type

__all__ = ["BodyTooLarge", "MalformedBody", "Part", "boundary_of", "read_parts"]

#: Part headers of one part, at most (Content-Type, Content-Length, Content-ID, Content-Location, ...).
MAX_PART_HEADERS = 16


class BodyTooLarge(Exception):
    """The body went past the limit while it was read."""


class MalformedBody(ValueError):
    """Not a well-formed multipart body; the message says why."""


@dataclass
class Part:
    """One body part: its headers (lower-cased names) and its bytes."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)

    @property
    def content_type(self) -> str:
        """The part's media type without parameters, ``application/dicom`` when it names none
        (the root ``type`` of the request, PS3.18 8.6.1.2)."""
        declared = self.headers.get("content-type", "").strip()
        return parse_media_type(declared).media_type if declared else "application/dicom"


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related`` Content-Type (RFC 2046: 1 to 70 characters).

    Raises:
        MalformedBody: no boundary, or one of the wrong length.
    """
    boundary = parse_media_type(content_type).params.get("boundary", "")
    if not 1 <= len(boundary) <= 70:
        raise MalformedBody("the Content-Type has no valid boundary parameter (1-70 characters)")
    return boundary


async def read_parts(chunks: AsyncIterator[bytes], boundary: str, limit: int) -> list[Part]:
    """Every part of the body, in order.

    Raises:
        BodyTooLarge: more than ``limit`` bytes arrived.
        MalformedBody: the body does not parse, or ends before its closing boundary.
    """
    parts: list[Part] = []
    field_name = bytearray()
    field_value = bytearray()

    def on_part_begin() -> None:
        parts.append(Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        field_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers[field_name.decode("latin-1").strip().lower()] = field_value.decode(
            "latin-1"
        ).strip()
        field_name.clear()
        field_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
        max_header_count=MAX_PART_HEADERS,
    )
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise BodyTooLarge(received)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedBody(f"malformed multipart/related body: {exc}") from None
    if parser.state != MultipartState.END:
        raise MalformedBody("the multipart/related body ends before its closing boundary")
    if not parts:
        raise MalformedBody("the multipart/related body has no parts")
    return parts
