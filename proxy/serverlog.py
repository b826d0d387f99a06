"""The server log: every line meterproxy and uvicorn write, in one shape, in every process of `serve`."""

from __future__ import annotations

import copy
from typing import Any

from uvicorn.config import LOGGING_CONFIG


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config, with the `meterproxy` logger on uvicorn's handler at `level`.

    Each line then reads `LEVEL:  message` as uvicorn's own do. uvicorn applies this config in every
    worker it starts, which a logging set-up done in the CLI's process would not reach: there, with
    `--workers N`, meterproxy's warnings went out bare and its other lines not at all.
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["meterproxy"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config
