"""Record files: paths and globs, plain or gzipped, read as lines; big plain files split at line ends."""

from __future__ import annotations

import glob
import gzip
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_BATCH_BYTES = 1 << 20


class RecordFileError(Exception):
    """A record file that cannot be found or read, the message naming it and what to do."""


@dataclass(frozen=True)
class Piece:
    """A whole record file, or the lines starting in [start, end) of a plain one."""

    path: Path
    start: int = 0
    end: int | None = None


def expand(patterns: Iterable[str | Path]) -> list[Path]:
    """Paths and globs to the existing files they name, in the order given (each glob sorted)."""
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(Path(match) for match in glob.glob(text) if os.path.isfile(match))
            if not matches:
                raise RecordFileError(f"{text}: no record file matches this pattern; check --file")
            found.extend(match for match in matches if match not in found)
        else:
            path = Path(text)
            if not path.is_file():
                what = "is a folder, not a record file" if path.is_dir() else "no such record file"
                raise RecordFileError(
                    f"{text}: {what}; pass --file PATH, or set COST_TRACKING_FILE or the config's"
                    " features.cost_tracking.file"
                )
            if path not in found:
                found.append(path)
    return found


def is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def split(paths: Iterable[Path], parts: int, min_bytes: int) -> list[Piece]:
    """Pieces to read in parallel: plain files of at least min_bytes are cut into `parts` at line ends."""
    pieces: list[Piece] = []
    for path in paths:
        size = path.stat().st_size
        if is_gzip(path) or parts < 2 or size < min_bytes:
            pieces.append(Piece(path))
            continue
        cuts = [0]
        with open(path, "rb") as file:
            for index in range(1, parts):
                file.seek(max(size * index // parts, cuts[-1]))
                file.readline()
                cuts.append(min(file.tell(), size))
        cuts.append(size)
        pieces.extend(Piece(path, low, high) for low, high in zip(cuts, cuts[1:], strict=False) if high > low)
    return pieces


def read_lines(piece: Piece) -> Iterator[bytes]:
    """The lines of a piece, newline included; a gzipped file is read whole."""
    try:
        if is_gzip(piece.path):
            with gzip.open(piece.path, "rb") as stream:
                yield from stream
            return
        with open(piece.path, "rb") as file:
            if piece.end is None:
                yield from file
                return
            file.seek(piece.start)
            remaining = piece.end - piece.start
            while remaining > 0:
                # readlines(hint) stops once the lines read exceed the hint; pieces end at line ends.
                hint = min(_BATCH_BYTES, remaining - 1)
                batch = file.readlines(hint) if hint > 0 else [file.readline()]
                if not batch or not batch[0]:
                    return
                remaining -= sum(map(len, batch))
                yield from batch
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise RecordFileError(f"{piece.path}: cannot read record file: {exc}") from exc
