"""The server log: every line meterproxy and uvicorn write, in one shape, in every process of `serve`;
and no uvicorn error for an answer the meter cut short on purpose."""

from __future__ import annotations

import copy
import logging
from contextvars import ContextVar
from typing import Any

from uvicorn.config import LOGGING_CONFIG

# What uvicorn logs, as an error, when an app returns before the end of the response it began
# (uvicorn/protocols/http/httptools_impl.py, RequestResponseCycle.run_asgi).
INCOMPLETE = "ASGI callable returned without completing response."

# Set in the task of a call whose answer the meter cut short: uvicorn logs of that response in the
# same task, right after the app returns, so its error is told apart from one of a real bug.
_cut: ContextVar[bool] = ContextVar("cut", default=False)


def mark_cut() -> None:
    """Say that the running call's answer ends incomplete on purpose (the meter has logged why)."""
    _cut.set(True)


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
