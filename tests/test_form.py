"""The text fields of multipart/form-data bodies: found between their delimiters, files left unread."""

import pytest

from proxy.form import FormField, boundary_of, text_fields

BOUNDARY = b"----meterproxy7MA4YWxkTrZu0gW"
AUDIO = b'RIFF\x24\x00\x00\x00WAVEfmt \r\n--not-the-boundary\r\nname="model"\r\n\r\n\x00\xff'


def form(*parts: tuple[bytes, bytes], boundary: bytes = BOUNDARY) -> bytes:
    """A body of (headers, value) parts, framed as RFC 7578 (and httpx, the openai SDK's client) frame it."""
    framed = b"".join(
        b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n" for head, value in parts
    )
    return framed + b"--" + boundary + b"--\r\n"


def field(name: bytes) -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"'


FILE = (field(b"file") + b'; filename="clip.wav"\r\nContent-Type: audio/wav', AUDIO)
NAMES = frozenset({b"model", b"stream"})


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (b"multipart/form-data; boundary=" + BOUNDARY, BOUNDARY),
        (b'Multipart/Form-Data; charset=utf-8; boundary="a b:c"', b"a b:c"),
        (b"multipart/form-data;boundary=abc; charset=utf-8", b"abc"),
        (b"application/json", None),
        (b"multipart/form-data", None),
        (b"multipart/mixed; boundary=abc", None),
        (None, None),
    ],
)
def test_the_boundary_is_read_from_a_form_media_type_only(
    content_type: bytes | None, boundary: bytes | None
) -> None:
    assert boundary_of(content_type) == boundary


def test_text_fields_are_found_around_a_file_that_looks_like_a_form() -> None:
    body = form(
        FILE,
        (field(b"model"), b"gpt-4o-transcribe"),
        (field(b"stream"), b"true"),
        (field(b"language"), b"en"),
    )
    fields = text_fields(body, BOUNDARY, NAMES)
    start = body.index(b"gpt-4o-transcribe")
    assert fields == {
        b"model": FormField(b"gpt-4o-transcribe", start, start + len(b"gpt-4o-transcribe")),
        b"stream": FormField(b"true", body.index(b"true\r\n"), body.index(b"true\r\n") + 4),
    }


def test_a_file_part_is_never_a_text_field_and_the_first_of_a_name_counts() -> None:
    upload = (field(b"model") + b'; filename="model"', b"not-a-model")
    body = form(upload, (field(b"model"), b"gpt-image-2"), (field(b"model"), b"gpt-image-1.5"))
    assert text_fields(body, BOUNDARY, NAMES)[b"model"].value == b"gpt-image-2"


def test_a_value_may_hold_line_breaks_and_headers_any_case() -> None:
    body = form((b'content-disposition: FORM-DATA; name="model"\r\ncontent-type: text/plain', b"a\r\nb"))
    assert text_fields(body, BOUNDARY, NAMES)[b"model"].value == b"a\r\nb"


def test_a_body_cut_short_gives_the_fields_whole_before_the_cut() -> None:
    body = form((field(b"model"), b"gpt-4o-transcribe"), FILE)
    cut = body[: body.index(b"WAVE")]
    assert list(text_fields(cut, BOUNDARY, NAMES)) == [b"model"]
    assert text_fields(body[: body.index(b"gpt-4o")], BOUNDARY, NAMES) == {}
    assert text_fields(b"", BOUNDARY, NAMES) == {}
