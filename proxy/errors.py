"""OpenAI-shaped error bodies, {"error": {"message", "type", "code"}}, and answers that carry them."""

from __future__ import annotations

import orjson
from starlette.types import Message


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def error_body(status: int, code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type(status), "code": code}})


def error_answer(status: int, code: str, message: str, proxy_id: str, close: bool = False) -> list[Message]:
    """An OpenAI-shaped error answer, as its two ASGI messages."""
    body = error_body(status, code, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-meterproxy-request-id", proxy_id.encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]
