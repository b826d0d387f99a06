"""The supervisor of `serve --workers N`: uvicorn's, letting go of the listening socket as it stops, and
restarting a dead worker only while the config file loads."""

from __future__ import annotations

import logging
import os
from socket import socket

from uvicorn.config import Config as ServerConfig
from uvicorn.supervisors import Multiprocess

from proxy.app import CONFIG_ENV
from proxy.config import ConfigError
from proxy.configfile import load_config

log = logging.getLogger("meterproxy")


class Supervisor(Multiprocess):
    """uvicorn's supervisor of the workers, closing its copy of the listening socket when it stops them.

    Each worker closes its own copy when its drain begins, but uvicorn's supervisor keeps its copy
    open until it exits, so the kernel went on taking connections that no worker would accept, and
    reset them only then: a client was kept waiting for up to server.drain_seconds, where a single
    worker refuses it at once (docs/reliability.md, stopping).

    A worker reads the config file as it starts. After an edit that broke the file, uvicorn restarted
    a worker that died every half second, each attempt a traceback in the log, while the others went
    on serving with the config they started with. A dead worker is restarted once the file loads
    again, and the log says why once.
    """

    def __init__(self, config: ServerConfig, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self._said: str | None = None  # the config error the log gave last

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set() or all(worker.process.is_alive() for worker in self.processes):
            super().keep_subprocess_alive()
            return
        if (error := _config_error()) is not None:
            if str(error) != self._said:
                self._said = str(error)
                log.error(
                    "a worker stopped and is not restarted while the config file has an error: %s; "
                    "fix the file and it is restarted",
                    error,
                )
            return
        self._said = None
        super().keep_subprocess_alive()

    def handle_hup(self) -> None:
        """uvicorn's reload: each worker replaced by a new one, which reads the config file again. A file
        with an error is said in one line, and the workers serve on; uvicorn started a worker that died
        of it, a traceback in the log, before keeping the old one."""
        if (error := _config_error()) is not None:
            log.error(
                "SIGHUP: the workers are kept, the config file has an error: %s; fix it, then SIGHUP again",
                error,
            )
            return
        super().handle_hup()

    def terminate_all(self) -> None:
        for listening in self.sockets:
            listening.close()
        super().terminate_all()


def _config_error() -> ConfigError | None:
    """Why the config file the workers start from does not load now, or None."""
    try:
        load_config(os.environ[CONFIG_ENV], os.environ)
    except ConfigError as exc:
        return exc
    return None
