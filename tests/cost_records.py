"""Cost records for the report tests: whole records of the core issue's shape, written to tmp_path."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson


def record(timestamp: str = "2026-11-23T10:30:00.000000Z", **fields: Any) -> dict[str, Any]:
    """A record as the proxy writes it (fields in order); keyword arguments override fields."""
    base: dict[str, Any] = {
        "timestamp": timestamp,
        "request_id": "chatcmpl-1",
        "user_id": "team-a",
        "ip_address": "127.0.0.1",
        "provider": "openai",
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "is_streaming": False,
        "input_tokens": 100,
        "output_tokens": 50,
        "total_tokens": 150,
        "input_cost": 0.05,
        "output_cost": 0.05,
        "total_cost": 0.1,
        "finish_reason": "stop",
        "v": 1,
        "response_model": "gpt-4o-2024-08-06",
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "currency": "USD",
        "priced": True,
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
        "duration_ms": 812.5,
        "ttfb_ms": 120.0,
        "proxy_request_id": "0123456789abcdef0123456789abcdef",
        "session_id": None,
        "task_type": None,
    }
    unknown = set(fields) - set(base)
    assert not unknown, f"not record fields: {unknown}"
    return base | fields


def unpriced(timestamp: str = "2026-11-23T10:30:00.000000Z", **fields: Any) -> dict[str, Any]:
    return record(timestamp, input_cost=None, output_cost=None, total_cost=None, priced=False, **fields)


def forwarded(timestamp: str = "2026-11-23T10:30:00.000000Z", **fields: Any) -> dict[str, Any]:
    """A call the proxy forwarded as is, without metering it (a GET of /openai/v1/files, say)."""
    passed = {"model": None, "endpoint": "/openai/v1/files", "input_tokens": 0, "output_tokens": 0}
    passed |= {"total_tokens": 0, "finish_reason": None, "response_model": None, "usage_source": "none"}
    return unpriced(timestamp, **(passed | fields))


def lines(records: Iterable[dict[str, Any] | bytes]) -> bytes:
    """JSONL of the records; bytes items are written as they are (torn lines, garbage)."""
    return b"".join(item if isinstance(item, bytes) else orjson.dumps(item) + b"\n" for item in records)


def write(path: Path, records: Iterable[dict[str, Any] | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = lines(records)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path
