"""Where a report goes, whole or not at all: a report that fails partway leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_SPOOL_BYTES = 1 << 20


class OutputError(Exception):
    """The output file cannot be written; one line naming it."""


@contextmanager
def whole_output(path: str | None) -> Iterator[IO[str]]:
    """A file to write the report to; stdout (path None) or `path` gets it only once it is whole."""
    if path is None:
        # Spooled, not streamed: a CSV export that fails partway (a truncated .gz) must not leave rows on
        # stdout. Past _SPOOL_BYTES the spool is a temporary file, so memory stays flat.
        with tempfile.SpooledTemporaryFile(_SPOOL_BYTES, "w+", encoding="utf-8", newline="") as spool:
            yield spool
            spool.seek(0)
            shutil.copyfileobj(spool, sys.stdout)
        return
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"--output {path}: is a folder; give the path of a file")
    # Written beside the target and renamed over it at the end, so the target is never left partial.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        file = open(partial, "x", encoding="utf-8", newline="")
    except OSError as exc:
        raise OutputError(f"--output {path}: cannot write it: {exc.strerror or exc}") from exc
    try:
        with file:
            yield file
        try:
            os.replace(partial, target)
        except OSError as exc:
            raise OutputError(f"--output {path}: cannot write it: {exc.strerror or exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
