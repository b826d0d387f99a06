"""The server log: every line meterproxy and uvicorn write, in one shape, in every process of `serve`;
and, for an answer the meter cut short on purpose, one line naming the call, not uvicorn's error."""

from __future__ import annotations

import copy
import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.types import Scope
from uvicorn.config import LOGGING_CONFIG

if TYPE_CHECKING:
    from proxy.calls import Call

log = logging.getLogger("meterproxy")

# What uvicorn logs, as an error, when an app returns before the end of the response it began
# (uvicorn/protocols/http/httptools_impl.py, RequestResponseCycle.run_asgi).
INCOMPLETE = "ASGI callable returned without completing response."

# Set in the task of a call whose answer the meter cut short: uvicorn logs of that response in the
# same task, right after the app returns, so its error is told apart from one of a real bug.
_cut: ContextVar[bool] = ContextVar("cut", default=False)


def mark_cut() -> None:
    """Say that the running call's answer ends incomplete on purpose (the meter has logged why)."""
    _cut.set(True)


def as_sent(scope: Scope) -> str:
    """The path as the client sent it, for routing and the log: still percent-encoded, so a `%0A` in it
    cannot start a line of the client's own in the log (a forged `{"dropped_record": ...}`, say)."""
    raw_path: bytes | None = scope.get("raw_path")  # optional in ASGI; uvicorn always sets it
    return raw_path.decode("latin-1") if raw_path else quote(scope["path"], safe="/:")


def log_cut(scope: Scope, call: Call, why: str, level: int = logging.WARNING) -> None:
    """Log, in one line naming the call, why its answer ends cut short, in place of uvicorn's error
    for a response left incomplete, which read like a crash."""
    error = "client_disconnected" if call.gone else call.error
    log.log(
        level,
        "%s %s -> %s: %s; its answer is cut short (error %s, call %s)",
        *(scope["method"], as_sent(scope), call.provider.name, why, error, call.proxy_id),
    )
    mark_cut()


class CutAnswers(logging.Filter):
    """Drops uvicorn's "without completing response" error for an answer cut on purpose.

    An answer whose provider broke off or stalled mid-stream, or that a stop cut, must end with an
    error on the client's side, never a fake end: the meter returns without completing it, and
    uvicorn's error read like a crash. Any other incomplete response is still logged as uvicorn does.
    The filter runs only for the lines uvicorn logs: a call that ends well passes none.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_cut.get() and record.msg == INCOMPLETE)


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config, with the `meterproxy` logger on uvicorn's handler at `level`.

    Each line then reads `LEVEL:  message` as uvicorn's own do. uvicorn applies this config in every
    worker it starts, which a logging set-up done in the CLI's process would not reach: there, with
    `--workers N`, meterproxy's warnings went out bare and its other lines not at all.
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["meterproxy"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["filters"] = {"cut_answers": {"()": CutAnswers}}
    config["loggers"]["uvicorn.error"]["filters"] = ["cut_answers"]
    return config
