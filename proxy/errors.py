"""OpenAI-shaped error bodies: {"error": {"message", "type", "code"}}."""

from __future__ import annotations

import orjson


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def error_body(status: int, code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type(status), "code": code}})
