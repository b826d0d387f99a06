"""The supervisor of `serve --workers N`: uvicorn's, letting go of the listening socket as it stops."""

from __future__ import annotations

from uvicorn.supervisors import Multiprocess


class Supervisor(Multiprocess):
    """uvicorn's supervisor of the workers, closing its copy of the listening socket when it stops them.

    Each worker closes its own copy when its drain begins, but uvicorn's supervisor keeps its copy
    open until it exits, so the kernel went on taking connections that no worker would accept, and
    reset them only then: a client was kept waiting for up to server.drain_seconds, where a single
    worker refuses it at once (docs/reliability.md, stopping).
    """

    def terminate_all(self) -> None:
        for listening in self.sockets:
            listening.close()
        super().terminate_all()
