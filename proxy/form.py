"""The text fields of a multipart/form-data request body (RFC 7578), read without copying its files.

OpenAI's audio transcriptions and image edits send their model in a form beside the file: the meter
needs that model to route and price the call, and may rename it (`provider/model`) in the bytes sent
on. No I/O.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_BOUNDARY = re.compile(rb'multipart/form-data\s*;.*?\bboundary=(?:"([^"\r\n]+)"|([^\s;,]+))', re.IGNORECASE)
_DISPOSITION = re.compile(rb"^content-disposition:[ \t]*form-data\b([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_NAME = re.compile(rb';\s*name="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb";\s*filename\*?=", re.IGNORECASE)


class FormField(NamedTuple):
    """A text field's value and where it lies in the body."""

    value: bytes
    start: int
    end: int


def boundary_of(content_type: bytes | None) -> bytes | None:
    """The boundary of a multipart/form-data media type (a header value, its spaces trimmed by the parser),
    or None for any other body."""
    found = _BOUNDARY.match(content_type) if content_type else None
    return (found.group(1) or found.group(2)) if found else None


def text_fields(body: bytes, boundary: bytes, names: frozenset[bytes]) -> dict[bytes, FormField]:
    """The fields of `names` that are text (not files), the first of each name; parts are skipped from
    delimiter to delimiter, so a file's bytes are searched once and never copied. A body cut short
    gives the fields whole before the cut."""
    delimiter = b"--" + boundary
    fields: dict[bytes, FormField] = {}
    position = body.find(delimiter)
    while position >= 0 and not body.startswith(b"--", position + len(delimiter)):
        head = position + len(delimiter)
        head_end = body.find(b"\r\n\r\n", head)
        if head_end < 0:
            break
        value_start = head_end + 4
        value_end = body.find(b"\r\n" + delimiter, value_start)
        if value_end < 0:
            break
        disposition = _DISPOSITION.search(body, head, head_end)
        name = _NAME.search(disposition.group(1)) if disposition else None
        if disposition and name and name.group(1) in names and not _FILENAME.search(disposition.group(1)):
            fields.setdefault(name.group(1), FormField(body[value_start:value_end], value_start, value_end))
        position = value_end + 2
    return fields
